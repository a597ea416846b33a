//! MCP streamable HTTP on `/mcp` (POST messages, GET server stream, DELETE session) plus
//! `/health`. This is the edge: headers and bodies are validated here and every failure
//! is mapped once to an HTTP status and a JSON-RPC error body. Requests of the stateless
//! revision 2026-07-28 are recognised here and framed by `transport::stateless`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router as AxumRouter;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use mcp_wire::{PROJECT_HEADER, PROJECT_ID_HEADER, SESSION_HEADER, VERSION_HEADER};
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;

use super::guard::guard;
use crate::config::DaemonConfig;
use crate::dispatch::McpServer;
use crate::postgres::ProjectKey;
use crate::project::ProjectPath;
use crate::protocol::{
    Answer, Incoming, Message, RequestId, RpcError, SESSION_VERSIONS, SHARED_RESULT_MIN, STATELESS_VERSION, code,
    error_response, parse_json, response, supported_version, version_allows_batch,
};
use crate::scope::{Captured, capture, with_project, with_project_key, within};
use crate::session::{Session, StreamGuard};
use crate::stateless::is_stateless;
use crate::streams::{StreamKind, StreamPermit, TooManyStreams};

/// MCP's error code for an unknown session (as the official SDKs send it).
const SESSION_NOT_FOUND: i64 = -32001;

#[derive(Clone)]
pub struct AppState {
    pub server: Arc<McpServer>,
    pub config: Arc<DaemonConfig>,
}

pub fn app(state: AppState) -> AxumRouter {
    let mcp = AxumRouter::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .layer(middleware::from_fn_with_state(state.clone(), project_scope));
    // Only a test build has a route that panics (for the layer that answers panics).
    #[cfg(test)]
    let mcp = mcp.route(tests::PANIC_PATH, get(tests::panic));
    AxumRouter::new()
        .merge(mcp)
        .merge(super::ui::routes())
        .route("/health", get(health))
        .route("/ping", get(health))
        .layer(middleware::from_fn_with_state(state.config.clone(), guard))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Outermost, so a panic anywhere in a request's handling (guard included) still
        // gets an answer in the protocol, and the connection stays usable.
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// What a client gets when handling its request panicked: a JSON-RPC internal error
/// that names nothing of the panic (its message goes to the log only).
fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let message = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    tracing::error!(panic = message.unwrap_or("(not a string)"), "a request handler panicked; answered 500");
    rpc_error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        &RpcError::internal("Internal error: the server failed while handling this request; its log has the details"),
    )
}

/// Parses the project headers once and runs the request inside its task-local scope:
/// `Mcp-Project-Path` as a directory of this machine, or with PostgreSQL (`--database`)
/// `Mcp-Project-Id`, else `Mcp-Project-Path` as sent, as a key (no file-system access).
async fn project_scope(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let bad = |e: &dyn std::fmt::Display| {
        rpc_error_response(StatusCode::BAD_REQUEST, None, &RpcError::invalid_request(e.to_string()))
    };
    if st.server.router.keeps_projects_by_key() {
        let headers = req.headers();
        let key = match (headers.get(PROJECT_ID_HEADER), headers.get(PROJECT_HEADER)) {
            (Some(id), _) => ProjectKey::from_header("Mcp-Project-Id", id.as_bytes()),
            (None, Some(path)) => ProjectKey::from_header("Mcp-Project-Path", path.as_bytes()),
            (None, None) => return with_project_key(None, next.run(req)).await,
        };
        return match key {
            Ok(key) => with_project_key(Some(key), next.run(req)).await,
            Err(e) => bad(&e),
        };
    }
    let project = match req.headers().get(PROJECT_HEADER) {
        None => None,
        Some(raw) => match ProjectPath::from_header(raw.as_bytes()) {
            Ok(p) => Some(p),
            Err(e) => return bad(&e),
        },
    };
    with_project(project, next.run(req)).await
}

async fn post_mcp(State(st): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if !is_json_content_type(&headers) {
        return rpc_error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            &RpcError::invalid_request("Unsupported Media Type: Content-Type must be application/json"),
        );
    }
    let Some(reply_as) = negotiate_reply(&headers) else {
        return rpc_error_response(
            StatusCode::NOT_ACCEPTABLE,
            None,
            &RpcError::invalid_request("Not Acceptable: Accept must allow application/json or text/event-stream"),
        );
    };
    let parsed = body.map(|b| Incoming::parse(b, st.config.max_batch));
    // 2026-07-28 (SPEC 2.9): told apart per request by the body's `_meta` version or the
    // header naming that revision; served without a session.
    let body_stateless = matches!(&parsed, Ok(Ok(Incoming::Single(Value::Object(o)))) if is_stateless(o.get("params")));
    let header_stateless = headers.get(VERSION_HEADER).is_some_and(|v| v.as_bytes() == STATELESS_VERSION.as_bytes());
    if body_stateless || header_stateless {
        return match parsed {
            Ok(parsed) => super::stateless::post(&st, &headers, parsed, reply_as).await,
            Err(rejection) => body_rejected(&rejection, st.config.max_body_bytes),
        };
    }
    let header_version = match protocol_version_header(&headers) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let session = match lookup_session(&st, &headers) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let value = match parsed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return rpc_error_response(StatusCode::BAD_REQUEST, None, &e),
        Err(rejection) => return body_rejected(&rejection, st.config.max_body_bytes),
    };

    match value {
        Incoming::Batch(messages) => {
            let version = session.as_ref().map(|s| s.protocol_version()).or(header_version);
            if let Some(v) = version.filter(|v| !version_allows_batch(v)) {
                let e =
                    RpcError::invalid_request(format!("Invalid request: protocol version {v} does not allow batches"));
                return rpc_error_response(StatusCode::BAD_REQUEST, None, &e);
            }
            post_batch(BatchRun { st, session, scope: capture(), messages: messages.into_iter() }, reply_as).await
        }
        Incoming::Single(value) => match Message::from_value(value) {
            Err((id, e)) => rpc_error_response(StatusCode::BAD_REQUEST, id.as_ref(), &e),
            Ok(Message::Request { id, method, params }) if method == "initialize" => {
                initialize(&st, &id, params.as_ref(), reply_as)
            }
            Ok(message) => match serve(&st, session.as_ref(), message).await {
                Some(reply) => reply_as.respond(StatusCode::OK, &reply),
                None => accepted(),
            },
        },
    }
}

/// A batch's reply (SPEC 2.4) is written as it is produced: `[`, a reply, `,`, a reply …
/// `]`, the next message run only when hyper polls the body for more (it stops polling
/// while its write buffer is full), so the daemon holds about one reply of a batch at
/// once however large the answers. The status depends on whether anything answers (202
/// for notifications only), so messages run up to the first reply before the head is sent.
async fn post_batch(mut run: BatchRun, reply_as: ReplyFormat) -> Response {
    let Some(first) = run.next_reply().await else { return accepted() };
    let (open, close, content_type) = match reply_as {
        ReplyFormat::Json => (&b"["[..], &b"]"[..], "application/json"),
        ReplyFormat::EventStream => (&b"event: message\ndata: ["[..], &b"]\n\n"[..], "text/event-stream"),
    };
    let parts = stream::unfold(Some((run, Some(first), open)), move |state| async move {
        let (mut run, ready, prefix) = state?;
        let reply = match ready {
            Some(reply) => Some(reply),
            None => run.next_reply().await,
        };
        Some(match reply {
            Some(reply) => (reply.into_chunks(prefix), Some((run, None, &b","[..]))),
            None => (vec![Bytes::from_static(close)], None),
        })
    });
    let body = parts.flat_map(|chunks| stream::iter(chunks.into_iter().map(Ok::<_, Infallible>)));
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response()
}

/// The messages of a batch still to run, and what they run with.
struct BatchRun {
    st: AppState,
    session: Option<Arc<Session>>,
    /// The body is polled outside the request's task-local scope, so each message runs
    /// inside it again.
    scope: Captured,
    messages: std::vec::IntoIter<Bytes>,
}

impl BatchRun {
    /// Runs messages until one answers (notifications do not); `None` once all have run.
    async fn next_reply(&mut self) -> Option<Answer> {
        for raw in self.messages.by_ref() {
            let served = within(self.scope.clone(), serve_raw(&self.st, self.session.as_ref(), &raw));
            if let Some(reply) = served.await {
                return Some(reply);
            }
        }
        None
    }
}

/// `initialize` creates a session and answers with its id in `Mcp-Session-Id`.
fn initialize(st: &AppState, id: &RequestId, params: Option<&Value>, reply_as: ReplyFormat) -> Response {
    match st.server.initialize(params) {
        Ok((result, version)) => {
            let session = st.server.sessions.create(version);
            let mut resp = reply_as.respond(StatusCode::OK, &response(id, result));
            if let Ok(v) = HeaderValue::from_str(session.id()) {
                resp.headers_mut().insert(SESSION_HEADER, v);
            }
            resp
        }
        Err(e) => reply_as.respond(StatusCode::OK, &error_response(Some(id), &e).into()),
    }
}

/// One message of a batch, parsed now: a parse or envelope error becomes an error entry.
async fn serve_raw(st: &AppState, session: Option<&Arc<Session>>, raw: &[u8]) -> Option<Answer> {
    match parse_json(raw).map_err(|e| (None, e)).and_then(Message::from_value) {
        Err((id, e)) => Some(error_response(id.as_ref(), &e).into()),
        Ok(message) => serve(st, session, message).await,
    }
}

/// Serves one message; `None` for notifications and client responses.
async fn serve(st: &AppState, session: Option<&Arc<Session>>, message: Message) -> Option<Answer> {
    match message {
        Message::Request { id, method, params } => {
            tracing::debug!(%method, session = session.map(|s| s.id()), "request");
            Some(match st.server.handle(session, &method, params).await {
                Ok(result) => response(&id, result),
                Err(e) => error_response(Some(&id), &e).into(),
            })
        }
        Message::Notification { method, .. } => {
            tracing::debug!(%method, "notification");
            None
        }
        Message::Response { .. } => None,
    }
}

async fn get_mcp(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return rpc_error_response(
            StatusCode::NOT_ACCEPTABLE,
            None,
            &RpcError::invalid_request("Not Acceptable: GET /mcp needs Accept: text/event-stream"),
        );
    }
    if let Err(resp) = protocol_version_header(&headers) {
        return resp;
    }
    let session = match lookup_session(&st, &headers) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return rpc_error_response(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::invalid_request("Bad Request: GET /mcp needs an Mcp-Session-Id (send initialize first)"),
            );
        }
        Err(resp) => return resp,
    };
    let permit = match st.server.streams.open(StreamKind::Session, st.config.max_streams) {
        Ok(permit) => permit,
        Err(e) => return too_many_streams(None, &e),
    };
    Sse::new(event_stream(session.open_stream(), permit))
        .keep_alive(KeepAlive::new().interval(st.config.keep_alive))
        .into_response()
}

/// The session's messages until its sender goes (session deleted or expired, shutdown,
/// a newer GET stream) or the client does; the permit goes with the stream.
fn event_stream(guard: StreamGuard, permit: StreamPermit) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((guard, permit), |(mut guard, permit)| async move {
        let message = guard.rx.recv().await?;
        Some((Ok(Event::default().event("message").data(message.to_string())), (guard, permit)))
    })
}

async fn delete_mcp(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error_response(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::invalid_request("Bad Request: DELETE /mcp needs an Mcp-Session-Id"),
        );
    };
    if st.server.sessions.remove(id) { StatusCode::OK.into_response() } else { session_not_found() }
}

async fn health(State(st): State<AppState>) -> Response {
    let mut health = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": st.server.uptime().as_secs(),
        "open_stores": st.server.router.registry().open_count(),
        "max_open_stores": st.server.router.registry().limits().max_open,
        "live_sessions": st.server.sessions.len(),
        "listen_streams": st.server.streams.listen_count(),
        "event_streams": st.server.streams.open_count(),
        "global_db": st.server.router.global_db().display().to_string(),
    });
    // With --database the memory is there (no password shown), not in `global_db`.
    if let Some(db) = st.server.router.database() {
        health["database"] = db.shown().into();
    }
    axum::Json(health).into_response()
}

fn lookup_session(st: &AppState, headers: &HeaderMap) -> Result<Option<Arc<Session>>, Response> {
    let Some(raw) = headers.get(SESSION_HEADER) else { return Ok(None) };
    let id = raw.to_str().map_err(|_| session_not_found())?;
    st.server.sessions.touch(id).map(Some).ok_or_else(session_not_found)
}

fn session_not_found() -> Response {
    rpc_error_response(
        StatusCode::NOT_FOUND,
        None,
        &RpcError::new(SESSION_NOT_FOUND, "Session not found: it expired or was deleted; initialize again"),
    )
}

/// `MCP-Protocol-Version`, when present, must name a version we speak.
fn protocol_version_header(headers: &HeaderMap) -> Result<Option<&'static str>, Response> {
    let Some(raw) = headers.get(VERSION_HEADER) else { return Ok(None) };
    let text = raw.to_str().unwrap_or("");
    supported_version(text).map(Some).ok_or_else(|| {
        rpc_error_response(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::invalid_request(format!(
                "Bad Request: unsupported MCP-Protocol-Version {text:?} (supported: {})",
                SESSION_VERSIONS.join(", ")
            )),
        )
    })
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// How a POST's answer is framed: JSON unless the client only accepts an event stream.
#[derive(Clone, Copy)]
pub(super) enum ReplyFormat {
    Json,
    EventStream,
}

impl ReplyFormat {
    pub(super) fn respond(self, status: StatusCode, body: &Answer) -> Response {
        match (self, body) {
            // A large result (maybe a cached graph shared with other requests) is sent
            // from where it lies, between the envelope's head and its closing brace.
            (ReplyFormat::Json, Answer::Response { id, result }) if result.as_bytes().len() >= SHARED_RESULT_MIN => {
                let parts = [Bytes::from(Answer::response_head(id)), result.to_bytes(), Bytes::from_static(b"}")];
                let length = parts.iter().map(Bytes::len).sum::<usize>();
                let body = Body::from_stream(stream::iter(parts.map(Ok::<_, Infallible>)));
                // With the length given, hyper sends a plain body rather than chunks.
                (
                    status,
                    [
                        (header::CONTENT_TYPE, "application/json".to_owned()),
                        (header::CONTENT_LENGTH, length.to_string()),
                    ],
                    body,
                )
                    .into_response()
            }
            _ => self.respond_bytes(status, body.to_vec()),
        }
    }

    pub(super) fn respond_bytes(self, status: StatusCode, json: Vec<u8>) -> Response {
        match self {
            ReplyFormat::Json => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
            ReplyFormat::EventStream => {
                let mut event = Vec::with_capacity(json.len() + 24);
                event.extend_from_slice(b"event: message\ndata: ");
                event.extend_from_slice(&json);
                event.extend_from_slice(b"\n\n");
                (status, [(header::CONTENT_TYPE, "text/event-stream")], event).into_response()
            }
        }
    }
}

/// A missing `Accept` or `*/*` gets JSON so plain `curl` works.
fn negotiate_reply(headers: &HeaderMap) -> Option<ReplyFormat> {
    if headers.get(header::ACCEPT).is_none() || accepts(headers, "application/json") {
        Some(ReplyFormat::Json)
    } else if accepts(headers, "text/event-stream") {
        Some(ReplyFormat::EventStream)
    } else {
        None
    }
}

pub(super) fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    let (kind, _) = mime.split_once('/').unwrap_or((mime, ""));
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|range| {
        let range = range.split(';').next().unwrap_or("").trim();
        range == "*/*" || range.eq_ignore_ascii_case(mime) || range.eq_ignore_ascii_case(&format!("{kind}/*"))
    })
}

/// A body that could not be read (over `--max-body-bytes`, or the client broke off)
/// gets the rejection's status with a JSON-RPC error like every other failure.
fn body_rejected(rejection: &BytesRejection, limit: usize) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("Payload Too Large: the request body exceeds {limit} bytes (--max-body-bytes)")
    } else {
        format!("Bad Request: cannot read the request body: {}", rejection.body_text())
    };
    rpc_error_response(status, None, &RpcError::invalid_request(message))
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// An event stream beyond `--max-streams`: 503, so the client knows to try again later.
pub(super) fn too_many_streams(id: Option<&RequestId>, e: &TooManyStreams) -> Response {
    rpc_error_response(StatusCode::SERVICE_UNAVAILABLE, id, &RpcError::new(code::SERVER_BUSY, e.to_string()))
}

/// The single place where an error becomes an HTTP response.
pub fn rpc_error_response(status: StatusCode, id: Option<&RequestId>, err: &RpcError) -> Response {
    (status, axum::Json(error_response(id, err))).into_response()
}

#[cfg(test)]
mod tests;
