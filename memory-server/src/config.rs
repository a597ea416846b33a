//! Command line and environment, parsed once into [`Cli`] and [`DaemonConfig`]; the
//! rest of the program trusts these values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::registry::StoreLimits;

pub const DEFAULT_PORT: u16 = 3100;
/// The most `--max-connections` accepts: the kernel's default ceiling on open files per
/// process (`fs.nr_open`), so no larger value could ever be reached.
pub const MAX_CONNECTIONS_CEILING: usize = 1 << 20;
const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "memory-server",
    version,
    about = "Shared MCP memory daemon: the knowledge-graph tools of @modelcontextprotocol/server-memory over \
             streamable HTTP, stored in per-project SQLite databases.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CommandArgs>,
    /// Options of `serve`, which runs when no command is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum CommandArgs {
    /// Serve MCP over streamable HTTP on /mcp (the default command).
    Serve(ServeArgs),
    /// Serve the same tools over stdio (newline-delimited JSON-RPC), as a drop-in for
    /// `npx @modelcontextprotocol/server-memory`.
    Stdio(StdioArgs),
    /// Merge an official server-memory JSONL file (or legacy memory.json) into a database.
    Import(ImportArgs),
    /// Write a database as the official server-memory JSONL.
    Export(ExportArgs),
    /// Copy a live database consistently with SQLite's online backup API.
    Backup(BackupArgs),
}

/// Which database a transfer command works on (default: the global one).
#[derive(Debug, Clone, Args)]
pub struct DbChoice {
    /// Use `<DIR>/.claude/memory.db`.
    #[arg(long, conflicts_with = "db")]
    pub project: Option<String>,
    /// Use this database file.
    #[arg(long)]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The JSONL file to import (`memory.jsonl`, or a legacy `memory.json`).
    pub file: PathBuf,
    #[command(flatten)]
    pub target: DbChoice,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: DbChoice,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: DbChoice,
    /// The backup file to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TCP port to listen on.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to bind. Anything but a loopback address requires --token.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Require `Authorization: Bearer <TOKEN>` on every request.
    #[arg(long, env = "MEMORY_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds without a request (and without an open GET stream) after which a session expires.
    #[arg(long, default_value_t = 3600)]
    pub session_idle_secs: u64,
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Milliseconds between keep-alive comments on open event streams (the session GET
    /// stream and `subscriptions/listen`).
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_ms: u64,
    /// Project databases kept open at most; the least recently used one beyond it is
    /// closed (and reopened on its next request).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_open_stores: u64,
    /// Seconds a database may go unused before it is closed.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_idle_secs: u64,
    /// Most connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Open event streams (session GET streams and `subscriptions/listen`) at most; more get 503.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub max_streams: usize,
}

#[derive(Debug, Clone, Args)]
pub struct StdioArgs {
    /// Project directory whose `.claude/memory.db` to use (default: the global DB).
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Longest accepted line in bytes; a longer one gets -32600 and is skipped unread.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
}

/// Options of both transports.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Messages a JSON-RPC batch may hold; a larger batch gets one -32600 error and none of it runs.
    #[arg(long, default_value_t = 100, value_parser = at_least_one())]
    pub max_batch: usize,
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub session_idle: Duration,
    pub max_body_bytes: usize,
    pub keep_alive: Duration,
    pub max_connections: usize,
    pub global_db: PathBuf,
    /// The global runtime directory (SPEC 5), where the graph browser's projects list
    /// is kept; `None` when neither `MCP_SESSION_MANAGER_HOME` nor `HOME` names one.
    pub runtime_dir: Option<PathBuf>,
    pub stores: StoreLimits,
    pub max_batch: usize,
    pub max_streams: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach it could read and change the memory. \
         Pass --token T (or set MEMORY_SERVER_TOKEN), or bind 127.0.0.1"
    )]
    PublicWithoutToken(IpAddr),
    #[error("--token must not be empty")]
    EmptyToken,
    #[error("cannot find the global database: set MEMORY_DB_PATH or HOME")]
    NoHome,
    #[error("--session-idle-secs must be at least 1")]
    ZeroIdle,
    #[error("--max-connections must be between 1 and {MAX_CONNECTIONS_CEILING}, not {0}")]
    MaxConnections(usize),
}

impl DaemonConfig {
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let token = args.token.clone().filter(|t| !t.is_empty());
        if args.token.is_some() && token.is_none() {
            return Err(ConfigError::EmptyToken);
        }
        if !args.bind.is_loopback() && token.is_none() {
            return Err(ConfigError::PublicWithoutToken(args.bind));
        }
        if args.session_idle_secs == 0 {
            return Err(ConfigError::ZeroIdle);
        }
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&args.max_connections) {
            return Err(ConfigError::MaxConnections(args.max_connections));
        }
        Ok(DaemonConfig {
            addr: SocketAddr::new(args.bind, args.port),
            token,
            session_idle: Duration::from_secs(args.session_idle_secs),
            max_body_bytes: args.max_body_bytes,
            keep_alive: Duration::from_millis(args.keep_alive_ms),
            max_connections: args.max_connections,
            global_db: global_db_path()?,
            runtime_dir: runtime_dir(),
            stores: StoreLimits {
                max_open: usize::try_from(args.max_open_stores).unwrap_or(usize::MAX),
                idle: Duration::from_secs(args.store_idle_secs),
            },
            max_batch: args.batch.max_batch,
            max_streams: args.max_streams,
        })
    }

    /// Without a token (which a non-loopback bind requires) only the user the daemon runs
    /// as is served: another uid could otherwise read and change this user's memory.
    pub fn same_user_only(&self) -> bool {
        self.token.is_none()
    }
}

/// `MEMORY_DB_PATH`, else `~/.claude/memory.db`.
pub fn global_db_path() -> Result<PathBuf, ConfigError> {
    if let Some(p) = std::env::var_os("MEMORY_DB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or(ConfigError::NoHome)?;
    Ok(PathBuf::from(home).join(".claude").join("memory.db"))
}

/// `MCP_SESSION_MANAGER_HOME`, else `~/.mcp-session-manager` (the runtime directory
/// mcp-proxy and mcp-manager use; nothing is created here).
pub fn runtime_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MCP_SESSION_MANAGER_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".mcp-session-manager"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(std::iter::once("memory-server").chain(args.iter().copied())).unwrap();
        match cli.command {
            Some(CommandArgs::Serve(a)) => a,
            None => cli.serve,
            Some(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_serve_loopback_3100() {
        let a = serve(&[]);
        assert_eq!(a.port, 3100);
        assert!(a.bind.is_loopback());
        assert_eq!(serve(&["serve", "--port", "4000"]).port, 4000);
        assert_eq!(serve(&["--port", "4001"]).port, 4001);
    }

    #[test]
    fn limits_default_to_the_spec_and_refuse_zero() {
        let a = serve(&[]);
        assert_eq!((a.batch.max_batch, a.max_streams, a.max_body_bytes), (100, 1024, 4 * 1024 * 1024));
        let cli = Cli::try_parse_from(["memory-server", "stdio"]).unwrap();
        let Some(CommandArgs::Stdio(s)) = cli.command else { panic!("{cli:?}") };
        assert_eq!((s.batch.max_batch, s.max_body_bytes), (100, 4 * 1024 * 1024));
        assert_eq!(serve(&["serve", "--max-batch", "7", "--max-streams", "2"]).max_streams, 2);
        for bad in [["serve", "--max-batch", "0"], ["serve", "--max-streams", "0"], ["stdio", "--max-batch", "0"]] {
            let args = std::iter::once("memory-server").chain(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn public_bind_needs_a_token() {
        let mut a = serve(&["--bind", "0.0.0.0"]);
        a.token = None;
        assert!(matches!(DaemonConfig::from_args(&a), Err(ConfigError::PublicWithoutToken(_))));
        a.token = Some("secret".into());
        assert!(DaemonConfig::from_args(&a).is_ok());
    }

    #[test]
    fn max_connections_defaults_to_1024_and_is_bounded() {
        assert_eq!(serve(&[]).max_connections, 1024);
        assert_eq!(DaemonConfig::from_args(&serve(&["--max-connections", "2"])).unwrap().max_connections, 2);
        for bad in ["0", "1048577"] {
            let err = DaemonConfig::from_args(&serve(&["--max-connections", bad])).unwrap_err();
            assert!(matches!(err, ConfigError::MaxConnections(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn only_a_token_lets_other_users_in() {
        let mut a = serve(&[]);
        a.token = None; // MEMORY_SERVER_TOKEN may be set where the tests run
        assert!(DaemonConfig::from_args(&a).unwrap().same_user_only());
        a.token = Some("secret".into());
        assert!(!DaemonConfig::from_args(&a).unwrap().same_user_only());
    }
}
