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
}

pub async fn serve(config: DaemonConfig) -> Result<(), ServeError> {
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
    let listener = ConnectionListener::new(listener, config.max_connections, config.same_user_only())
        .map_err(|source| ServeError::Bind { addr: config.addr, source })?;

    let server = Arc::new(McpServer::new(Router::new(config.global_db.clone()), config.session_idle));
    let sweeper = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(server.sessions.sweep_interval());
            loop {
                tick.tick().await;
                server.sessions.expire_idle();
            }
        })
    };
    tracing::info!(addr = %config.addr, global_db = %config.global_db.display(), "memory-server listening on http://{}/mcp", config.addr);
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
    sweeper.abort();

    let stores = server.router.registry().open_stores();
    tokio::task::spawn_blocking(move || {
        for store in stores {
            store.checkpoint();
        }
    })
    .await
    .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    Ok(())
}
