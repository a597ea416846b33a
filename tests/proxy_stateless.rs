//! mcp-proxy and the stateless MCP revision 2026-07-28 (issue 7, item 6; SPEC 3.4):
//! - a 2026-07-28 upstream built with the official Python SDK (PyPI `mcp==2.3.0`, its
//!   `MCPServer` on streamable HTTP, started by the proxy from its config), driven by the
//!   same SDK's stdio client spawning `mcp-proxy`: `server/discover`, `tools/list`,
//!   `tools/call` and a `subscriptions/listen` update work, and the upstream saw the
//!   mirrored headers and no session id;
//! - a recording upstream written here (axum) checks the header mirroring exactly for
//!   several methods next to a session client's requests, that a `subscriptions/listen`
//!   stream is relayed message by message, past the request timeout, until the upstream
//!   closes it (gracefully or not) or the client cancels it, and that after the upstream
//!   restarts on the same port the next stateless request succeeds with no `initialize`.
//!
//! The Python SDK 2.x gets its own venv (`target/tmp/e2e-venv-mcp2`), apart from the 1.x
//! one of `proxy_upstreams.rs`; if pip cannot install it, the test fails and says why.

#[path = "proxy_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{Proxy, ProxyEnv, eventually};
use e2e::{PATIENCE, bin, fixture, free_port};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

const REVISION: &str = "2026-07-28";
const PYTHON_MCP2: &str = "mcp==2.3.0";

/// `_meta` of a 2026-07-28 request.
fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": REVISION,
        "io.modelcontextprotocol/clientInfo": {"name": "e2e-stateless", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A 2026-07-28 request.
fn stateless(id: u64, method: &str, mut params: Value) -> Value {
    params["_meta"] = meta();
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})
}

// ---------------------------------------------------------------------------------------
// The recording upstream

/// One POST as the upstream saw it: the method, the id and every `mcp-*` header.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Recorder {
    posts: Mutex<Vec<Seen>>,
    /// The open `subscriptions/listen` streams, by the request id (as JSON text).
    listens: Mutex<Vec<(String, mpsc::UnboundedSender<Event>)>>,
}

impl Recorder {
    fn posts(&self) -> Vec<Seen> {
        self.posts.lock().unwrap().clone()
    }

    fn methods(&self) -> Vec<String> {
        self.posts().into_iter().map(|s| s.method).collect()
    }

    /// The headers of every POST of `method`, in order.
    fn headers_of(&self, method: &str) -> Vec<BTreeMap<String, String>> {
        self.posts().into_iter().filter(|s| s.method == method).map(|s| s.headers).collect()
    }

    fn listen(&self, id: u64) -> Option<mpsc::UnboundedSender<Event>> {
        let key = json!(id).to_string();
        self.listens.lock().unwrap().iter().find(|(k, _)| *k == key).map(|(_, tx)| tx.clone())
    }

    /// Sends one SSE event on listen stream `id`.
    fn push(&self, id: u64, event: Event) {
        self.listen(id)
            .expect("listen stream open")
            .send(event)
            .expect("the listen stream is still open (read by the proxy)");
    }

    /// Ends listen stream `id` (its response body ends once the sender is gone).
    fn end(&self, id: u64) {
        let key = json!(id).to_string();
        self.listens.lock().unwrap().retain(|(k, _)| *k != key);
    }
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

async fn on_post(State(rec): State<Arc<Recorder>>, headers: HeaderMap, body: Bytes) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = message["method"].as_str().unwrap_or("").to_owned();
    let mirrored = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("mcp-"))
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    rec.posts.lock().unwrap().push(Seen { method: method.clone(), headers: mirrored });
    let id = message["id"].clone();
    if id.is_null() {
        return StatusCode::ACCEPTED.into_response();
    }
    match method.as_str() {
        "initialize" => {
            let result = json!({"protocolVersion": message["params"]["protocolVersion"], "capabilities": {},
                "serverInfo": {"name": "recorder", "version": "1"}});
            let mut resp = axum::Json(json!({"jsonrpc":"2.0","id":id,"result":result})).into_response();
            resp.headers_mut().insert("mcp-session-id", "s1".parse().unwrap());
            resp
        }
        "subscriptions/listen" => {
            let (tx, rx) = mpsc::unbounded_channel::<Event>();
            let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{
                "_meta": {"io.modelcontextprotocol/subscriptionId": id}, "notifications": message["params"]["notifications"]}});
            tx.send(data(&ack)).unwrap();
            rec.listens.lock().unwrap().push((id.to_string(), tx));
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
            });
            Sse::new(stream).into_response()
        }
        "tools/list" => axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"resultType":"complete",
            "method":method,"tools":tools()}}))
        .into_response(),
        // Never answers: the proxy's request timeout ends it.
        "tools/call" if message["params"]["name"] == "slow" => std::future::pending::<Response>().await,
        _ => axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"resultType":"complete","method":method}}))
            .into_response(),
    }
}

/// The recording upstream's tools: `sql` mirrors three parameters into `Mcp-Param-*`
/// headers; `bad` annotates an array item, which makes its definition invalid.
fn tools() -> Value {
    json!([
        {"name":"sql","inputSchema":{"type":"object","properties":{
            "region":{"type":"string","x-mcp-header":"Region"},
            "opts":{"type":"object","properties":{
                "n":{"type":"integer","x-mcp-header":"N"},
                "flag":{"type":"boolean","x-mcp-header":"Flag"}}},
            "query":{"type":"string"}}}},
        {"name":"bad","inputSchema":{"type":"object","properties":{
            "list":{"type":"array","items":{"type":"string","x-mcp-header":"Item"}}}}},
        {"name":"plain","inputSchema":{"type":"object","properties":{"x":{"type":"string"}}}}
    ])
}

/// The recording upstream on its own thread and runtime: stopping it drops the runtime,
/// which closes the listener and every connection, as a process exiting would.
struct Upstream {
    port: u16,
    rec: Arc<Recorder>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Serves on `port` (a free one when `None`), retrying the bind for a bounded time.
    fn start(port: Option<u16>) -> Upstream {
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0))) {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "cannot bind the upstream's port: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let rec = Arc::new(Recorder::default());
        let app = Router::new().route("/mcp", post(on_post)).with_state(rec.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Upstream { port, rec, stop: Some(stop), thread: Some(thread) }
    }

    fn config(&self, name: &str, extra: &str) -> String {
        format!("[daemons.{name}]\nurl = \"http://127.0.0.1:{}/mcp\"\n{extra}", self.port)
    }

    /// Stops serving and waits (bounded) until the port refuses connections.
    async fn stop(mut self) {
        self.shutdown();
        let port = self.port;
        eventually("the upstream's port to close", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()).await;
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `mcp-proxy --target rec` in a project of `pe`, with `config`.
fn proxy(pe: &ProxyEnv, config: &str) -> (Proxy, PathBuf) {
    pe.write_config(config);
    let project = pe.project("p");
    (Proxy::spawn(pe.command("rec", &project, &[]), "rec"), project)
}

fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

// ---------------------------------------------------------------------------------------
// Tests against the recording upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_carry_the_mirrored_headers_and_no_session() {
    let up = Upstream::start(None);
    let pe = ProxyEnv::bare();
    // A request timeout far beyond PATIENCE: the exit at the end cannot come from draining.
    let (mut proxy, project) = proxy(&pe, &up.config("rec", "request_timeout_ms = 3600000\n"));
    // A plain ASCII path, which the proxy's encoding leaves as it is.
    let project = project.display().to_string();

    // A session client's handshake first: its session must not leak into stateless requests.
    let init = proxy.initialize().await;
    assert_eq!(init["serverInfo"]["name"], "recorder");

    let calls: [(u64, &str, Value, Option<&str>); 7] = [
        (1, "server/discover", json!({}), None),
        (2, "tools/list", json!({}), None),
        (3, "tools/call", json!({"name":"read_graph","arguments":{}}), Some("read_graph")),
        (4, "tools/call", json!({"name":"grüße","arguments":{}}), Some("=?base64?Z3LDvMOfZQ==?=")),
        (5, "resources/read", json!({"uri":"memory://knowledge-graph"}), Some("memory://knowledge-graph")),
        (6, "prompts/get", json!({"name":" padded "}), Some("=?base64?IHBhZGRlZCA=?=")),
        (7, "resources/list", json!({}), None),
    ];
    for (id, method, params, name) in &calls {
        let reply = proxy.request_message(stateless(*id, method, params.clone())).await;
        assert_eq!(reply["result"]["method"], *method, "{reply}");
        let mut expected =
            vec![("mcp-method", *method), ("mcp-project-path", project.as_str()), ("mcp-protocol-version", REVISION)];
        if let Some(name) = name {
            expected.push(("mcp-name", name));
        }
        let seen = up.rec.posts().pop().unwrap();
        assert_eq!(seen.method, *method);
        assert_eq!(seen.headers, headers(&expected), "{method}");
    }
    // The session client's own request still goes with its session and negotiated version.
    let reply = proxy.request(8, "tools/list", json!({})).await;
    assert_eq!(reply["result"]["method"], "tools/list");
    let seen = up.rec.posts().pop().unwrap();
    assert_eq!(
        seen.headers,
        headers(&[
            ("mcp-project-path", project.as_str()),
            ("mcp-protocol-version", common::VERSION),
            ("mcp-session-id", "s1")
        ])
    );

    // An open listen stream does not keep the proxy alive once stdin closes.
    let ack = proxy.first_after(stateless(9, "subscriptions/listen", json!({"notifications":{}}))).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    proxy.close_stdin();
    assert!(proxy.wait_exit().await.success(), "{}", proxy.stderr_text());
    let listen = up.rec.listen(9).unwrap();
    eventually("the listen stream to be closed by the proxy", || listen.is_closed()).await;
    assert_eq!(up.rec.methods().iter().filter(|m| *m == "initialize").count(), 1);
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_stream_is_relayed_until_it_closes_past_the_request_timeout() {
    let up = Upstream::start(None);
    let pe = ProxyEnv::bare();
    let (mut proxy, _) = proxy(&pe, &up.config("rec", "request_timeout_ms = 1000\n"));

    let listen = stateless(
        10,
        "subscriptions/listen",
        json!({"notifications":{"resourceSubscriptions":["memory://knowledge-graph"]}}),
    );
    let ack = proxy.first_after(listen).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 10);
    let seen = up.rec.headers_of("subscriptions/listen").pop().unwrap();
    assert_eq!(seen.get("mcp-method").map(String::as_str), Some("subscriptions/listen"));
    assert_eq!(seen.get("mcp-protocol-version").map(String::as_str), Some(REVISION));
    assert!(!seen.contains_key("mcp-session-id"));

    // A request started after the listen times out: the request timeout has passed since
    // the listen began, and the stream is still relayed afterwards.
    let slow = proxy.request_message(stateless(11, "tools/call", json!({"name":"slow","arguments":{}}))).await;
    let message = slow["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no answer within"), "{slow}");

    let update = |n: u64| {
        json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{
            "_meta":{"io.modelcontextprotocol/subscriptionId":10},"uri":"memory://knowledge-graph","n":n}})
    };
    for n in 1..=3 {
        up.rec.push(10, Event::default().comment("keep-alive"));
        up.rec.push(10, data(&update(n)));
        assert_eq!(proxy.next_message().await, update(n));
    }
    // A graceful end: the upstream answers the listen and closes the stream.
    let done = json!({"jsonrpc":"2.0","id":10,"result":{"resultType":"complete",
        "_meta":{"io.modelcontextprotocol/subscriptionId":10}}});
    up.rec.push(10, data(&done));
    up.rec.end(10);
    assert_eq!(proxy.next_message().await, done);

    // An abrupt end: the client gets an error for the listen's id.
    let ack = proxy.first_after(stateless(20, "subscriptions/listen", json!({"notifications":{}}))).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    up.rec.end(20);
    let lost = proxy.response(20).await;
    let message = lost["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("closed the response stream before answering"), "{lost}");

    // The client cancels (stdio's notifications/cancelled): the stream is closed, and the
    // notification is not POSTed (the revision has no client notifications over HTTP).
    let ack = proxy.first_after(stateless(30, "subscriptions/listen", json!({"notifications":{}}))).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    proxy.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":30}})).await;
    let listen = up.rec.listen(30).unwrap();
    eventually("the cancelled listen stream to close", || listen.is_closed()).await;
    // Everything the proxy has sent so far has arrived once this answer is back.
    let reply = proxy.request_message(stateless(31, "tools/list", json!({}))).await;
    assert_eq!(reply["result"]["method"], "tools/list");
    assert!(!up.rec.methods().iter().any(|m| m == "notifications/cancelled"), "{:?}", up.rec.methods());
    assert!(!up.rec.methods().iter().any(|m| m == "initialize"));
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_upstream_restarts_the_next_stateless_request_needs_no_handshake() {
    let first = Upstream::start(None);
    let port = first.port;
    let pe = ProxyEnv::bare();
    let (mut proxy, _) = proxy(&pe, &first.config("rec", ""));
    let call = |id| stateless(id, "tools/call", json!({"name":"read_graph","arguments":{}}));

    assert_eq!(proxy.request_message(call(1)).await["result"]["method"], "tools/call");
    first.stop().await;

    // Down: the proxy recovers once (nothing to replay), retries, and reports the failure.
    let down = proxy.request_message(call(2)).await;
    let message = down["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("daemon `rec`"), "{down}");
    proxy.wait_stderr("recovering").await;

    // Back on the same port: the next request succeeds, and the new upstream saw only it.
    let second = Upstream::start(Some(port));
    let reply = proxy.request_message(call(3)).await;
    assert_eq!(reply["result"]["method"], "tools/call", "{reply}\n{}", proxy.stderr_text());
    assert_eq!(second.rec.methods(), ["tools/call"]);
    assert!(!second.rec.posts()[0].headers.contains_key("mcp-session-id"));
    proxy.assert_protocol_only();
}

// ---------------------------------------------------------------------------------------
// The Python SDK 2.x, on both sides of the proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_2026_client_through_the_proxy_to_a_python_sdk_2026_server() {
    let python = e2e::python::python_with("e2e-venv-mcp2", PYTHON_MCP2);
    let pe = ProxyEnv::bare();
    let port = free_port();
    // The proxy starts the server itself (command + port), as it would any local daemon.
    pe.write_config(&format!(
        "[daemons.py2]\ncommand = {python:?}\nargs = [{server:?}, \"--port\", \"{port}\"]\nport = {port}\n\
         startup_timeout_ms = 60000\n",
        python = python.display().to_string(),
        server = fixture("upstreams/mcp2_server.py").display().to_string(),
    ));
    let project = pe.project("p");
    let mut cmd = tokio::process::Command::from(pe.env.command(&python));
    cmd.arg(fixture("upstreams/mcp2_client.py"))
        .args([
            "--call",
            "echo",
            r#"{"text":"héllo"}"#,
            "--call",
            "headers",
            "{}",
            "--listen",
            "memory://x",
            "touch",
            r#"{"uri":"memory://x"}"#,
            "--",
        ])
        .arg(bin("mcp-proxy"))
        .args(["--target", "py2", "--manager-port", &pe.manager_port.to_string()])
        .current_dir(&project)
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE * 2, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish; py2.log:\n{}", log(&pe, "py2")))
        .expect("run the Python client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed: {stderr}\npy2.log:\n{}", log(&pe, "py2"));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(report["protocolVersion"], REVISION, "{report}");
    assert_eq!(report["serverName"], "e2e-upstream-2026");
    assert_eq!(report["tools"], json!(["echo", "headers", "touch"]));
    assert_eq!(
        report["calls"][0],
        json!({"name":"echo","isError":false,"text":"héllo","structured":{"result":"héllo"}})
    );
    let seen: Value = serde_json::from_str(report["calls"][1]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["mcp-protocol-version"], REVISION, "{seen}");
    assert_eq!(seen["mcp-method"], "tools/call", "{seen}");
    assert_eq!(seen["mcp-name"], "headers", "{seen}");
    assert_eq!(seen["mcp-project-path"], project.display().to_string(), "{seen}");
    assert!(seen.get("mcp-session-id").is_none(), "{seen}");
    assert_eq!(report["honored"], json!(["memory://x"]));
    assert_eq!(report["updated"], "memory://x");
    // The proxy logged only with its prefix (stdout was the protocol, or the SDK would have failed).
    for line in stderr.lines().filter(|l| l.starts_with("[mcp-proxy")) {
        assert!(line.starts_with("[mcp-proxy:py2] "), "{line}");
    }
}

fn log(pe: &ProxyEnv, name: &str) -> String {
    std::fs::read_to_string(pe.runtime().join(format!("{name}.log"))).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Our memory-server behind the proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_2026_client_through_the_proxy_to_memory_server() {
    let python = e2e::python::python_with("e2e-venv-mcp2", PYTHON_MCP2);
    let pe = ProxyEnv::new();
    let project = pe.project("p");
    let mut cmd = tokio::process::Command::from(pe.env.command(&python));
    cmd.arg(fixture("upstreams/mcp2_client.py"))
        .args(["--call", "create_entities", r#"{"entities":[{"name":"Ärger","entityType":"t","observations":["o"]}]}"#])
        .args(["--call", "read_graph", "{}"])
        .args(["--listen", "memory://knowledge-graph", "add_observations"])
        .arg(r#"{"observations":[{"entityName":"Ärger","contents":["p"]}]}"#)
        .arg("--")
        .arg(bin("mcp-proxy"))
        .args(["--target", "memory", "--manager-port", &pe.manager_port.to_string()])
        .current_dir(&project)
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE * 2, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish; memory.log:\n{}", pe.log_text()))
        .expect("run the Python client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed: {stderr}\nmemory.log:\n{}", pe.log_text());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(report["protocolVersion"], REVISION, "{report}");
    assert_eq!(report["serverName"], "memory-server");
    assert_eq!(report["tools"].as_array().map(Vec::len), Some(9), "{report}");
    for call in report["calls"].as_array().unwrap() {
        assert_eq!(call["isError"], false, "{call}");
    }
    assert_eq!(e2e::entity_names(&report["calls"][1]["structured"]), ["Ärger"]);
    assert_eq!(report["honored"], json!(["memory://knowledge-graph"]));
    assert_eq!(report["updated"], "memory://knowledge-graph");
    // The project's own database took the write: the project travelled with every request.
    assert!(project.join(".claude").join("memory.db").exists());
    // No session was ever opened.
    assert_eq!(pe.health().await["live_sessions"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_daemon_restart_under_a_stateless_client_needs_no_handshake() {
    let pe = ProxyEnv::new();
    let project = pe.project("p");
    let mut proxy = pe.spawn(&project);
    let create = stateless(
        1,
        "tools/call",
        json!({"name":"create_entities","arguments":{"entities":[{"name":"kept","entityType":"t","observations":[]}]}}),
    );
    let reply = proxy.request_message(create).await;
    assert_eq!(e2e::entity_names(&reply["result"]["structuredContent"]), ["kept"], "{reply}");
    let first = pe.wait_daemon().await;
    common::kill_daemon(first, pe.port).await;

    // The proxy finds the daemon gone, starts a new one and retries: no handshake to replay.
    let read = stateless(2, "tools/call", json!({"name":"read_graph","arguments":{}}));
    let reply = proxy.request_message(read).await;
    let result = reply.get("result").unwrap_or_else(|| panic!("{reply}\n{}", proxy.stderr_text()));
    assert_eq!(e2e::entity_names(&result["structuredContent"]), ["kept"]);
    let second = pe.wait_daemon().await;
    assert_ne!(first, second);
    proxy.wait_stderr("recovering").await;
    assert_eq!(pe.health().await["live_sessions"], 0);
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_mcp_header_parameters_are_mirrored_and_invalid_tools_left_out() {
    let up = Upstream::start(None);
    let pe = ProxyEnv::bare();
    let (mut proxy, _) = proxy(&pe, &up.config("rec", ""));

    let listed = proxy.request_message(stateless(1, "tools/list", json!({}))).await;
    let names: Vec<&str> =
        listed["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["sql", "plain"], "{listed}");
    proxy.wait_stderr("left out tool `bad`").await;

    let params = |seen: &Seen| -> BTreeMap<String, String> {
        seen.headers.iter().filter(|(k, _)| k.starts_with("mcp-param-")).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let call =
        |id, name: &str, arguments: Value| stateless(id, "tools/call", json!({"name":name,"arguments":arguments}));

    let args = json!({"region":"us-west1","opts":{"n":42,"flag":true},"query":"SELECT 1"});
    proxy.request_message(call(2, "sql", args)).await;
    let expected = [("mcp-param-flag", "true"), ("mcp-param-n", "42"), ("mcp-param-region", "us-west1")];
    assert_eq!(params(&up.rec.posts().pop().unwrap()), headers(&expected));

    // Non-ASCII is Base64-wrapped; absent and null values send no header.
    let args = json!({"region":"Hello, 世界","opts":{"n":null},"query":"q"});
    proxy.request_message(call(3, "sql", args)).await;
    let expected = [("mcp-param-region", "=?base64?SGVsbG8sIOS4lueVjA==?=")];
    assert_eq!(params(&up.rec.posts().pop().unwrap()), headers(&expected));

    proxy.request_message(call(4, "plain", json!({"x":"y"}))).await;
    assert_eq!(params(&up.rec.posts().pop().unwrap()), BTreeMap::new());
    proxy.assert_protocol_only();
}
