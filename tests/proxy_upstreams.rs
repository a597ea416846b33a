//! mcp-proxy against upstreams that are not ours (issue 4, item 7):
//! - a real MCP server built with the official Python SDK (PyPI `mcp`, FastMCP), run once
//!   with its deprecated HTTP+SSE transport and once with streamable HTTP;
//! - a small HTTP+SSE upstream written here that announces its message endpoint as
//!   `/messages/?session_id=X`, as `/messages/X` or as an absolute URL.
//!
//! Through `mcp-proxy --target X`: tools/list and tools/call work; progress notifications
//! reach stdout before the final result; a server request (sampling/createMessage,
//! roots/list) reaches the client and the client's answer reaches the server; a restarted
//! SSE upstream is recovered transparently and a dead one is reported for the request's id.
//!
//! The Python SDK is installed once per target directory into a venv (`target/tmp/e2e-venv`),
//! shared by parallel tests and test processes through a file lock. No registry, no pass:
//! if pip cannot install it, these tests fail and say why.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use e2e::{PATIENCE, TestEnv, bin, fixture, free_port};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

/// The Python SDK the tests install (the 1.x line, whose `FastMCP` the external daemons
/// this proxy fronts are built with). `E2E_PYTHON_MCP` overrides it, e.g. `mcp==2.3.0`.
const PYTHON_MCP: &str = "mcp==1.30.0";

// ---------------------------------------------------------------------------------------
// The Python SDK's venv

/// The venv's python with the SDK installed (`E2E_PYTHON_MCP` overrides the version).
fn venv_python() -> PathBuf {
    let requirement = std::env::var("E2E_PYTHON_MCP").unwrap_or_else(|_| PYTHON_MCP.to_owned());
    e2e::python::python_with("e2e-venv", &requirement)
}

/// The FastMCP fixture server (`tests/fixtures/upstreams/fastmcp_server.py`), our child,
/// killed and reaped on drop.
struct PyServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl PyServer {
    fn start(env: &TestEnv, transport: &str) -> PyServer {
        let python = venv_python();
        for _ in 0..5 {
            let port = free_port();
            let log = env.dir.path().join(format!("fastmcp-{transport}-{port}.log"));
            let child = Command::new(&python)
                .arg(fixture("upstreams/fastmcp_server.py"))
                .args(["--transport", transport, "--port", &port.to_string()])
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn the FastMCP fixture server");
            let mut server = PyServer { child, port, log };
            if server.wait_listening() {
                return server;
            }
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if !text.contains("address already in use") {
                panic!("the FastMCP server ({transport}) did not start; its log:\n{text}");
            }
        }
        panic!("could not find a free port for the FastMCP server");
    }

    /// Polls the port until it accepts, the process exits, or PATIENCE passes.
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The proxy, driven over its stdio like an MCP client does

struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proxy {
    /// Writes `config` as the environment's config.toml and starts `mcp-proxy --target`.
    fn start(env: &TestEnv, config: &str, target: &str) -> Proxy {
        std::fs::write(env.runtime().join("config.toml"), config).unwrap();
        let stderr = env.dir.path().join(format!("proxy-{target}.stderr"));
        let mut child = env
            .command(&bin("mcp-proxy"))
            .args(["--target", target, "--manager-port", &free_port().to_string()])
            .current_dir(env.project("p"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn mcp-proxy");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proxy { child, stdin, lines, stderr }
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").expect("write to the proxy's stdin");
        stdin.flush().unwrap();
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Reads stdout until a message matches `pred`; returns the messages before it and
    /// the match. Every line must be one JSON-RPC message (stdout is protocol only).
    fn recv_until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> (Vec<Value>, Value) {
        let deadline = Instant::now() + PATIENCE;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "no {what} from the proxy within {PATIENCE:?}; stdout so far: {before:?}\nproxy stderr:\n{}",
                    self.stderr_text()
                ),
            };
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
            assert_eq!(value["jsonrpc"], "2.0", "stdout line is not JSON-RPC: {line}");
            if pred(&value) {
                return (before, value);
            }
            before.push(value);
        }
    }

    /// Reads until the answer for `id`.
    fn answer(&self, id: i64) -> (Vec<Value>, Value) {
        self.recv_until(&format!("answer for id {id}"), |v| v["id"] == json!(id) && v.get("method").is_none())
    }

    /// Sends a request and returns its `result` (panics on an error answer).
    fn request(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}));
        let (_, answer) = self.answer(id);
        answer.get("result").cloned().unwrap_or_else(|| panic!("{method}: error answer {answer}"))
    }

    fn initialize(&mut self, version: &str) -> Value {
        let result = self.request(
            1,
            "initialize",
            json!({"protocolVersion": version, "capabilities": {"roots": {"listChanged": true}, "sampling": {}},
                   "clientInfo": {"name": "e2e-proxy-upstreams", "version": "1"}}),
        );
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        result
    }
}

impl Proxy {
    /// Closes stdin and waits (bounded) for the proxy to exit; returns its exit status
    /// and whatever it wrote to stdout meanwhile.
    fn finish(&mut self) -> (std::process::ExitStatus, Vec<Value>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit after stdin closed; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            rest.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}")),
            );
        }
        (status, rest)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the proxy finishes and exits
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        list["tools"].as_array().expect("tools array").iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

fn text_of(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text content in {result}"))
}

/// A tools/call with a progress token: the progress notifications for that token come
/// before the final result, in order.
fn assert_progress_before_result(proxy: &mut Proxy, id: i64, tool: &str, steps: u64) {
    let token = format!("progress-{id}");
    proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
        "name": tool, "arguments": {"steps": steps}, "_meta": {"progressToken": token}}}));
    let (before, answer) = proxy.answer(id);
    assert_eq!(text_of(&answer["result"]), format!("counted {steps}"), "{answer}");
    let progress: Vec<u64> = before
        .iter()
        .filter(|m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == json!(token))
        .map(|m| m["params"]["progress"].as_f64().unwrap() as u64)
        .collect();
    assert_eq!(progress, (1..=steps).collect::<Vec<_>>(), "progress before the result; got {before:?}");
}

/// tools/call `ask_sampling`: the server's sampling/createMessage reaches the client, the
/// client's answer reaches the server, whose tool returns it.
fn assert_sampling_round_trip(proxy: &mut Proxy, id: i64) {
    proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
        "name":"ask_sampling","arguments":{"prompt":"what is the answer?"}}}));
    let (_, request) = proxy.recv_until("sampling/createMessage", |v| v["method"] == "sampling/createMessage");
    assert_eq!(request["params"]["messages"][0]["content"]["text"], "what is the answer?", "{request}");
    let server_id = request["id"].clone();
    assert!(!server_id.is_null(), "a server request has an id: {request}");
    proxy.send(&json!({"jsonrpc":"2.0","id":server_id,"result":{
        "role":"assistant","content":{"type":"text","text":"forty-two, said the client"},
        "model":"e2e-model","stopReason":"endTurn"}}));
    let (_, answer) = proxy.answer(id);
    assert_eq!(text_of(&answer["result"]), "forty-two, said the client", "{answer}");
}

/// tools/call `ask_roots`: roots/list reaches the client and its roots reach the server.
fn assert_roots_round_trip(proxy: &mut Proxy, id: i64) {
    proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"ask_roots","arguments":{}}}));
    let (_, request) = proxy.recv_until("roots/list", |v| v["method"] == "roots/list");
    proxy.send(&json!({"jsonrpc":"2.0","id":request["id"],"result":{"roots":[
        {"uri":"file:///e2e/root-one","name":"one"},{"uri":"file:///e2e/root-two","name":"two"}]}}));
    let (_, answer) = proxy.answer(id);
    assert_eq!(text_of(&answer["result"]), "file:///e2e/root-one\nfile:///e2e/root-two", "{answer}");
}

/// What every upstream must do through the proxy once initialized.
fn assert_tools_work(proxy: &mut Proxy, expected_tools: &[&str]) {
    let list = proxy.request(2, "tools/list", json!({}));
    assert_eq!(tool_names(&list), expected_tools, "{list}");
    let echoed = proxy.request(3, "tools/call", json!({"name":"echo","arguments":{"text":"héllo through the proxy"}}));
    assert_eq!(text_of(&echoed), "héllo through the proxy", "{echoed}");
}

const PY_TOOLS: &[&str] = &["announce", "ask_roots", "ask_sampling", "count", "echo"];

// ---------------------------------------------------------------------------------------
// The official Python SDK

#[test]
fn python_sdk_server_over_the_deprecated_sse_transport() {
    let env = TestEnv::new();
    let server = PyServer::start(&env, "sse");
    let config = format!("[daemons.py-sse]\nport = {}\ntransport = \"sse\"\n", server.port);
    let mut proxy = Proxy::start(&env, &config, "py-sse");

    let init = proxy.initialize("2024-11-05");
    assert_eq!(init["serverInfo"]["name"], "e2e-upstream", "{init}");
    assert_tools_work(&mut proxy, PY_TOOLS);
    assert_progress_before_result(&mut proxy, 4, "count", 3);
    assert_sampling_round_trip(&mut proxy, 5);
    assert_roots_round_trip(&mut proxy, 6);
    // A ping still answers after the server's requests (nothing got stuck).
    assert_eq!(proxy.request(7, "ping", json!({})), json!({}));
}

#[test]
fn python_sdk_server_over_streamable_http() {
    let env = TestEnv::new();
    let server = PyServer::start(&env, "streamable-http");
    let config = format!("[daemons.py-http]\nurl = \"http://127.0.0.1:{}/mcp\"\n", server.port);
    let mut proxy = Proxy::start(&env, &config, "py-http");

    let init = proxy.initialize("2025-06-18");
    assert_eq!(init["protocolVersion"], "2025-06-18", "{init}");
    assert_tools_work(&mut proxy, PY_TOOLS);
    // Progress and the sampling request are tied to their call: they travel in the
    // POST's SSE response.
    assert_progress_before_result(&mut proxy, 4, "count", 3);
    assert_sampling_round_trip(&mut proxy, 5);

    // roots/list is tied to no request: the server sends it on the GET stream, which the
    // proxy opens after initialization. Wait (bounded) until that stream carries a
    // notification, so the server does not send roots/list before it exists.
    let deadline = Instant::now() + PATIENCE;
    let mut id = 100;
    loop {
        assert!(Instant::now() < deadline, "the proxy never relayed the GET stream; stderr:\n{}", proxy.stderr_text());
        proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"announce","arguments":{}}}));
        let (before, _) = proxy.answer(id);
        if before.iter().any(|m| m["method"] == "notifications/tools/list_changed") {
            break;
        }
        id += 1;
    }
    assert_roots_round_trip(&mut proxy, 6);
    assert_eq!(proxy.request(7, "ping", json!({})), json!({}));
}

// ---------------------------------------------------------------------------------------
// A legacy HTTP+SSE upstream written here

#[derive(Clone, Copy, Debug)]
enum EndpointForm {
    /// `/messages/?session_id=X`, as the Python SDK announces it.
    Query,
    /// `/messages/X`, as the TypeScript SDK's examples and others do.
    Path,
    /// `http://127.0.0.1:PORT/messages/X`.
    Absolute,
}

struct UpState {
    form: EndpointForm,
    port: u16,
    next: AtomicU64,
    sessions: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<String>>>,
    /// Every message received, as its method (or "response"), in order.
    received: Mutex<Vec<String>>,
}

/// An HTTP+SSE MCP server (protocol 2024-11-05) on its own runtime.
struct SseUpstream {
    rt: tokio::runtime::Runtime,
    port: u16,
    form: EndpointForm,
    state: Arc<UpState>,
    server: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl SseUpstream {
    fn start(form: EndpointForm) -> SseUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = up_state(form, port);
        let server = Some(serve(&rt, listener, state.clone()));
        SseUpstream { rt, port, form, state, server }
    }

    /// Shuts the server down: every event stream ends, the port closes.
    fn stop(&mut self) {
        if let Some((shutdown, task)) = self.server.take() {
            let _ = shutdown.send(());
            self.state.sessions.lock().unwrap().clear(); // ends the event streams
            self.rt
                .block_on(async { tokio::time::timeout(PATIENCE, task).await })
                .expect("upstream shut down")
                .unwrap();
        }
    }

    /// A new server on the same port, knowing no session (a daemon restart).
    fn restart(&mut self) {
        self.stop();
        let listener = self.rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port))).unwrap();
        self.state = up_state(self.form, self.port);
        self.server = Some(serve(&self.rt, listener, self.state.clone()));
    }

    fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }

    /// Sends a message on every open session's event stream (as a server notifies).
    fn notify_all(&self, message: &Value) {
        for stream in self.state.sessions.lock().unwrap().values() {
            let _ = stream.send(message.to_string());
        }
    }
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn up_state(form: EndpointForm, port: u16) -> Arc<UpState> {
    Arc::new(UpState {
        form,
        port,
        next: AtomicU64::new(1),
        sessions: Mutex::new(HashMap::new()),
        received: Mutex::new(Vec::new()),
    })
}

fn serve(
    rt: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    state: Arc<UpState>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/sse", get(open_stream))
        .route("/messages/", post(post_by_query))
        .route("/messages/{session}", post(post_by_path))
        .with_state(state);
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (shutdown, task)
}

async fn open_stream(State(up): State<Arc<UpState>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let session = format!("sess{:04}", up.next.fetch_add(1, Ordering::SeqCst));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    up.sessions.lock().unwrap().insert(session.clone(), tx);
    let endpoint = match up.form {
        EndpointForm::Query => format!("/messages/?session_id={session}"),
        EndpointForm::Path => format!("/messages/{session}"),
        EndpointForm::Absolute => format!("http://127.0.0.1:{}/messages/{session}", up.port),
    };
    let first = futures_util::stream::once(async move { Ok(Event::default().event("endpoint").data(endpoint)) });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        Some((Ok(Event::default().event("message").data(message)), rx))
    });
    Sse::new(first.chain(rest))
}

async fn post_by_query(
    State(up): State<Arc<UpState>>,
    Query(query): Query<HashMap<String, String>>,
    body: String,
) -> (StatusCode, &'static str) {
    handle_message(&up, query.get("session_id").map(String::as_str).unwrap_or_default(), &body)
}

async fn post_by_path(
    State(up): State<Arc<UpState>>,
    UrlPath(session): UrlPath<String>,
    body: String,
) -> (StatusCode, &'static str) {
    handle_message(&up, &session, &body)
}

/// Accepts one message (202) and puts what it causes on the session's stream.
fn handle_message(up: &UpState, session: &str, body: &str) -> (StatusCode, &'static str) {
    let Some(stream) = up.sessions.lock().unwrap().get(session).cloned() else {
        return (StatusCode::NOT_FOUND, "Could not find session");
    };
    let Ok(message) = serde_json::from_str::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "Could not parse message");
    };
    let method = message["method"].as_str().unwrap_or("response").to_owned();
    up.received.lock().unwrap().push(method.clone());
    if let Some(id) = message.get("id").filter(|_| message.get("method").is_some()) {
        for out in respond(&method, id, &message["params"]) {
            let _ = stream.send(out.to_string());
        }
    }
    (StatusCode::ACCEPTED, "Accepted")
}

fn respond(method: &str, id: &Value, params: &Value) -> Vec<Value> {
    let result = |result: Value| json!({"jsonrpc":"2.0","id":id,"result":result});
    match method {
        "initialize" => vec![result(json!({"protocolVersion":"2024-11-05","capabilities":{"tools":{}},
            "serverInfo":{"name":"rust-sse-upstream","version":"1"}}))],
        "ping" | "resources/subscribe" | "resources/unsubscribe" | "logging/setLevel" => vec![result(json!({}))],
        "tools/list" => vec![result(json!({"tools":[
            {"name":"echo","inputSchema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}},
            {"name":"count","inputSchema":{"type":"object","properties":{"steps":{"type":"integer"}}}}]}))],
        "tools/call" if params["name"] == "echo" => {
            vec![result(json!({"content":[{"type":"text","text":params["arguments"]["text"]}]}))]
        }
        // Never answers (until cancelled, which needs no answer).
        "tools/call" if params["name"] == "hang" => Vec::new(),
        "tools/call" if params["name"] == "count" => {
            let steps = params["arguments"]["steps"].as_u64().unwrap_or(0);
            let token = &params["_meta"]["progressToken"];
            let mut out: Vec<Value> = (1..=steps)
                .map(|i| {
                    json!({"jsonrpc":"2.0","method":"notifications/progress",
                    "params":{"progressToken":token,"progress":i,"total":steps}})
                })
                .collect();
            out.push(result(json!({"content":[{"type":"text","text":format!("counted {steps}")}]})));
            out
        }
        _ => vec![json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("no method {method}")}})],
    }
}

fn sse_config(name: &str, upstream: &SseUpstream) -> String {
    match upstream.form {
        // The url form, for a daemon that is not ours to start.
        EndpointForm::Absolute => {
            format!("[daemons.{name}]\nurl = \"http://127.0.0.1:{}/sse\"\ntransport = \"sse\"\n", upstream.port)
        }
        _ => format!("[daemons.{name}]\nport = {}\ntransport = \"sse\"\n", upstream.port),
    }
}

fn sse_upstream_session(form: EndpointForm) {
    let env = TestEnv::new();
    let upstream = SseUpstream::start(form);
    let mut proxy = Proxy::start(&env, &sse_config("legacy", &upstream), "legacy");
    let init = proxy.initialize("2024-11-05");
    assert_eq!(init["serverInfo"]["name"], "rust-sse-upstream", "{init}");
    assert_tools_work(&mut proxy, &["count", "echo"]);
    assert_progress_before_result(&mut proxy, 4, "count", 4);
    let (_, unknown) = {
        proxy.send(&json!({"jsonrpc":"2.0","id":5,"method":"resources/list"}));
        proxy.answer(5)
    };
    assert_eq!(unknown["error"]["code"], -32601, "the upstream's own error is relayed: {unknown}");
    assert_eq!(
        upstream.received(),
        ["initialize", "notifications/initialized", "tools/list", "tools/call", "tools/call", "resources/list"]
    );
}

#[test]
fn sse_upstream_announcing_a_query_endpoint() {
    sse_upstream_session(EndpointForm::Query);
}

#[test]
fn sse_upstream_announcing_a_path_endpoint() {
    sse_upstream_session(EndpointForm::Path);
}

#[test]
fn sse_upstream_announcing_an_absolute_endpoint() {
    sse_upstream_session(EndpointForm::Absolute);
}

#[test]
fn sse_upstream_restart_is_invisible_and_a_dead_one_is_reported() {
    let env = TestEnv::new();
    let mut upstream = SseUpstream::start(EndpointForm::Query);
    let mut proxy = Proxy::start(&env, &sse_config("legacy", &upstream), "legacy");
    proxy.initialize("2024-11-05");
    assert_tools_work(&mut proxy, &["count", "echo"]);

    // The daemon restarts: its event stream ends and it forgets the session. The next call
    // succeeds; the new daemon saw the replayed handshake first; the client saw no second
    // initialize answer.
    upstream.restart();
    proxy.send(
        &json!({"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"text":"again"}}}),
    );
    let (before, answer) = proxy.answer(10);
    assert_eq!(text_of(&answer["result"]), "again", "{answer}\nproxy stderr:\n{}", proxy.stderr_text());
    assert!(before.iter().all(|m| m["result"]["serverInfo"].is_null()), "replay leaked to the client: {before:?}");
    assert_eq!(upstream.received(), ["initialize", "notifications/initialized", "tools/call"]);
    assert_progress_before_result(&mut proxy, 11, "count", 2);

    // The daemon is gone for good (and, having no command, cannot be started): the client
    // gets a JSON-RPC error for its id naming the daemon and the cause, not a hang.
    upstream.stop();
    proxy.send(
        &json!({"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}),
    );
    let (_, answer) = proxy.answer(12);
    let message = answer["error"]["message"].as_str().unwrap_or_else(|| panic!("an error answer: {answer}"));
    assert!(message.contains("`legacy`") && message.contains("not running"), "{message}");
    // And the session goes on once the daemon is back.
    upstream.restart();
    let echoed = proxy.request(13, "tools/call", json!({"name":"echo","arguments":{"text":"back"}}));
    assert_eq!(text_of(&echoed), "back");
}

#[test]
fn sse_cancelled_request_is_not_awaited() {
    let env = TestEnv::new();
    let upstream = SseUpstream::start(EndpointForm::Path);
    let mut proxy = Proxy::start(&env, &sse_config("legacy", &upstream), "legacy");
    proxy.initialize("2024-11-05");
    // A call the daemon never answers, then its cancellation: the proxy stops waiting
    // for it, so closing stdin ends the session at once instead of after the request
    // timeout (300 s by default, far beyond PATIENCE), and no answer is made up for it.
    proxy.send(&json!({"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"hang","arguments":{}}}));
    proxy.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":20,"reason":"user"}}));
    let echoed = proxy.request(21, "tools/call", json!({"name":"echo","arguments":{"text":"still here"}}));
    assert_eq!(text_of(&echoed), "still here");
    let (status, rest) = proxy.finish();
    assert!(status.success(), "{status}; stderr:\n{}", proxy.stderr_text());
    assert!(rest.iter().all(|m| m["id"] != json!(20)), "no answer is invented for a cancelled call: {rest:?}");
    assert!(upstream.received().contains(&"notifications/cancelled".to_owned()), "{:?}", upstream.received());
}

/// issue 16, item 6: a client that subscribed and set a log level, then only listens.
/// The daemon restarts; without any message from the client, the proxy reconnects and
/// replays the handshake, the subscription and the level, and the new daemon's
/// `notifications/resources/updated` reaches the client; no replayed answer does.
#[test]
fn sse_subscriber_hears_updates_again_after_a_restart() {
    let env = TestEnv::new();
    let mut upstream = SseUpstream::start(EndpointForm::Query);
    let mut proxy = Proxy::start(&env, &sse_config("legacy", &upstream), "legacy");
    proxy.initialize("2024-11-05");
    assert_eq!(proxy.request(2, "resources/subscribe", json!({"uri":"file:///watched"})), json!({}));
    assert_eq!(proxy.request(3, "logging/setLevel", json!({"level":"info"})), json!({}));

    upstream.restart();
    let deadline = Instant::now() + PATIENCE;
    while upstream.received().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the proxy never reconnected on its own: {:?}\nproxy stderr:\n{}",
            upstream.received(),
            proxy.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        upstream.received(),
        ["initialize", "notifications/initialized", "resources/subscribe", "logging/setLevel"]
    );
    upstream.notify_all(
        &json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///watched"}}),
    );
    let (before, update) = proxy.recv_until("resources/updated", |v| v["method"] == "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], "file:///watched", "{update}");
    assert!(before.is_empty(), "replayed answers leaked to the client: {before:?}");

    let echoed = proxy.request(4, "tools/call", json!({"name":"echo","arguments":{"text":"still here"}}));
    assert_eq!(text_of(&echoed), "still here");
    assert_eq!(
        upstream.received(),
        ["initialize", "notifications/initialized", "resources/subscribe", "logging/setLevel", "tools/call"]
    );
    let deadline = Instant::now() + PATIENCE;
    while !proxy.stderr_text().contains("event stream reopened") {
        assert!(Instant::now() < deadline, "no reconnection logged:\n{}", proxy.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}
