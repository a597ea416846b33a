//! Command line and environment, parsed once into [`Cli`] and [`DaemonConfig`]; the
//! rest of the program trusts these values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto};

use crate::postgres::{DatabaseUrl, PgError};
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
    /// Copy a live database consistently with SQLite's online backup API (or, with
    /// --database, one project of PostgreSQL into a new SQLite file).
    Backup(BackupArgs),
    /// Move a project's SQLite memory into PostgreSQL, in one transaction.
    Copy(CopyArgs),
}

/// Which database a transfer command works on (default: the global one).
#[derive(Debug, Clone, Args)]
pub struct DbChoice {
    /// Use `<DIR>/.claude/memory.db`.
    #[arg(long, conflicts_with_all = ["db", "database"])]
    pub project: Option<String>,
    /// Use this database file.
    #[arg(long, conflicts_with = "database")]
    pub db: Option<PathBuf>,
    /// Use this PostgreSQL database (team memory) instead of a SQLite file.
    #[arg(long, value_name = "postgres://USER@HOST:PORT/DB")]
    pub database: Option<String>,
    /// With --database: the project (its `Mcp-Project-Id`, or its path as the daemon was
    /// sent it); without it, the global memory.
    #[arg(long, value_name = "ID", requires = "database")]
    pub project_id: Option<String>,
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
pub struct CopyArgs {
    /// The SQLite database to read (`<project>/.claude/memory.db`, `memory.db`); not changed.
    #[arg(long, value_name = "FILE")]
    pub from_db: PathBuf,
    /// The PostgreSQL database to add it to.
    #[arg(long, value_name = "postgres://USER@HOST:PORT/DB")]
    pub to_database: String,
    /// The project to add it to (its `Mcp-Project-Id`); without it, the global memory.
    #[arg(long, value_name = "ID")]
    pub project_id: Option<String>,
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
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first);
    /// needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Keep every project's memory in this PostgreSQL database (team memory, shared by
    /// several daemons) instead of per-project SQLite files.
    #[arg(long, value_name = "postgres://USER@HOST:PORT/DB", env = "MEMORY_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
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
    /// `--tls-cert`/`--tls-key`, loaded and checked: serve HTTPS (rustls).
    pub tls: Option<Arc<ServerConfig>>,
    /// `--database`: PostgreSQL instead of per-project SQLite files.
    pub database: Option<DatabaseUrl>,
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
    /// A `--tls-cert` or `--tls-key` that cannot be read or used, named with the reason.
    #[error("{0}")]
    Tls(String),
    #[error("--database: {0}")]
    Database(#[from] PgError),
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
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
                (None, None) => None,
                // clap's `requires` refuses one without the other before this.
                _ => return Err(ConfigError::Tls("--tls-cert and --tls-key go together".into())),
            },
            database: args.database.as_deref().filter(|u| !u.is_empty()).map(DatabaseUrl::parse).transpose()?,
        })
    }

    /// Without a token (which a non-loopback bind requires) only the user the daemon runs
    /// as is served: another uid could otherwise read and change this user's memory.
    pub fn same_user_only(&self) -> bool {
        self.token.is_none()
    }
}

/// The rustls server configuration of `--tls-cert CERT --tls-key KEY`: every certificate
/// of CERT (the chain sent to clients), the one private key of KEY, checked to belong to
/// the first certificate; aws-lc-rs as the crypto provider (named, not left to the
/// process default, which a second provider in the build would make ambiguous); HTTP/1.1
/// as the only ALPN protocol, since that is all the daemon speaks. Errors name the flag,
/// the file and the reason.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ConfigError> {
    let named =
        |flag: &str, path: &Path, problem: String| ConfigError::Tls(format!("{flag} {}: {problem}", path.display()));
    let read =
        |flag: &str, path: &Path| std::fs::read(path).map_err(|e| named(flag, path, format!("cannot read: {e}")));
    let cert_pem = read("--tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named("--tls-cert", cert, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(named("--tls-cert", cert, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    let key_pem = read("--tls-key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            named("--tls-key", key, "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into())
        }
        e => named("--tls-key", key, format!("not a PEM private key file: {e}")),
    })?;
    let both = |e: &dyn std::fmt::Display| {
        ConfigError::Tls(format!("--tls-cert {} with --tls-key {}: {e}", cert.display(), key.display()))
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| both(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| both(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    fn tls_needs_both_files_and_names_the_one_that_is_wrong() {
        for lone in [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]] {
            let args = ["memory-server", "serve"].into_iter().chain(lone);
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{lone:?}: {e}");
        }
        assert!(DaemonConfig::from_args(&serve(&[])).unwrap().tls.is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("garbage.pem"), "not PEM at all\n").unwrap();
        std::fs::write(path("bad-block.pem"), "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap();
        std::fs::write(path("junk-cert.pem"), "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n")
            .unwrap();
        std::fs::write(path("junk-key.pem"), "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let cases = [
            ("missing.pem", "junk-key.pem", format!("--tls-cert {}: cannot read: ", path("missing.pem"))),
            ("garbage.pem", "junk-key.pem", format!("--tls-cert {}: holds no PEM certificate", path("garbage.pem"))),
            (
                "bad-block.pem",
                "junk-key.pem",
                format!("--tls-cert {}: not a PEM certificate file", path("bad-block.pem")),
            ),
            ("junk-cert.pem", "missing.pem", format!("--tls-key {}: cannot read: ", path("missing.pem"))),
            ("junk-cert.pem", "garbage.pem", format!("--tls-key {}: holds no PEM private key", path("garbage.pem"))),
            (
                "junk-cert.pem",
                "junk-key.pem",
                format!("--tls-cert {} with --tls-key {}: ", path("junk-cert.pem"), path("junk-key.pem")),
            ),
        ];
        for (cert, key, want) in cases {
            let err = DaemonConfig::from_args(&serve(&["--tls-cert", &path(cert), "--tls-key", &path(key)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&want), "{cert} {key}: {err}");
        }
        // TLS does not stand in for a token beyond loopback.
        let mut a =
            serve(&["--bind", "0.0.0.0", "--tls-cert", &path("junk-cert.pem"), "--tls-key", &path("junk-key.pem")]);
        a.token = None;
        assert!(matches!(DaemonConfig::from_args(&a), Err(ConfigError::PublicWithoutToken(_))));
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
