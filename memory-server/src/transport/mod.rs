//! The two ways clients reach the dispatcher: streamable HTTP (the shared daemon) and
//! stdio (a drop-in for the official stdio server). Both only frame messages; the MCP
//! logic lives in `dispatch`. The daemon's HTTP server also serves the graph browser
//! (`ui`).

mod guard;
pub(crate) mod http;
pub(crate) mod listener;
mod stateless;
pub mod stdio;
mod ui;
