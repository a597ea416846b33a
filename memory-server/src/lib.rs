//! The memory daemon as a library: the binary in `main.rs` only parses the command line
//! and calls [`serve`] or [`transport::stdio::run`]. Only the modules `main.rs` uses are
//! public (nothing else links this library); the rest is the crate's own. See
//! ARCHITECTURE.md for the map.

// Error values here (a JSON-RPC error with its request id, an HTTP response) are built
// on cold paths only; boxing them would buy nothing but noise at every call site.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod dispatch;
mod memory;
pub mod postgres;
pub mod project;
mod projects;
mod protocol;
pub mod routing;
mod scope;
pub mod serve;
mod session;
mod stateless;
pub mod store;
mod streams;
mod tools;
pub mod transfer;
pub mod transport;
