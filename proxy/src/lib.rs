//! Shared by `mcp-proxy` and `mcp-manager`: daemon configuration, the runtime directory,
//! finding or starting daemons, and relaying a stdio session to a daemon.
//! See ARCHITECTURE.md for the map.

pub mod config;
pub mod discovery;
pub mod filter;
pub mod http_client;
pub mod legacy_sse;
pub mod manager;
pub mod project_id;
pub mod relay;
pub mod replay;
pub mod runtime;
pub mod stateless;
pub mod stdio;
pub mod upstream;

/// Logs one line to stderr, prefixed `[mcp-proxy:<name>]` (stdout is protocol only).
pub fn log(name: &str, message: &str) {
    eprintln!("[mcp-proxy:{name}] {message}");
}
