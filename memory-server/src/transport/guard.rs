//! Request guards that run before any route: DNS-rebinding protection (`Host` and
//! `Origin` must be loopback, per the MCP transport's security warning) and the
//! optional bearer token required when the daemon listens beyond loopback.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::http::rpc_error_response;
use crate::config::DaemonConfig;
use crate::protocol::RpcError;

pub async fn guard(State(config): State<Arc<DaemonConfig>>, req: Request, next: Next) -> Response {
    if let Err(reason) = check_host_and_origin(req.headers(), config.addr.ip()) {
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

fn check_host_and_origin(headers: &HeaderMap, bind: IpAddr) -> Result<(), String> {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().map_err(|_| "Forbidden: Host header is not ASCII".to_string())?;
        if !is_allowed_host(strip_port(host), bind) {
            return Err(format!("Forbidden: Host {host:?} is not a loopback name (DNS-rebinding protection)"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| "Forbidden: Origin header is not ASCII".to_string())?;
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            .ok_or_else(|| format!("Forbidden: Origin {origin:?} is not a loopback origin"))?;
        if !is_allowed_host(strip_port(host), bind) {
            return Err(format!("Forbidden: Origin {origin:?} is not a loopback origin"));
        }
    }
    Ok(())
}

/// `host:port`, `[v6]:port`, `[v6]` or `host` → the host part, brackets removed.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Loopback names always; the bound address too when the daemon was deliberately bound
/// elsewhere (with a token).
fn is_allowed_host(host: &str, bind: IpAddr) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || (!bind.is_loopback() && (ip == bind || bind.is_unspecified())),
        Err(_) => false,
    }
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
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn loopback_hosts_pass_foreign_ones_do_not() {
        for ok in ["localhost", "localhost:3100", "127.0.0.1:3100", "[::1]:3100", "127.0.0.2"] {
            assert!(is_allowed_host(strip_port(ok), LO), "{ok}");
        }
        for bad in ["evil.example", "evil.example:3100", "10.0.0.1", "localhost.evil.example"] {
            assert!(!is_allowed_host(strip_port(bad), LO), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "http://localhost:5173".parse().unwrap());
        assert!(check_host_and_origin(&h, LO).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_host_and_origin(&h, LO).is_err());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(check_host_and_origin(&h, LO).is_err());
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
