//! The daemon's life: bind, serve until SIGTERM, then stop accepting, let in-flight
//! requests finish (bounded), checkpoint every open database and return. SIGINT is
//! ignored: a shared daemon must outlive the terminal or session that started it.

use std::sync::Arc;
use std::time::Duration;

use loopback_guard::peer::ProbeError;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::DaemonConfig;
use crate::dispatch::McpServer;
use crate::postgres::{Database, PgError};
use crate::projects::ProjectsList;
use crate::routing::Router;
use crate::transport::http::{AppState, app};
use crate::transport::listener::{ConnectionListener, Peer};

/// How long in-flight requests may take after SIGTERM before the daemon exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "port {port} on {ip} is already in use; find the holder with `ss -ltnp 'sport = :{port}'` \
         (or `lsof -i :{port}`), stop it or pass --port"
    )]
    PortInUse { ip: std::net::IpAddr, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(
        "cannot tell which user a connection comes from on this system ({0}); without a token this daemon \
         serves only its own user, so start it with --token T (or MEMORY_SERVER_TOKEN) and give the token \
         to your clients"
    )]
    CannotTellUsers(ProbeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("server failed: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Database(PgError),
}

/// File descriptors an open store takes: the writer, the probe and two idle readers
/// (a database and a WAL file each), the shared-memory file, and one to spare.
const FILES_PER_STORE: u64 = 10;

pub async fn serve(mut config: DaemonConfig) -> Result<(), ServeError> {
    fit_to_file_limit(&mut config);
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    tokio::spawn(async move {
        while sigint.recv().await.is_some() {
            tracing::info!("SIGINT ignored (a shared daemon outlives its terminal); use SIGTERM to stop");
        }
    });

    if config.same_user_only() {
        loopback_guard::peer::probe(config.addr.ip()).map_err(ServeError::CannotTellUsers)?;
    }
    let listener = TcpListener::bind(config.addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::PortInUse { ip: config.addr.ip(), port: config.addr.port() },
        _ => ServeError::Bind { addr: config.addr, source },
    })?;
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = ConnectionListener::new(listener, config.max_connections, config.same_user_only(), tls)
        .map_err(|source| ServeError::Bind { addr: config.addr, source })?;

    let projects = Arc::new(ProjectsList::load(config.runtime_dir.as_deref(), &config.global_db));
    let router = match &config.database {
        // Team memory: every project in PostgreSQL; the graph browser's projects list
        // (SQLite files) is not kept.
        Some(url) => Router::with_database(
            config.global_db.clone(),
            config.stores,
            Database::open(url.clone()).await.map_err(ServeError::Database)?,
        ),
        None => Router::with_projects(config.global_db.clone(), config.stores, projects.clone()),
    };
    let server = Arc::new(McpServer::new(router, config.session_idle));
    let saver = tokio::spawn(projects.clone().keep_saved(server.shutdown.clone()));
    let sweepers = [
        every(server.sessions.sweep_interval(), {
            let server = server.clone();
            move || server.sessions.expire_idle()
        }),
        every(sweep_interval(config.stores.idle), {
            let server = server.clone();
            move || server.router.registry().close_idle()
        }),
    ];
    match server.router.database() {
        Some(db) => {
            tracing::info!(addr = %config.addr, database = db.shown(), "memory-server listening on {scheme}://{}/mcp", config.addr)
        }
        None => {
            tracing::info!(addr = %config.addr, global_db = %config.global_db.display(), "memory-server listening on {scheme}://{}/mcp", config.addr)
        }
    }
    tracing::info!("graph browser: {scheme}://{}/ui", config.addr);
    if config.same_user_only() {
        let uid = loopback_guard::peer::own_uid();
        tracing::info!("no --token: serving only uid {uid}, the user this daemon runs as");
    }

    let state = AppState { server: server.clone(), config: Arc::new(config) };
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = {
        let server = server.clone();
        async move {
            sigterm.recv().await;
            tracing::info!("SIGTERM: finishing in-flight requests");
            // Open GET streams would otherwise hold graceful shutdown open forever.
            server.sessions.close_all();
            server.shutdown.cancel();
            let _ = drain_tx.send(());
        }
    };
    let service = app(state).into_make_service_with_connect_info::<Peer>();
    let serving = axum::serve(listener, service).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = serving => result.map_err(ServeError::Io)?,
        () = async {
            if drain_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}; exiting anyway"),
    }
    for sweeper in sweepers {
        sweeper.abort();
    }
    // Every store's background work is joined before its final index update and
    // checkpoint, so nothing writes to a file after it was folded back.
    server.router.registry().close_all().await;
    if let Some(db) = server.router.database() {
        db.close();
    }
    // The shutdown token ended the saving loop; the last writes' times are saved here.
    let _ = saver.await;
    let _ = tokio::task::spawn_blocking(move || projects.save_logged()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard one (as most servers do: the soft
/// default of 1,024 is a relic), then makes sure the open stores fit in half of it and
/// the connections in a quarter, lowering `--max-open-stores` or `--max-connections`
/// with a warning when they would not: a daemon that runs out of descriptors fails
/// every project at once.
fn fit_to_file_limit(config: &mut DaemonConfig) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit(2) with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let fitting = usize::try_from(limit.rlim_cur / 2 / FILES_PER_STORE).unwrap_or(usize::MAX).max(1);
    if config.stores.max_open > fitting {
        tracing::warn!(
            open_file_limit = limit.rlim_cur,
            configured = config.stores.max_open,
            max_open_stores = fitting,
            "the open-file limit (ulimit -n) is too small for --max-open-stores; keeping fewer stores open"
        );
        config.stores.max_open = fitting;
    }
    let connections = usize::try_from(limit.rlim_cur / 4).unwrap_or(usize::MAX).max(1);
    if config.max_connections > connections {
        tracing::warn!(
            open_file_limit = limit.rlim_cur,
            configured = config.max_connections,
            max_connections = connections,
            "the open-file limit (ulimit -n) is too small for --max-connections; accepting fewer at once"
        );
        config.max_connections = connections;
    }
}

/// Runs `f` every `period` until aborted.
fn every(period: Duration, f: impl Fn() + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f();
        }
    })
}

/// How often to look for stores idle longer than `idle`.
fn sweep_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
}
