//! The host's edge: MCP streamable HTTP on 127.0.0.1 (`POST/GET/DELETE /mcp`, sessions
//! by `Mcp-Session-Id`), `/health` and `/status`. A request's answer is plain JSON when
//! nothing else comes first, else an SSE stream that carries its progress and the server
//! requests it causes, then the answer. Same loopback rules as the daemon: Host/Origin
//! must be loopback, and only the host's own user is served.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use loopback_guard::peer::{Owner, PeerError};
use mcp_wire::{META_PROTOCOL_VERSION, PROJECT_HEADER, SESSION_HEADER};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::child::Child;
use crate::mux::{Level, Outgoing, SessionId, error_answer};
use crate::pool::Pool;
use crate::wire;

/// Sessions at most; beyond, `initialize` is refused with an error naming the limit.
pub const MAX_SESSIONS: usize = 4096;
/// A session with no GET stream open and no request for this long is ended.
pub const SESSION_IDLE: Duration = Duration::from_secs(300);

/// Revisions a session may ask for, oldest first (the answer is the child's, unless the
/// session asked for an older one it also speaks).
const VERSIONS: [&str; 4] =
    [mcp_wire::V2024_11_05, mcp_wire::V2025_03_26, mcp_wire::V2025_06_18, mcp_wire::V2025_11_25];

struct Session {
    /// Its key in the map, kept so that a lookup by the header's text is one lookup.
    id: SessionId,
    child: Arc<Child>,
    last_seen: Instant,
}

pub struct Host {
    pub pool: Pool,
    pub started: Instant,
    pub port: u16,
    sessions: Mutex<HashMap<SessionId, Session>>,
}

impl Host {
    pub fn new(pool: Pool, port: u16) -> Host {
        Host { pool, started: Instant::now(), port, sessions: Mutex::new(HashMap::new()) }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session and its child, marked as seen now.
    fn session(&self, id: &str) -> Option<(SessionId, Arc<Child>)> {
        let mut sessions = self.sessions();
        let s = sessions.get_mut(id)?;
        s.last_seen = Instant::now();
        Some((s.id.clone(), s.child.clone()))
    }

    /// Ends a session: detached from its child, which goes too when it was the session's own.
    pub async fn end_session(&self, id: &SessionId) {
        let Some(s) = self.sessions().remove(id) else { return };
        if let Some(child) = self.pool.detach(&s.child, id) {
            child.retire().await;
        }
    }

    /// Ends every session (at shutdown), their open streams with them.
    pub async fn end_all_sessions(&self) {
        let ids: Vec<SessionId> = self.sessions().keys().cloned().collect();
        futures_util::future::join_all(ids.iter().map(|id| self.end_session(id))).await;
    }

    /// Sessions whose client is gone (no stream, no request for [`SESSION_IDLE`]).
    pub fn stale_sessions(&self) -> Vec<SessionId> {
        self.sessions()
            .iter()
            .filter(|(id, s)| s.last_seen.elapsed() >= SESSION_IDLE && !s.child.mux().has_stream(id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }
}

pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/mcp", get(get_mcp).post(post_mcp).delete(delete_mcp))
        .route("/health", get(health))
        .route("/status", get(status))
        .layer(middleware::from_fn(guard))
        .with_state(host)
}

/// The user behind a connection, looked up once when it is accepted.
#[derive(Clone)]
pub struct Peer(Owner);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        Peer(match stream.io().local_addr() {
            Ok(local) => Owner::of(peer, local),
            Err(e) => Owner::Unknown(Arc::new(PeerError::LocalAddress(e))),
        })
    }
}

async fn guard(req: Request, next: Next) -> Response {
    if let Err(reason) = loopback_guard::check_host_and_origin(req.headers(), None) {
        return rpc_error(StatusCode::FORBIDDEN, Value::Null, -32600, &reason);
    }
    let owner = req.extensions().get::<ConnectInfo<Peer>>().map(|ConnectInfo(Peer(owner))| owner);
    if let Err(refusal) = loopback_guard::peer::check_same_user(owner) {
        let mut resp = rpc_error(StatusCode::FORBIDDEN, Value::Null, -32600, &refusal.to_string());
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (status, axum::Json(error_answer(id, code, message))).into_response()
}

fn ok_answer(id: Value, result: Value) -> Response {
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

/// Methods the host answers itself, or acts on, rather than passing on to the child.
fn host_handles(method: &str) -> bool {
    matches!(method, "initialize" | "ping" | "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe")
}

const STATELESS_REFUSED: &str =
    "mcp-host serves session-based MCP (2024-11-05 to 2025-11-25); stateless requests are not supported";

async fn post_mcp(State(host): State<Arc<Host>>, mut req: Request) -> Response {
    // The headers are taken out of the request, not copied as the `HeaderMap` extractor
    // would; the body is read as the `Bytes` extractor does (same limit, same refusal).
    let headers = std::mem::take(req.headers_mut());
    let body = match Bytes::from_request(req, &()).await {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Value::Null,
            -32600,
            "Content-Type must be application/json",
        );
    }
    // Nearly every message is a request for the child: its text goes there with only its
    // id replaced. Everything else, and whatever `wire` leaves alone, is parsed below.
    if let Some(request) = wire::Request::parse(&body).filter(|r| !host_handles(&r.method)) {
        let id = request.id();
        if request.stateless {
            return rpc_error(StatusCode::BAD_REQUEST, id, -32600, STATELESS_REFUSED);
        }
        let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return rpc_error(StatusCode::BAD_REQUEST, id, -32600, "Mcp-Session-Id header is required");
        };
        let Some((session, child)) = host.session(sid) else {
            return rpc_error(StatusCode::NOT_FOUND, id, -32001, "Session not found");
        };
        // No `touch`: registering the request marks the session active.
        return relay(session, child, id, Payload::Text(request)).await;
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32700, &format!("Parse error: {e}")),
    };
    if !message.is_object() {
        let what = if message.is_array() { "JSON-RPC batches are not supported" } else { "not a JSON-RPC message" };
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32600, &format!("Invalid Request: {what}"));
    }
    let id = message.get("id").cloned();
    let method = message.get("method").and_then(Value::as_str).map(str::to_owned);
    // `get`, not `pointer`: `pointer` splits and unescapes its path into new strings on
    // every call, and every message passes here.
    if message.get("params").and_then(|p| p.get("_meta")).and_then(|m| m.get(META_PROTOCOL_VERSION)).is_some() {
        return rpc_error(StatusCode::BAD_REQUEST, id.unwrap_or(Value::Null), -32600, STATELESS_REFUSED);
    }
    if method.as_deref() == Some("initialize") {
        return initialize(&host, &headers, id.unwrap_or(Value::Null), &message).await;
    }
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.unwrap_or(Value::Null),
            -32600,
            "Mcp-Session-Id header is required",
        );
    };
    let Some((session, child)) = host.session(sid) else {
        return rpc_error(StatusCode::NOT_FOUND, id.unwrap_or(Value::Null), -32001, "Session not found");
    };
    child.mux().touch(&session);
    match (method, id) {
        // A session's answer to a server request.
        (None, Some(_)) => {
            if let Some(answer) = child.mux().answer(&session, message) {
                child.send(&answer);
            }
            StatusCode::ACCEPTED.into_response()
        }
        (None, None) => rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32600, "Invalid Request: no method"),
        (Some(method), None) => {
            match method.as_str() {
                // The child was initialized once, by the host.
                "notifications/initialized" => {}
                "notifications/cancelled" => {
                    let cancelled = child.mux().cancel(&session, message);
                    if let Some(n) = cancelled {
                        child.send(&n);
                    }
                }
                _ => child.send(&message),
            }
            StatusCode::ACCEPTED.into_response()
        }
        (Some(method), Some(id)) => request(&host, session, child, &method, id, message).await,
    }
}

async fn initialize(host: &Host, headers: &HeaderMap, id: Value, message: &Value) -> Response {
    if host.session_count() >= MAX_SESSIONS {
        let text = format!("mcp-host: {MAX_SESSIONS} sessions are open (the limit); end one first");
        return rpc_error(StatusCode::SERVICE_UNAVAILABLE, id, -32000, &text);
    }
    let project = match headers.get(PROJECT_HEADER).map(parse_project).transpose() {
        Ok(p) => p,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, id, -32602, &e),
    };
    let session: SessionId = Arc::from(new_session_id());
    let key = host.pool.key_for(&session, project.clone());
    let capabilities = message.pointer("/params/capabilities").cloned().unwrap_or_else(|| json!({}));
    let child = host.pool.attach(key, project.as_deref(), session.clone(), capabilities);
    let init = match child.ensure_running().await {
        Ok(init) => init,
        Err(e) => {
            if let Some(child) = host.pool.detach(&child, &session) {
                child.retire().await;
            }
            return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, id, -32603, &e.to_string());
        }
    };
    host.sessions().insert(session.clone(), Session { id: session.clone(), child, last_seen: Instant::now() });
    let mut result = (*init).clone();
    // A session asking for an older revision that the child also speaks gets it.
    let asked = message.pointer("/params/protocolVersion").and_then(Value::as_str);
    let theirs = result.get("protocolVersion").and_then(Value::as_str).unwrap_or(mcp_wire::V2025_11_25).to_owned();
    if let Some(asked) = asked.filter(|a| VERSIONS.contains(a) && *a < theirs.as_str()) {
        result["protocolVersion"] = json!(asked);
    }
    let mut resp = ok_answer(id, result);
    if let Ok(v) = HeaderValue::from_str(&session) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

async fn request(
    host: &Host,
    session: SessionId,
    child: Arc<Child>,
    method: &str,
    id: Value,
    message: Value,
) -> Response {
    match method {
        "ping" => return ok_answer(id, json!({})),
        "logging/setLevel" => {
            let Some(level) = message.pointer("/params/level").and_then(Value::as_str).and_then(Level::parse) else {
                return ok_error(
                    id,
                    -32602,
                    "Invalid params: level must be one of debug, info, notice, warning, error, critical, alert, emergency",
                );
            };
            let change = child.mux().set_level(&session, level);
            if let Some(level) = change
                && let Err(e) = child.ask("logging/setLevel", json!({"level": level.as_str()})).await
            {
                return ok_error(id, -32603, &format!("mcp-host: server `{}`: {e}", host.pool.name));
            }
            return ok_answer(id, json!({}));
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            let Some(uri) = message.pointer("/params/uri").and_then(Value::as_str).map(str::to_owned) else {
                return ok_error(id, -32602, "Invalid params: uri is required");
            };
            if let Err(e) = child.ensure_running().await {
                return ok_error(id, -32603, &e.to_string());
            }
            if method == "resources/subscribe" {
                let first = child.mux().subscribe(&session, &uri);
                if first && let Err(e) = child.ask(method, json!({"uri": uri})).await {
                    child.mux().unsubscribe(&session, &uri);
                    return ok_error(id, -32603, &format!("mcp-host: server `{}`: {e}", host.pool.name));
                }
            } else {
                let last = child.mux().unsubscribe(&session, &uri);
                if last {
                    let _ = child.ask(method, json!({"uri": uri})).await;
                }
            }
            return ok_answer(id, json!({}));
        }
        _ => {}
    }
    relay(session, child, id, Payload::Parsed(message)).await
}

/// A request for the child, as it is sent there.
enum Payload<'a> {
    Parsed(Value),
    /// Its text, read by `wire` (which left the id and progress token to replace).
    Text(wire::Request<'a>),
}

/// Sends a session's request to the child and answers with what comes back: the answer
/// as JSON when it comes first, else an event stream of everything up to the answer.
async fn relay(session: SessionId, child: Arc<Child>, id: Value, payload: Payload<'_>) -> Response {
    if let Err(e) = child.ensure_running().await {
        return ok_error(id, -32603, &e.to_string());
    }
    let (sink, mut rx) = mpsc::unbounded_channel();
    let line = match payload {
        Payload::Parsed(message) => {
            let rewritten = child.mux().request(&session, message, sink);
            rewritten.to_string()
        }
        Payload::Text(request) => {
            let (child_id, token) = child.mux().register(&session, id.clone(), request.progress_token(), sink);
            request.rewrite(child_id, token.as_deref())
        }
    };
    let mut watch = Abandon { child: child.clone(), session, id: id.clone(), answered: false };
    child.send_line(line);
    let Some(first) = rx.recv().await else {
        watch.answered = true;
        return ok_error(
            id,
            -32603,
            "mcp-host: the request was cancelled, or its session ended, before the server answered",
        );
    };
    match first {
        Outgoing::Answer(text) => {
            watch.answered = true;
            return json_text(text);
        }
        Outgoing::Message(m) if is_answer(&m, &id) => {
            watch.answered = true;
            return axum::Json(m).into_response();
        }
        Outgoing::Message(_) => {}
    }
    // Something comes before the answer (progress, a server request): stream it all.
    let stream =
        futures_util::stream::unfold((Some(first), rx, watch, false), move |(first, mut rx, mut watch, done)| {
            let id = id.clone();
            async move {
                if done {
                    return None;
                }
                let next = match first {
                    Some(m) => m,
                    None => rx.recv().await?,
                };
                let (data, last) = match next {
                    Outgoing::Answer(text) => (text, true),
                    Outgoing::Message(m) => (m.to_string(), is_answer(&m, &id)),
                };
                if last {
                    watch.answered = true;
                }
                let event = Event::default().event("message").data(data);
                Some((Ok::<_, Infallible>(event), (None, rx, watch, last)))
            }
        });
    Sse::new(stream).into_response()
}

/// Whether `m` is the answer to the request `id`.
fn is_answer(m: &Value, id: &Value) -> bool {
    m.get("method").is_none() && m.get("id") == Some(id)
}

/// An answer that is JSON text already, as `axum::Json` would send it.
fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], text).into_response()
}

/// A JSON-RPC error answer with HTTP 200: the request was fine, the server side failed.
fn ok_error(id: Value, code: i64, message: &str) -> Response {
    axum::Json(error_answer(id, code, message)).into_response()
}

/// A request whose client went away before its answer: the child is told to cancel it.
struct Abandon {
    child: Arc<Child>,
    session: SessionId,
    id: Value,
    answered: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let child_id = self.child.mux().abandon(&self.session, &self.id);
        if let Some(child_id) = child_id {
            self.child.send(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": child_id, "reason": "the client closed the request"},
            }));
        }
    }
}

async fn get_mcp(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32600, "Mcp-Session-Id header is required");
    };
    let Some((session, child)) = host.session(sid) else {
        return rpc_error(StatusCode::NOT_FOUND, Value::Null, -32001, "Session not found");
    };
    let (sink, rx) = mpsc::unbounded_channel::<Outgoing>();
    child.mux().set_stream(&session, sink);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await? {
            Outgoing::Message(m) => m.to_string(),
            Outgoing::Answer(text) => text,
        };
        Some((Ok::<_, Infallible>(Event::default().event("message").data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn delete_mcp(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32600, "Mcp-Session-Id header is required");
    };
    let Some((session, _)) = host.session(sid) else {
        return rpc_error(StatusCode::NOT_FOUND, Value::Null, -32001, "Session not found");
    };
    host.end_session(&session).await;
    StatusCode::OK.into_response()
}

async fn health(State(host): State<Arc<Host>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "service": "mcp-host",
        "name": host.pool.name,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "port": host.port,
        "share": host.pool.share().as_str(),
        "children": host.pool.all().len(),
        "sessions": host.session_count(),
        "uptime_secs": host.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// Each child: its share key, pid, memory (RSS of its whole process group), sessions
/// attached, restarts.
async fn status(State(host): State<Arc<Host>>) -> Response {
    let children: Vec<Value> = host
        .pool
        .all()
        .iter()
        .map(|c| {
            let s = c.status();
            json!({
                "share_key": c.key.label(),
                "pid": s.pid,
                "rss_bytes": s.pid.map(crate::procs::group_rss),
                "sessions": s.sessions,
                "in_flight": s.in_flight,
                "restarts": s.restarts,
                "state": s.state,
            })
        })
        .collect();
    axum::Json(json!({
        "name": host.pool.name,
        "pid": std::process::id(),
        "port": host.port,
        "share": host.pool.share().as_str(),
        "sessions": host.session_count(),
        "children": children,
    }))
    .into_response()
}

/// `Mcp-Project-Path`: percent-encoded UTF-8 of an absolute, existing directory.
fn parse_project(value: &HeaderValue) -> Result<PathBuf, String> {
    let raw = value.to_str().map_err(|_| "Mcp-Project-Path is not visible ASCII (percent-encode it)".to_owned())?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| format!("Mcp-Project-Path {raw:?} is not percent-encoded UTF-8"))?;
    let path = PathBuf::from(decoded.as_ref());
    if !path.is_absolute() {
        return Err(format!("Mcp-Project-Path {decoded:?} is not an absolute path"));
    }
    let canonical = path.canonicalize().map_err(|e| format!("Mcp-Project-Path {decoded:?}: {e}"))?;
    if !canonical.is_dir() {
        return Err(format!("Mcp-Project-Path {decoded:?} is not a directory"));
    }
    Ok(canonical)
}

fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
