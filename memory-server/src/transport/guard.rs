//! Request guards that run before any route: DNS-rebinding protection (`Host` and
//! `Origin` must be loopback, per the MCP transport's security warning) and the
//! optional bearer token required when the daemon listens beyond loopback.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::http::rpc_error_response;
use crate::config::DaemonConfig;
use crate::protocol::RpcError;

pub async fn guard(State(config): State<Arc<DaemonConfig>>, req: Request, next: Next) -> Response {
    if let Err(reason) = loopback_guard::check_host_and_origin(req.headers(), Some(config.addr.ip())) {
        tracing::warn!(reason, "request refused");
        return rpc_error_response(StatusCode::FORBIDDEN, None, &RpcError::invalid_request(reason));
    }
    if let Some(token) = &config.token
        && !bearer_matches(req.headers(), token)
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

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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
