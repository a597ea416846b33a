//! The host's life: read the config, bind 127.0.0.1 (the configured port or an
//! ephemeral one), record it in `<name>.lock`, sweep ended sessions and idle children,
//! and on SIGTERM stop every child before exiting.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_proxy::config::{Config, Env, Target, Transport};
use mcp_proxy::runtime::{LockInfo, RuntimeDir, now_rfc3339};

use crate::http::{Host, Peer, router};
use crate::pool::Pool;

/// How often ended sessions and idle children are looked for.
const SWEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("neither MCP_SESSION_MANAGER_HOME nor HOME is set")]
    NoRuntimeDir,
    #[error("config error: {0}")]
    Config(#[from] mcp_proxy::config::ConfigError),
    #[error("unknown target `{target}`; configured targets ({file}): {names}")]
    UnknownTarget { target: String, file: String, names: String },
    #[error("daemon `{0}` is not a stdio server (transport = \"stdio\"); mcp-host hosts only those")]
    NotStdio(String),
    #[error("daemon `{name}` is misconfigured: {message}")]
    Misconfigured { name: String, message: String },
    #[error("port {0} on 127.0.0.1 is already in use; find the holder with `ss -ltnp 'sport = :{0}'`")]
    PortInUse(u16),
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    #[error(
        "cannot tell which user a connection comes from on this system ({0}); the server would be open to \
         every user, so mcp-host does not start here"
    )]
    CannotTellUsers(loopback_guard::peer::ProbeError),
    #[error("writing {file}: {source}")]
    Lock { file: String, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("serving failed: {0}")]
    Io(std::io::Error),
}

impl HostError {
    /// 2 for what the user must fix in the command line or config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            HostError::NoRuntimeDir
            | HostError::Config(_)
            | HostError::UnknownTarget { .. }
            | HostError::NotStdio(_)
            | HostError::Misconfigured { .. } => 2,
            _ => 1,
        }
    }
}

pub async fn run(target: &str, config: Option<&Path>) -> Result<(), HostError> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = RuntimeDir::from_env().ok_or(HostError::NoRuntimeDir)?;
    let env = Env::from_process();
    let config = match config {
        Some(path) => Config::load(path, true, &env)?,
        None => Config::load(&runtime.config_file(), false, &env)?,
    };
    let Some(spec) = config.daemons.get(target) else {
        return Err(HostError::UnknownTarget {
            target: target.to_owned(),
            file: config.source.clone(),
            names: config.names().join(", "),
        });
    };
    let (Transport::Stdio, Some(hosted), Target::Local { port, .. }) = (spec.transport, &spec.hosted, &spec.target)
    else {
        return Err(HostError::NotStdio(target.to_owned()));
    };
    if let Some(message) = &spec.misconfigured {
        return Err(HostError::Misconfigured { name: target.to_owned(), message: message.clone() });
    }
    loopback_guard::peer::probe(std::net::Ipv4Addr::LOCALHOST.into()).map_err(HostError::CannotTellUsers)?;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(HostError::PortInUse(port.unwrap_or(0))),
        Err(e) => return Err(HostError::Bind(e)),
    };
    let bound = listener.local_addr().map_err(HostError::Bind)?.port();
    let mut sigterm = signal(SignalKind::terminate()).map_err(HostError::Signals)?;

    // Where proxies look for a host on an ephemeral port (and who to stop).
    let lock = LockInfo { pid: std::process::id(), port: bound, transport: "stdio".into(), started_at: now_rfc3339() };
    runtime.ensure().map_err(|e| HostError::Lock { file: e.path.display().to_string(), source: e.source })?;
    runtime
        .write_lock(target, &lock)
        .map_err(|source| HostError::Lock { file: runtime.lock_file(target).display().to_string(), source })?;

    let log_file = runtime.log_file(target).display().to_string();
    let pool = Pool::new(target, hosted.clone(), spec.startup_timeout, log_file);
    let host = Arc::new(Host::new(pool, bound));
    crate::log(
        target,
        &format!(
            "listening on http://127.0.0.1:{bound}/mcp; hosting `{}` (share = \"{}\", idle stop after {} s)",
            hosted.server.command.display(),
            hosted.share.as_str(),
            hosted.idle_stop.as_secs()
        ),
    );
    let sweeper = tokio::spawn(sweep(host.clone()));
    let service = router(host.clone()).into_make_service_with_connect_info::<Peer>();
    let ending = host.clone();
    let name = target.to_owned();
    let shutdown = async move {
        let _ = sigterm.recv().await;
        // Children first, while their sessions are attached: a session's own child is
        // retired when its session ends, which the server's stop would cut short.
        crate::log(&name, "stopping: ending every child");
        retire_all(&ending).await;
        // The graceful shutdown waits for every open response, and a session's event
        // stream stays open until its session ends: end them all, and any that starts
        // before the server has stopped accepting.
        tokio::spawn(async move {
            loop {
                ending.end_all_sessions().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    };
    let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
    sweeper.abort();
    retire_all(&host).await; // any started meanwhile
    if runtime.read_lock(target).is_some_and(|l| l.pid == std::process::id()) {
        runtime.remove_lock(target);
    }
    served.map_err(HostError::Io)
}

/// Takes every child out of the pool and stops it.
async fn retire_all(host: &Host) {
    let children = host.pool.take_all();
    futures_util::future::join_all(children.iter().map(|c| c.retire())).await;
}

/// Ends sessions whose clients are gone and stops children idle for `idle_stop_secs`.
async fn sweep(host: Arc<Host>) {
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tick.tick().await;
        for session in host.stale_sessions() {
            host.end_session(&session).await;
        }
        for child in host.pool.take_idle() {
            crate::log(&host.pool.name, &format!("{} has had no session for a while: stopping it", child.key));
            child.retire().await;
        }
    }
}
