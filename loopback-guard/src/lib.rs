//! DNS-rebinding protection (the MCP transport's security warning) shared by the two
//! HTTP servers of the workspace, memory-server and mcp-manager: a request whose `Host`
//! is not a loopback name, or whose `Origin` is present and not a loopback origin, is
//! refused. The error text says which header was wrong. [`peer`] tells which user a
//! loopback connection belongs to, so a server without a token serves only its own user.

use std::net::IpAddr;

pub mod peer;
mod sock_diag;

use http::{HeaderMap, header};

/// Checks `Host` and `Origin`. `bound` is the address the server listens on: when it
/// was deliberately bound beyond loopback (memory-server with a token), that address
/// (or any, for an unspecified bind) is accepted as well.
pub fn check_host_and_origin(headers: &HeaderMap, bound: Option<IpAddr>) -> Result<(), String> {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().map_err(|_| "Forbidden: Host header is not ASCII".to_string())?;
        if !is_allowed_host(strip_port(host), bound) {
            return Err(format!("Forbidden: Host {host:?} is not a loopback name (DNS-rebinding protection)"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| "Forbidden: Origin header is not ASCII".to_string())?;
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            .ok_or_else(|| format!("Forbidden: Origin {origin:?} is not a loopback origin"))?;
        if !is_allowed_host(strip_port(host), bound) {
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

fn is_allowed_host(host: &str, bound: Option<IpAddr>) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || bound.is_some_and(|b| !b.is_loopback() && (ip == b || b.is_unspecified())),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_pass_foreign_ones_do_not() {
        for ok in ["localhost", "localhost:3100", "127.0.0.1:3100", "[::1]:3100", "127.0.0.2"] {
            assert!(check_host_and_origin(&headers(&[("host", ok)]), None).is_ok(), "{ok}");
        }
        for bad in ["evil.example", "evil.example:3100", "10.0.0.1", "localhost.evil.example"] {
            let err = check_host_and_origin(&headers(&[("host", bad)]), None).unwrap_err();
            assert!(err.contains("Host"), "{bad}: {err}");
        }
    }

    #[test]
    fn origins() {
        assert!(check_host_and_origin(&headers(&[("origin", "http://localhost:5173")]), None).is_ok());
        for bad in ["https://evil.example", "null"] {
            let err = check_host_and_origin(&headers(&[("origin", bad)]), None).unwrap_err();
            assert!(err.contains("Origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_deliberate_public_bind_accepts_its_own_address() {
        let bound = Some("10.1.2.3".parse().unwrap());
        assert!(check_host_and_origin(&headers(&[("host", "10.1.2.3:3100")]), bound).is_ok());
        assert!(check_host_and_origin(&headers(&[("host", "10.9.9.9:3100")]), bound).is_err());
        assert!(check_host_and_origin(&headers(&[("host", "10.1.2.3:3100")]), None).is_err());
    }
}
