//! Request guards that run before any route: DNS-rebinding protection (`Host` and
//! `Origin` must be loopback, per the MCP transport's security warning), then either the
//! bearer token (when one is configured; required beyond loopback) or, without one, the
//! rule that only the user the daemon runs as is served. A browser cannot send a bearer
//! token with a page load, so under `/ui` the graph browser's login cookie stands for it
//! (and its page and assets, which hold no user data, load without: see `ui`).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::http::rpc_error_response;
use super::listener::Peer;
use crate::config::DaemonConfig;
use crate::protocol::RpcError;

pub async fn guard(State(config): State<Arc<DaemonConfig>>, req: Request, next: Next) -> Response {
    if let Err(reason) = loopback_guard::check_host_and_origin(req.headers(), Some(config.addr.ip())) {
        tracing::warn!(reason, "request refused");
        return rpc_error_response(StatusCode::FORBIDDEN, None, &RpcError::invalid_request(reason));
    }
    if config.same_user_only() {
        let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|ConnectInfo(peer)| peer);
        if let Err(reason) = same_user(peer) {
            tracing::warn!(peer = ?peer.map(|p| p.addr), reason, "request refused");
            let mut resp = rpc_error_response(StatusCode::FORBIDDEN, None, &RpcError::invalid_request(reason));
            // Nothing more will be served on it: give its place under --max-connections back.
            resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            return resp;
        }
    } else if let Some(token) = &config.token
        && !bearer_matches(req.headers(), token)
        && !super::ui::admits_without_bearer(&req, token, config.addr.port())
    {
        let mut resp = rpc_error_response(
            StatusCode::UNAUTHORIZED,
            None,
            &RpcError::invalid_request("Unauthorized: this daemon requires Authorization: Bearer <token>"),
        );
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp.into_response();
    }
    next.run(req).await
}

/// Only the daemon's own user; a connection whose user is unknown is refused.
fn same_user(peer: Option<&Peer>) -> Result<(), String> {
    loopback_guard::peer::check_same_user(peer.and_then(|p| p.owner.as_ref()))
        .map_err(|refusal| format!("{refusal}. Start it with --token to share it."))
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use loopback_guard::peer::{Owner, PeerError, own_uid};

    use super::*;

    fn peer(owner: Option<Owner>) -> Peer {
        Peer { addr: "127.0.0.1:40000".parse().unwrap(), owner }
    }

    #[test]
    fn only_the_daemons_own_user_is_served() {
        assert!(same_user(Some(&peer(Some(Owner::Uid(own_uid()))))).is_ok());
        let other = own_uid().wrapping_add(1);
        let err = same_user(Some(&peer(Some(Owner::Uid(other))))).unwrap_err();
        assert!(err.contains(&format!("this connection belongs to uid {other}")), "{err}");
        assert!(err.ends_with("Start it with --token to share it."), "{err}");
    }

    #[test]
    fn a_failed_lookup_refuses() {
        let failed = PeerError::NotFound {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:3100".parse().unwrap(),
            tables: "/proc/net/tcp",
        };
        let err = same_user(Some(&peer(Some(Owner::Unknown(Arc::new(failed)))))).unwrap_err();
        assert!(err.starts_with("Forbidden:") && err.contains("cannot tell whose connection this is"), "{err}");
        assert!(err.contains("no socket 127.0.0.1:40000 connected to 127.0.0.1:3100"), "{err}");
        // Never looked up, or no connection information at all: refused as well.
        assert!(same_user(Some(&peer(None))).is_err());
        assert!(same_user(None).is_err());
    }

    #[test]
    fn bearer_token() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!bearer_matches(&h, "s3cret"));
    }
}
