//! `mcp-host --target NAME [--config FILE]`: hosts a stdio-only MCP server of the config
//! (`transport = "stdio"`) for every session on this machine. mcp-proxy finds or starts
//! it like any daemon; it serves streamable HTTP on 127.0.0.1 and runs the server as its
//! child (one for all sessions, per project or per session). See ARCHITECTURE.md.

mod child;
mod http;
mod mux;
mod pool;
mod procs;
mod serve;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "mcp-host", version, about = "Shares one stdio MCP server between sessions over streamable HTTP")]
struct Args {
    /// The `[daemons.NAME]` of the config to host (its `transport` must be "stdio").
    #[arg(long)]
    target: String,
    /// Config file (default: $MCP_SESSION_MANAGER_HOME/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Logs one line to stderr (the host's `<name>.log` when mcp-proxy started it).
pub fn log(name: &str, message: &str) {
    eprintln!("[mcp-host:{name}] {message}");
}

fn main() -> ExitCode {
    // First, as the daemon does: a client's SIGINT to its servers must never reach us.
    // Children inherit the ignored disposition.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let args = Args::parse();
    // One thread: the host only relays bytes between sockets and pipes, and every hop of
    // a call (handler → child's stdin, child's stdout → handler) is a task wake-up that
    // costs least on the thread that is already running.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log(&args.target, &format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(&args.target, args.config.as_deref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&args.target, &e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}
