//! The manager's HTTP API on 127.0.0.1 (the seed's routes): `GET /ping`, `GET /status`,
//! `POST /start|/stop|/ensure {"name"}`, `POST /start-all`, `POST /stop-all`; and the
//! small client the CLI and nothing else uses to reach it. Errors are `{"error": ...}`
//! with 404 for unknown daemons, 400 for malformed bodies and 403 for foreign
//! `Host`/`Origin` headers (DNS-rebinding protection, the same rules as the daemon's) and
//! for connections of any user but the one the manager runs as (it has no token).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use loopback_guard::peer::{Owner, PeerError, ProbeError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Manager, OpError, log};
use crate::discovery::{DiscoveryError, ping};

#[derive(Clone)]
struct AppState {
    manager: Arc<Manager>,
    port: u16,
}

pub fn router(manager: Arc<Manager>, port: u16) -> Router {
    Router::new()
        .route("/ping", get(ping_route))
        .route("/status", get(status))
        .route("/start", post(start))
        .route("/ensure", post(ensure))
        .route("/stop", post(stop))
        .route("/start-all", post(start_all))
        .route("/stop-all", post(stop_all))
        .fallback(not_found)
        .layer(middleware::from_fn(guard))
        .with_state(AppState { manager, port })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "port {port} on 127.0.0.1 is already in use by a running mcp-manager; use it (`mcp-manager status`) or pass --port"
    )]
    ManagerRunning { port: u16 },
    #[error(
        "port {port} on 127.0.0.1 is already in use; find the holder with `ss -ltnp 'sport = :{port}'`, stop it or pass --port"
    )]
    PortInUse { port: u16 },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error(
        "cannot tell which user a connection comes from on this system ({0}); the API would be open to every \
         user, so `serve` does not start here (the other commands work without it)"
    )]
    CannotTellUsers(ProbeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("serving failed: {0}")]
    Io(std::io::Error),
}

/// Binds 127.0.0.1:`port`, runs the health check and (optionally) starts every daemon,
/// and serves until SIGTERM or SIGINT. Daemons keep running after the manager exits.
pub async fn serve(manager: Arc<Manager>, port: u16, start_all: bool) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    loopback_guard::peer::probe(std::net::Ipv4Addr::LOCALHOST.into()).map_err(ServeError::CannotTellUsers)?;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(if ApiClient::connect(port, Duration::from_secs(5)).await.is_some() {
                ServeError::ManagerRunning { port }
            } else {
                ServeError::PortInUse { port }
            });
        }
        Err(source) => return Err(ServeError::Bind { port, source }),
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    log(&format!(
        "listening on http://127.0.0.1:{port} (daemons: {}; health check every {} s; runtime dir {})",
        manager.config.names().join(", "),
        manager.policy.interval.as_secs(),
        manager.runtime.root().display()
    ));
    manager.spawn_health_loop();
    if start_all {
        let m = manager.clone();
        tokio::spawn(async move {
            for r in m.start_all().await.results {
                log(&format!("start-all: {}", if r.ok { r.message } else { format!("{}: {}", r.name, r.message) }));
            }
        });
    }
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => log("SIGTERM: exiting (daemons keep running)"),
            _ = sigint.recv() => log("SIGINT: exiting (daemons keep running)"),
        }
    };
    let service = router(manager, port).into_make_service_with_connect_info::<ApiPeer>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await.map_err(ServeError::Io)
}

/// The user behind an API connection, looked up once when it is accepted.
#[derive(Clone)]
struct ApiPeer(Owner);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for ApiPeer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        ApiPeer(match stream.io().local_addr() {
            Ok(local) => Owner::of(peer, local),
            Err(e) => Owner::Unknown(Arc::new(PeerError::LocalAddress(e))),
        })
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn op_error(e: &OpError) -> Response {
    let status = match e {
        OpError::Unknown { .. } => StatusCode::NOT_FOUND,
        OpError::Remote { .. } | OpError::Start(DiscoveryError::NoCommand { .. }) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn guard(req: Request, next: Next) -> Response {
    if let Err(reason) = loopback_guard::check_host_and_origin(req.headers(), None) {
        log(&format!("refused {} {}: {reason}", req.method(), req.uri().path()));
        return error(StatusCode::FORBIDDEN, reason);
    }
    let owner = req.extensions().get::<ConnectInfo<ApiPeer>>().map(|ConnectInfo(ApiPeer(owner))| owner);
    if let Err(refusal) = loopback_guard::peer::check_same_user(owner) {
        log(&format!("refused {} {}: {refusal}", req.method(), req.uri().path()));
        let mut resp =
            error(StatusCode::FORBIDDEN, format!("{refusal}. Each user runs their own mcp-manager (--port)."));
        // Nothing more will be served on it, so it is not kept open.
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

async fn ping_route(State(st): State<AppState>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "service": "mcp-manager",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "port": st.port,
        "uptime_secs": st.manager.started.elapsed().as_secs(),
        "health_interval_secs": st.manager.policy.interval.as_secs(),
    }))
    .into_response()
}

async fn status(State(st): State<AppState>) -> Response {
    let daemons = st.manager.status().await;
    axum::Json(json!({
        "manager": {
            "pid": std::process::id(),
            "port": st.port,
            "uptime_secs": st.manager.started.elapsed().as_secs(),
            "health_interval_secs": st.manager.policy.interval.as_secs(),
            "runtime_dir": st.manager.runtime.root().display().to_string(),
            "config": st.manager.config.source,
        },
        "daemons": daemons,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    name: String,
    /// Seconds between SIGTERM and SIGKILL (default 12).
    timeout_secs: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopAllBody {
    timeout_secs: Option<f64>,
}

/// A 400 with its message.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// The JSON body, or a 400 saying what was expected.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, expected: &str) -> Result<T, BadRequest> {
    let bad = |why: String| BadRequest(format!("malformed body: expected {expected} ({why})"));
    // Objects only: serde would also accept a struct written as an array.
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(|e| bad(e.to_string())),
        Ok(_) => Err(bad("not a JSON object".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn parse_name(body: &Bytes) -> Result<String, BadRequest> {
    parse_body::<NameBody>(body, r#"{"name": "<daemon>"}"#).map(|b| b.name)
}

fn stop_timeout(secs: Option<f64>) -> Result<Duration, BadRequest> {
    match secs {
        None => Ok(super::control::STOP_TIMEOUT),
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(_) => Err(BadRequest("malformed body: timeout_secs must be 0-3600".into())),
    }
}

async fn start(State(st): State<AppState>, body: Bytes) -> Response {
    let name = match parse_name(&body) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    match st.manager.start(&name).await {
        Ok(r) => {
            log(&format!("POST /start: {}", r.describe()));
            axum::Json(r).into_response()
        }
        Err(e) => {
            log(&format!("POST /start {name}: {e}"));
            op_error(&e)
        }
    }
}

/// Asked by proxies (SPEC 3.3 step 3): answers `{running, port, transport}`.
async fn ensure(State(st): State<AppState>, body: Bytes) -> Response {
    let name = match parse_name(&body) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    match st.manager.start(&name).await {
        Ok(r) => {
            log(&format!("POST /ensure: {}", r.describe()));
            axum::Json(json!({ "running": r.running, "port": r.port, "transport": r.transport })).into_response()
        }
        Err(e) => {
            log(&format!("POST /ensure {name}: {e}"));
            op_error(&e)
        }
    }
}

async fn stop(State(st): State<AppState>, body: Bytes) -> Response {
    let parsed = parse_body::<StopBody>(&body, r#"{"name": "<daemon>", "timeout_secs"?: <number>}"#)
        .and_then(|b| Ok((stop_timeout(b.timeout_secs)?, b.name)));
    let (timeout, name) = match parsed {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match st.manager.stop(&name, timeout).await {
        Ok(r) => {
            log(&format!("POST /stop: {}", r.describe()));
            axum::Json(r).into_response()
        }
        Err(e) => {
            log(&format!("POST /stop {name}: {e}"));
            op_error(&e)
        }
    }
}

async fn start_all(State(st): State<AppState>) -> Response {
    let reply = st.manager.start_all().await;
    for r in &reply.results {
        log(&format!("POST /start-all: {}", r.message));
    }
    axum::Json(reply).into_response()
}

async fn stop_all(State(st): State<AppState>, body: Bytes) -> Response {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(StopAllBody::default())
    } else {
        parse_body::<StopAllBody>(&body, r#"nothing or {"timeout_secs": <number>}"#)
    };
    let timeout = match parsed.and_then(|b| stop_timeout(b.timeout_secs)) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let reply = st.manager.stop_all(timeout).await;
    for r in &reply.results {
        log(&format!("POST /stop-all: {}", r.message));
    }
    axum::Json(reply).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; routes: GET /ping, GET /status, POST /start, POST /stop, POST /ensure, \
             POST /start-all, POST /stop-all",
            uri.path()
        ),
    )
}

/// A client for a running manager's API (the CLI's).
pub struct ApiClient {
    pub port: u16,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The manager answered with an error status.
    #[error("{message}")]
    Status { status: u16, message: String },
    #[error("the mcp-manager on port {port} did not answer properly: {message}")]
    Transport { port: u16, message: String },
}

impl ApiClient {
    /// The manager on `port`, if one answers `GET /ping` as an mcp-manager. `timeout`
    /// bounds each later call (starts and stops can take a while).
    pub async fn connect(port: u16, timeout: Duration) -> Option<ApiClient> {
        if !ping(port).await {
            return None;
        }
        // Plain HTTP on loopback: no TLS roots, so a system without a root store (where
        // building a TLS client fails) still finds its manager.
        let client = reqwest::Client::builder().no_proxy().tls_certs_only([]).timeout(timeout).build().ok()?;
        let api = ApiClient { port, client };
        let pong = tokio::time::timeout(Duration::from_secs(3), api.call(Method::GET, "/ping", None)).await.ok()?;
        (pong.ok()?.get("service")? == "mcp-manager").then_some(api)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        let transport = |message: String| ApiError::Transport { port: self.port, message };
        let mut req = self.client.request(method, format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(body) = body {
            req = req.header(header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| transport(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| transport(format!("HTTP {status}: {e}")))?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value.get("error").and_then(Value::as_str).unwrap_or(&text).to_owned();
            Err(ApiError::Status { status, message })
        }
    }
}
