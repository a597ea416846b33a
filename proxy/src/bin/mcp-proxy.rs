//! `mcp-proxy --target <name>`: the per-session stdio bridge an MCP client starts. It
//! ignores SIGINT from its first instruction, finds or starts the shared daemon, and
//! relays the session to it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mcp_proxy::config::{Config, Env};
use mcp_proxy::discovery::DEFAULT_MANAGER_PORT;
use mcp_proxy::runtime::RuntimeDir;
use mcp_proxy::upstream::Upstream;

#[derive(Parser)]
#[command(name = "mcp-proxy", version, about = "Per-session stdio bridge to a shared MCP daemon")]
struct Args {
    /// The daemon to relay to (a `[daemons.NAME]` of the config).
    #[arg(long)]
    target: String,
    /// Config file (default: $MCP_SESSION_MANAGER_HOME/config.toml, else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Project directory (default: $CLAUDE_PROJECT_DIR, else the current directory).
    #[arg(long)]
    project: Option<PathBuf>,
    /// Port of mcp-manager's API, asked to start daemons when it runs (default: `[manager]
    /// port` of the config, else 3199).
    #[arg(long)]
    manager_port: Option<u16>,
}

fn main() -> ExitCode {
    // First: the client sends SIGINT to every server when a new session starts, and
    // this session must survive it.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let args = Args::parse();
    let Some(runtime) = RuntimeDir::from_env() else {
        eprintln!("[mcp-proxy] neither MCP_SESSION_MANAGER_HOME nor HOME is set");
        return ExitCode::from(2);
    };
    let env = Env::from_process();
    let config = match &args.config {
        Some(path) => Config::load(path, true, &env),
        None => Config::load(&runtime.config_file(), false, &env),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("[mcp-proxy:{}] config error: {e}", args.target);
            return ExitCode::from(2);
        }
    };
    let Some(spec) = config.daemons.get(&args.target).cloned() else {
        eprintln!(
            "[mcp-proxy] unknown target `{}`; configured targets ({}): {}",
            args.target,
            config.source,
            config.names().join(", ")
        );
        return ExitCode::from(2);
    };
    let manager_port = args.manager_port.or(config.manager_port).unwrap_or(DEFAULT_MANAGER_PORT);
    let project = project_dir(args.project);
    let drain = spec.request_timeout;
    let runtime_rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[mcp-proxy:{}] cannot start the runtime: {e}", spec.name);
            return ExitCode::FAILURE;
        }
    };
    let name = spec.name.clone();
    let result = runtime_rt.block_on(mcp_proxy::stdio::run(
        |out| Upstream::new(spec, runtime, manager_port, project.as_deref(), out),
        drain,
    ));
    // After SIGTERM, tokio's stdin reader may still sit in a blocking read(2) that
    // cannot be cancelled; waiting for it would keep the process alive until the
    // client closes the pipe. Nothing else is left to wait for, so do not.
    runtime_rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[mcp-proxy:{name}] {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--project`, else `CLAUDE_PROJECT_DIR` (Claude Code sets it), else the working
/// directory; made absolute.
fn project_dir(flag: Option<PathBuf>) -> Option<String> {
    let dir = flag
        .or_else(|| std::env::var_os("CLAUDE_PROJECT_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| std::env::current_dir().ok())?;
    let dir = if dir.is_absolute() { dir } else { std::env::current_dir().ok()?.join(dir) };
    dir.to_str().map(str::to_owned)
}
