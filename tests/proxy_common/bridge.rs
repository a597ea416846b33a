//! A front in the deprecated HTTP+SSE transport (2024-11-05) for a streamable-HTTP MCP
//! server, so the proxy's legacy relay can be tested against our real memory-server:
//! `GET /sse` opens a session and announces `/messages/?session_id=N`; each message
//! POSTed there is sent on to the server (its session id, negotiated version and the
//! proxy's `Mcp-Project-Path` carried along), answered `202`, and every message of the
//! server's reply goes out on the session's event stream. It records the method (and
//! tool) of every message it receives, so tests can tell what reached the server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

struct Session {
    events: mpsc::UnboundedSender<Value>,
    upstream_session: Option<String>,
    version: Option<String>,
}

struct BridgeState {
    upstream: String,
    client: reqwest::Client,
    next: AtomicU32,
    sessions: Mutex<HashMap<String, Session>>,
    /// `<method>` or `tools/call <tool>` of every message received, in order.
    seen: Mutex<Vec<String>>,
}

pub struct SseBridge {
    pub port: u16,
    state: Arc<BridgeState>,
    task: tokio::task::JoinHandle<()>,
}

impl SseBridge {
    /// Serves on a free loopback port until dropped, in front of `upstream` (`.../mcp`).
    pub async fn start(upstream: String) -> SseBridge {
        let state = Arc::new(BridgeState {
            upstream,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            next: AtomicU32::new(0),
            sessions: Mutex::default(),
            seen: Mutex::default(),
        });
        let app = Router::new()
            .route("/sse", get(open_stream))
            .route("/messages/", post(on_message))
            .with_state(state.clone());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        });
        SseBridge { port, state, task }
    }

    /// `[daemons.NAME]` reached through this bridge, with `extra` TOML lines.
    pub fn config(&self, name: &str, extra: &str) -> String {
        format!("[daemons.{name}]\nurl = \"http://127.0.0.1:{}/sse\"\ntransport = \"sse\"\n{extra}", self.port)
    }

    /// What the server was sent, in order.
    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for SseBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_stream(State(st): State<Arc<BridgeState>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = (st.next.fetch_add(1, Ordering::SeqCst) + 1).to_string();
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    st.sessions.lock().unwrap().insert(id.clone(), Session { events: tx, upstream_session: None, version: None });
    let endpoint = Event::default().event("endpoint").data(format!("/messages/?session_id={id}"));
    let messages = futures_util::stream::unfold(rx, |mut rx| async move {
        let value = rx.recv().await?;
        Some((Ok(Event::default().event("message").data(value.to_string())), rx))
    });
    Sse::new(futures_util::stream::once(async move { Ok(endpoint) }).chain(messages))
}

async fn on_message(
    State(st): State<Arc<BridgeState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(id) = query.get("session_id").cloned() else { return StatusCode::BAD_REQUEST };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
    let method = message["method"].as_str().unwrap_or("response").to_owned();
    let seen = match message.pointer("/params/name").and_then(Value::as_str) {
        Some(tool) if method == "tools/call" => format!("tools/call {tool}"),
        _ => method.clone(),
    };
    st.seen.lock().unwrap().push(seen);
    let (session, version, events) = {
        let sessions = st.sessions.lock().unwrap();
        let Some(s) = sessions.get(&id) else { return StatusCode::NOT_FOUND };
        (s.upstream_session.clone(), s.version.clone(), s.events.clone())
    };
    let mut req = st
        .client
        .post(&st.upstream)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    if let Some(v) = version.filter(|_| method != "initialize") {
        req = req.header("mcp-protocol-version", v);
    }
    if let Some(p) = headers.get("mcp-project-path") {
        req = req.header("mcp-project-path", p.clone());
    }
    let Ok(resp) = req.send().await else { return StatusCode::BAD_GATEWAY };
    if method == "initialize"
        && let Some(sid) = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok())
        && let Some(s) = st.sessions.lock().unwrap().get_mut(&id)
    {
        s.upstream_session = Some(sid.to_owned());
    }
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let text = resp.text().await.unwrap_or_default();
    let replies: Vec<Value> = if is_sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        serde_json::from_str(&text).into_iter().collect()
    };
    for reply in replies {
        if method == "initialize"
            && let Some(v) = reply.pointer("/result/protocolVersion").and_then(Value::as_str)
            && let Some(s) = st.sessions.lock().unwrap().get_mut(&id)
        {
            s.version = Some(v.to_owned());
        }
        let _ = events.send(reply);
    }
    StatusCode::ACCEPTED
}
