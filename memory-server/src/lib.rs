//! The memory daemon as a library: the binary in `main.rs` only parses the command line
//! and calls [`serve`] or [`transport::stdio::run`]. See ARCHITECTURE.md for the map.

// Error values here (a JSON-RPC error with its request id, an HTTP response) are built
// on cold paths only; boxing them would buy nothing but noise at every call site.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod dispatch;
pub mod project;
pub mod protocol;
pub mod routing;
pub mod scope;
pub mod serve;
pub mod session;
pub mod stateless;
pub mod store;
pub mod streams;
pub mod tools;
pub mod transfer;
pub mod transport;
