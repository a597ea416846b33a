//! A fake MCP streamable-HTTP upstream for the relaying tests: JSON replies, sessions it
//! can forget on demand (to answer 404 like an expired session), a `fast` tool and a
//! `slow` tool that answers only when the test releases it. It records what it sees, in
//! order, so tests assert on the sequence of events rather than on timing, and each POST's
//! `Mcp-Project-Id`. Optionally it
//! answers requests as SSE streams (a log notification, then the answer), and serves over
//! TLS (`proxy_common/tls.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::tls::{TestCa, TlsListener};

const SESSION: &str = "mcp-session-id";

pub struct FakeState {
    /// What happened, in order: `POST <session> <method>` (`... tools/call <tool> <id>`,
    /// `... resources/subscribe <uri> <id>`, `... logging/setLevel <level> <id>`),
    /// `slow answered <id>`, `DELETE <session>`, `404 <session> <method>`,
    /// `503 initialize`.
    events: Mutex<Vec<String>>,
    live: Mutex<HashSet<String>>,
    next_session: AtomicU32,
    /// Permits for `slow` calls to answer.
    release: Semaphore,
    /// How many coming `initialize` requests get `503` (a daemon not ready yet).
    refuse_initialize: AtomicU32,
    /// Answer requests (other than `initialize`) as SSE streams.
    sse: bool,
    /// Every POST's method and its `Mcp-Project-Id` header (none when absent), in order.
    project_ids: Mutex<Vec<(String, Option<String>)>>,
}

pub struct Fake {
    pub url: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
    /// Over TLS: the handshakes that failed, with the reason.
    tls_refused: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// Serves on a free loopback port (in the test's runtime) until dropped.
    pub async fn start() -> Fake {
        Fake::start_with(false, None).await
    }

    /// Answers requests as SSE streams: a `notifications/message`, then the answer.
    pub async fn start_sse() -> Fake {
        Fake::start_with(true, None).await
    }

    /// Serves `https://localhost:PORT/mcp` with a certificate `ca` issued.
    pub async fn start_https(ca: &TestCa) -> Fake {
        Fake::start_with(false, Some(ca.acceptor.clone())).await
    }

    async fn start_with(sse: bool, tls: Option<TlsAcceptor>) -> Fake {
        let state = Arc::new(FakeState {
            events: Mutex::default(),
            live: Mutex::default(),
            next_session: AtomicU32::new(0),
            release: Semaphore::new(0),
            refuse_initialize: AtomicU32::new(0),
            sse,
            project_ids: Mutex::default(),
        });
        let app = Router::new().route("/mcp", post(on_post).get(on_get).delete(on_delete)).with_state(state.clone());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let tls_refused = Arc::new(Mutex::new(Vec::new()));
        let (url, task) = match tls {
            None => {
                let task = tokio::spawn(async move {
                    let _ = axum::serve(tcp, app).await;
                });
                (format!("http://127.0.0.1:{port}/mcp"), task)
            }
            Some(acceptor) => {
                let listener = TlsListener { tcp, acceptor, refused: tls_refused.clone() };
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                (format!("https://localhost:{port}/mcp"), task)
            }
        };
        Fake { url, state, task, tls_refused }
    }

    /// TLS handshakes that failed so far (over TLS only).
    pub fn tls_refusals(&self) -> Vec<String> {
        self.tls_refused.lock().unwrap().clone()
    }

    /// A `config.toml` that makes `name` this server (reached by url, never started).
    pub fn config(&self, name: &str) -> String {
        format!("[daemons.{name}]\nurl = \"{}\"\n", self.url)
    }

    pub fn events(&self) -> Vec<String> {
        self.state.events.lock().unwrap().clone()
    }

    /// Every POST's method and `Mcp-Project-Id` so far, in order.
    pub fn project_ids(&self) -> Vec<(String, Option<String>)> {
        self.state.project_ids.lock().unwrap().clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.events().iter().filter(|e| e.starts_with(prefix)).count()
    }

    /// Lets `n` pending (or future) `slow` calls answer.
    pub fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }

    /// The next `n` `initialize` requests get `503` (recorded as `503 initialize`).
    pub fn refuse_initialize(&self, n: u32) {
        self.state.refuse_initialize.store(n, Ordering::SeqCst);
    }

    /// Forgets a session, as an idle expiry would: its next request gets 404.
    pub fn expire(&self, session: &str) {
        assert!(self.state.live.lock().unwrap().remove(session), "no live session {session}");
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<String> {
        let mut s: Vec<String> = self.state.live.lock().unwrap().iter().cloned().collect();
        s.sort();
        s
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(st: &FakeState, event: String) {
    st.events.lock().unwrap().push(event);
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn on_post(State(st): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}),
        );
    };
    let session = headers.get(SESSION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let method = msg["method"].as_str().unwrap_or("response").to_owned();
    let id = msg.get("id").cloned();
    let label = session.clone().unwrap_or_else(|| "-".into());
    let project_id = headers.get("mcp-project-id").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    st.project_ids.lock().unwrap().push((method.clone(), project_id));
    if let Some(s) = &session
        && !st.live.lock().unwrap().contains(s)
    {
        record(&st, format!("404 {s} {method}"));
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}),
        );
    }
    if method == "initialize"
        && st.refuse_initialize.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    {
        record(&st, "503 initialize".into());
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"not ready"}}),
        );
    }
    let tool = msg.pointer("/params/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let id_text = id.clone().unwrap_or(Value::Null);
    if method == "tools/call" {
        record(&st, format!("POST {label} tools/call {tool} {id_text}"));
    } else if let Some(what) = msg.pointer("/params/uri").or_else(|| msg.pointer("/params/level")) {
        let what = what.as_str().unwrap_or_default();
        record(&st, format!("POST {label} {method} {what} {id_text}"));
    } else {
        record(&st, format!("POST {label} {method}"));
    }
    let Some(id) = id.filter(|_| msg.get("method").is_some()) else {
        return StatusCode::ACCEPTED.into_response(); // a notification or a client response
    };
    let result = match method.as_str() {
        "initialize" => {
            let sid = format!("fake-{}", st.next_session.fetch_add(1, Ordering::SeqCst) + 1);
            st.live.lock().unwrap().insert(sid.clone());
            let body = json!({"jsonrpc":"2.0","id":id,"result":{
                "protocolVersion": msg.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake-upstream", "version": "1"}}});
            return (StatusCode::OK, [("content-type", "application/json"), (SESSION, sid.as_str())], body.to_string())
                .into_response();
        }
        "tools/list" => json!({"tools":[
            {"name":"slow","inputSchema":{"type":"object"}},
            {"name":"fast","inputSchema":{"type":"object"}}]}),
        "tools/call" if tool == "fast" => json!({"content":[{"type":"text","text":"fast done"}]}),
        "resources/subscribe" | "resources/unsubscribe" | "logging/setLevel" => json!({}),
        "tools/call" if tool == "slow" => {
            st.release.acquire().await.expect("semaphore open").forget();
            record(&st, format!("slow answered {id}"));
            json!({"content":[{"type":"text","text":"slow done"}]})
        }
        _ => {
            return json_reply(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("no method {method}")}}),
            );
        }
    };
    let answer = json!({"jsonrpc":"2.0","id":id,"result":result});
    if st.sse {
        // A log notification first, as servers that stream their answers send them.
        let note = json!({"jsonrpc":"2.0","method":"notifications/message",
            "params":{"level":"info","data":format!("answering {method}")}});
        let body = format!("event: message\ndata: {note}\n\nevent: message\ndata: {answer}\n\n");
        return (StatusCode::OK, [("content-type", "text/event-stream")], body).into_response();
    }
    json_reply(StatusCode::OK, answer)
}

async fn on_get() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

async fn on_delete(State(st): State<Arc<FakeState>>, headers: HeaderMap) -> StatusCode {
    let session = headers.get(SESSION).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let known = st.live.lock().unwrap().remove(&session);
    record(&st, format!("DELETE {session}"));
    if known { StatusCode::OK } else { StatusCode::NOT_FOUND }
}
