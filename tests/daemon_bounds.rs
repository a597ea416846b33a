//! One request must not take the daemon down (SPEC 2.4, 2.10): the bodies of an attack run
//! against the real binary. A batch over `--max-batch` gets one error and none of it runs,
//! a full batch streams its replies back, a stdio line over `--max-body-bytes` is skipped
//! unread, JSON nested too deeply is a parse error, and event streams beyond
//! `--max-streams` get 503. Memory is judged by the process's peak RSS (`VmHWM` in
//! `/proc/<pid>/status`), read after the attack; it never depends on speed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::{Daemon, Http, PATIENCE, TestEnv, bin};
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// What the daemon may reach at its peak through all of this; building the attack's
/// replies whole took gigabytes.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// `--max-body-bytes`' default: the attack's bodies are as large as it lets through.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Entities of the graph the attack reads (a `read_graph` answer of about a megabyte).
const ENTITIES: usize = 3000;

/// The peak resident set of process `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM in kB")
}

/// `create_entities` arguments that together make a graph of `ENTITIES` entities with
/// two observations each, a few hundred at a time.
fn graph_chunks() -> Vec<Value> {
    let entities: Vec<Value> = (0..ENTITIES)
        .map(|i| {
            json!({"name": format!("component-{i:05}"), "entityType": "component", "observations": [
                format!("component-{i:05} is owned by team {} and deployed in region {}", i % 17, i % 5),
                format!("component-{i:05} depends on component-{:05} since release {}", (i * 7) % ENTITIES, i % 40),
            ]})
        })
        .collect();
    entities.chunks(500).map(|chunk| json!({ "entities": chunk })).collect()
}

fn read_graph_call(id: usize) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"read_graph","arguments":{}}})
}

/// A JSON array of `message(0)`, `message(1)`, … as long as it stays under `MAX_BODY`;
/// returns the body and how many messages it holds.
fn batch_up_to_max_body(message: impl Fn(usize) -> Value) -> (String, usize) {
    let mut body = String::from("[");
    let mut count = 0;
    loop {
        let next = message(count).to_string();
        // A bounded loop: every round adds at least one byte towards MAX_BODY.
        if body.len() + next.len() + 2 > MAX_BODY {
            break;
        }
        if count > 0 {
            body.push(',');
        }
        body.push_str(&next);
        count += 1;
    }
    body.push(']');
    (body, count)
}

/// A batch of `n` `read_graph` calls, ids 0..n.
fn read_graph_batch(n: usize) -> String {
    Value::Array((0..n).map(read_graph_call).collect()).to_string()
}

/// Checks one JSON-RPC error (`id` null) and returns its message.
#[track_caller]
fn error_message(what: &str, reply: &Value, code: i64) -> String {
    assert_eq!(reply["jsonrpc"], "2.0", "{what}: {reply}");
    assert_eq!(reply["id"], Value::Null, "{what}: {reply}");
    assert_eq!(reply["error"]["code"], code, "{what}: {reply}");
    reply["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no message in {reply}")).to_owned()
}

#[track_caller]
fn assert_names_the_batch_limit(what: &str, reply: &Value, count: usize) {
    let message = error_message(what, reply, -32600);
    assert_eq!(
        message,
        format!("Invalid request: a batch may hold at most 100 messages (--max-batch); this one holds {count}"),
        "{what}"
    );
}

/// Checks that `array` holds one `read_graph` answer for each id 0..n, in order, each
/// the same result as `single` (the answer on its own) byte for byte.
#[track_caller]
fn assert_read_graph_answers(what: &str, array: &[u8], n: usize, single: &Value) {
    let replies: Vec<&RawValue> = serde_json::from_slice(array).unwrap_or_else(|e| panic!("{what}: not an array: {e}"));
    assert_eq!(replies.len(), n, "{what}: one answer per call");
    let result = serde_json::to_string(&single["result"]).unwrap();
    for (i, reply) in replies.iter().enumerate() {
        let reply: Value = serde_json::from_str(reply.get()).unwrap();
        assert_eq!(reply["id"], i, "{what}: in order");
        assert_eq!(serde_json::to_string(&reply["result"]).unwrap(), result, "{what}: answer {i}");
    }
}

/// POSTs `body` on `http`'s session and reads the whole reply as bytes (not parsed, as a
/// hundred graph answers would be large as values).
async fn post_bytes(http: &Http, body: String) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-project-path", e2e::encode_project(http.project.as_deref().expect("a project")));
    if let Some(session) = &http.session {
        req = req.header("mcp-session-id", session);
    }
    let resp = req.body(body).send().await.expect("POST /mcp");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("read the reply").to_vec();
    (status, headers, bytes)
}

// ---------------------------------------------------------------------------------------
// HTTP: the attack's batches, then a full batch

#[tokio::test(flavor = "multi_thread")]
async fn attack_batches_get_one_error_and_a_full_batch_streams_within_bounded_memory() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let mut http = Http::new(daemon.url()).with_project(&env.project("attack"));
    let init = http.initialize("2025-03-26").await;
    assert_eq!(init.body["result"]["protocolVersion"], "2025-03-26", "{}", init.text);
    for chunk in graph_chunks() {
        http.call_tool("create_entities", chunk).await;
    }
    let single = http.post(&read_graph_call(0)).await;
    assert_eq!(single.status, 200);
    eprintln!("one read_graph answer: {} bytes", single.text.len());
    assert!(single.text.len() > 500_000, "a realistic graph answer: {} bytes", single.text.len());

    let (attack, count) = batch_up_to_max_body(read_graph_call);
    assert!(count > 40_000, "{count}");
    let (status, _, reply) = post_bytes(&http, attack).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
    assert_names_the_batch_limit("read_graph attack", &serde_json::from_slice(&reply).unwrap(), count);

    let (attack, count) = batch_up_to_max_body(|id| json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}));
    assert!(count > 80_000, "{count}");
    let (status, _, reply) = post_bytes(&http, attack).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
    assert_names_the_batch_limit("tools/list attack", &serde_json::from_slice(&reply).unwrap(), count);

    // Nothing of a refused batch ran: a batch of creates over the limit leaves no entity.
    let creates = (0..101).map(|i| {
        json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"create_entities",
            "arguments":{"entities":[{"name":format!("refused-{i}"),"entityType":"t","observations":[]}]}}})
    });
    let (status, _, reply) = post_bytes(&http, Value::Array(creates.collect()).to_string()).await;
    assert_eq!(status, 400);
    assert_names_the_batch_limit("101 creates", &serde_json::from_slice(&reply).unwrap(), 101);
    let names = http.call_tool("search_nodes", json!({"query": "refused-"})).await;
    assert_eq!(names["structuredContent"]["entities"], json!([]), "nothing of a refused batch ran");

    // Exactly the limit: all 100 answers come back, as a streamed body.
    let (status, headers, reply) = post_bytes(&http, read_graph_batch(100)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply[..reply.len().min(500)]));
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("content-length").is_none(), "a batch reply is streamed, not built whole: {headers:?}");
    assert_read_graph_answers("a batch of 100", &reply, 100, &single.body);
    let reply_len = reply.len();
    drop(reply);

    // Still serving, and the peak stayed bounded.
    http.call_tool("create_entities", json!({"entities":[{"name":"after","entityType":"t","observations":[]}]})).await;
    let peak = vm_hwm_kib(daemon.child.id());
    eprintln!("daemon VmHWM after the attack and a batch of 100 read_graph ({reply_len} bytes): {peak} KiB");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB reached the bound of {RSS_BOUND_KIB} KiB");
    assert!(peak * 1024 < reply_len as u64 / 2, "the batch reply ({reply_len} bytes) was held whole: {peak} KiB");
}

/// A client that only takes event streams gets the streamed batch as one event.
#[tokio::test]
async fn an_event_stream_batch_reply_is_one_event_holding_the_array() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let http = Http::new(daemon.url());
    let batch = json!([{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},
                       {"jsonrpc":"2.0","id":2,"method":"ping"}]);
    let resp = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-03-26")
        .body(batch.to_string())
        .send()
        .await
        .expect("POST /mcp");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("read the reply");
    let data = text.strip_prefix("event: message\ndata: ").and_then(|t| t.strip_suffix("\n\n"));
    let data = data.unwrap_or_else(|| panic!("one SSE event: {text:?}"));
    let replies: Value = serde_json::from_str(data).unwrap();
    assert_eq!(replies, json!([{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{}}]));
}

// ---------------------------------------------------------------------------------------
// stdio

/// `memory-server stdio` with piped stdin/stdout (stderr dropped), killed and reaped on drop.
struct StdioServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// stdout's lines, read on a thread so that waiting for one is bounded.
    lines: mpsc::Receiver<Vec<u8>>,
}

impl StdioServer {
    fn start(env: &TestEnv, project: &Path, extra: &[&str]) -> StdioServer {
        let mut child = env
            .command(&bin("memory-server"))
            .arg("stdio")
            .arg("--project")
            .arg(project)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start memory-server stdio");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes (at the latest when drop kills it).
        std::thread::spawn(move || {
            loop {
                let mut line = Vec::new();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(n) if n > 0 && tx.send(line).is_ok() => {}
                    _ => return,
                }
            }
        });
        StdioServer { child, stdin, lines }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stdin.as_mut().expect("stdin open").write_all(bytes).expect("write to memory-server stdio");
    }

    fn send(&mut self, message: &Value) {
        self.write(format!("{message}\n").as_bytes());
    }

    /// The next line of stdout as raw bytes (bounded by PATIENCE).
    fn line_bytes(&mut self) -> Vec<u8> {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line from memory-server stdio within {PATIENCE:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("memory-server stdio closed stdout"),
        }
    }

    fn line(&mut self) -> Value {
        let line = self.line_bytes();
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {:?}", String::from_utf8_lossy(&line)))
    }

    fn rpc(&mut self, message: &Value) -> Value {
        self.send(message);
        self.line()
    }

    fn ping(&mut self, id: &str) {
        let reply = self.rpc(&json!({"jsonrpc":"2.0","id":id,"method":"ping"}));
        assert_eq!(reply, json!({"jsonrpc":"2.0","id":id,"result":{}}), "still serving");
    }

    fn initialize(&mut self) {
        let init = self.rpc(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}));
        assert_eq!(init["result"]["protocolVersion"], "2025-03-26", "{init}");
    }

    /// Closes stdin and waits (bounded) for a clean exit.
    fn close_and_wait(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "stdin EOF exits 0, got {status}");
                return;
            }
            assert!(Instant::now() < deadline, "memory-server stdio did not exit at EOF");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StdioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stdio_batches_are_bounded_and_streamed() {
    let env = TestEnv::new();
    let mut stdio = StdioServer::start(&env, &env.project("stdio-attack"), &[]);
    stdio.initialize();
    for (i, chunk) in graph_chunks().into_iter().enumerate() {
        let reply = stdio.rpc(&json!({"jsonrpc":"2.0","id":format!("create-{i}"),"method":"tools/call",
            "params":{"name":"create_entities","arguments":chunk}}));
        assert!(reply["result"]["isError"].is_null(), "{reply}");
    }
    let single = stdio.rpc(&read_graph_call(0));

    let (attack, count) = batch_up_to_max_body(read_graph_call);
    stdio.write(format!("{attack}\n").as_bytes());
    assert_names_the_batch_limit("stdio read_graph attack", &stdio.line(), count);
    stdio.ping("after the read_graph attack");
    let (attack, count) = batch_up_to_max_body(|id| json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}));
    stdio.write(format!("{attack}\n").as_bytes());
    assert_names_the_batch_limit("stdio tools/list attack", &stdio.line(), count);
    stdio.ping("after the tools/list attack");

    // Exactly the limit: one line holding all 100 answers.
    stdio.write(format!("{}\n", read_graph_batch(100)).as_bytes());
    let line = stdio.line_bytes();
    assert_read_graph_answers("a stdio batch of 100", &line, 100, &single);
    let line_len = line.len();
    drop(line);
    stdio.ping("after the batch");

    let peak = vm_hwm_kib(stdio.child.id());
    eprintln!(
        "memory-server stdio VmHWM after the attack and a batch of 100 read_graph ({line_len} bytes): {peak} KiB"
    );
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB reached the bound of {RSS_BOUND_KIB} KiB");
    assert!(peak * 1024 < line_len as u64 / 2, "the batch reply ({line_len} bytes) was held whole: {peak} KiB");
    stdio.close_and_wait();
}

#[test]
fn stdio_lines_over_the_limit_are_refused_without_being_held() {
    const LIMIT: usize = 64 * 1024;
    const LONG: usize = 10 * 1024 * 1024;
    let env = TestEnv::new();
    let mut stdio = StdioServer::start(&env, &env.project("stdio-lines"), &["--max-body-bytes", &LIMIT.to_string()]);
    stdio.initialize();
    let tool = json!({"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"create_entities",
        "arguments":{"entities":[{"name":"kept","entityType":"t","observations":[]}]}}});
    assert!(stdio.rpc(&tool)["result"]["isError"].is_null());
    let before = vm_hwm_kib(stdio.child.id());

    // A 10 MB request line: refused, and the next line is served.
    let pad = "x".repeat(LONG);
    stdio.write(format!(r#"{{"jsonrpc":"2.0","id":"long","method":"ping","params":{{"pad":"{pad}"}}}}"#).as_bytes());
    stdio.write(b"\n");
    let message = error_message("a 10 MB line", &stdio.line(), -32600);
    assert!(message.contains(&format!("at most {LIMIT} bytes (--max-body-bytes)")), "{message}");
    stdio.ping("after the long line");

    // Not UTF-8: a parse error, and the next line is served.
    stdio.write(b"\xff\xfe\n");
    let message = error_message("a line that is not UTF-8", &stdio.line(), -32700);
    assert!(message.contains("UTF-8"), "{message}");
    stdio.ping("after a line that is not UTF-8");

    // A line exactly at the limit is served.
    let head = r#"{"jsonrpc":"2.0","id":"edge","method":"ping","params":{"pad":""#;
    let tail = r#""}}"#;
    let edge = format!("{head}{}{tail}", "y".repeat(LIMIT - head.len() - tail.len()));
    assert_eq!(edge.len(), LIMIT);
    stdio.write(format!("{edge}\n").as_bytes());
    assert_eq!(stdio.line()["result"], json!({}), "a line of exactly --max-body-bytes is served");

    // A long line that never ends: refused, then EOF ends the process cleanly.
    stdio.write(pad.as_bytes());
    let message = error_message("a line without a newline", &stdio.line(), -32600);
    assert!(message.contains("--max-body-bytes"), "{message}");
    let after = vm_hwm_kib(stdio.child.id());
    eprintln!("memory-server stdio VmHWM: {before} KiB before two 10 MB lines, {after} KiB after");
    assert!(
        after < before + 5 * 1024,
        "a refused line was held: VmHWM grew from {before} KiB to {after} KiB for a {LONG}-byte line"
    );
    stdio.close_and_wait();
}

// ---------------------------------------------------------------------------------------
// Nesting deeper than serde_json's recursion limit

/// Unterminated, balanced, and nested inside a message: each is a parse error.
fn deep_bodies() -> Vec<(&'static str, String)> {
    const DEPTH: usize = 100_000;
    vec![
        ("100,000 [", "[".repeat(DEPTH)),
        ("a balanced array 100,000 deep", format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH))),
        (
            "a message with deep params",
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"a":{}1{}}}}}"#,
                "[".repeat(DEPTH),
                "]".repeat(DEPTH)
            ),
        ),
        (
            "a batch with a deep message",
            format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"ping"}},{}]"#, "{\"a\":".repeat(DEPTH)),
        ),
    ]
}

#[tokio::test]
async fn deeply_nested_json_is_a_parse_error_over_http() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let http = Http::new(daemon.url());
    for (what, body) in deep_bodies() {
        let reply = http.post_raw(body, &[("mcp-protocol-version", "2025-03-26")]).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        error_message(what, &reply.body, -32700);
        let ping = http.post(&json!({"jsonrpc":"2.0","id":"p","method":"ping"})).await;
        assert_eq!(ping.body["result"], json!({}), "{what}: still serving");
    }
}

#[test]
fn deeply_nested_json_is_a_parse_error_over_stdio() {
    let env = TestEnv::new();
    let mut stdio = StdioServer::start(&env, &env.project("stdio-deep"), &[]);
    stdio.initialize();
    for (what, body) in deep_bodies() {
        stdio.write(format!("{body}\n").as_bytes());
        error_message(what, &stdio.line(), -32700);
        stdio.ping(what);
    }
    stdio.close_and_wait();
}

// ---------------------------------------------------------------------------------------
// Event streams

/// Opens a session's `GET /mcp` stream; the response (headers read, body pending) is the
/// open stream.
async fn open_get_stream(http: &Http) -> reqwest::Response {
    let session = http.session.as_deref().expect("a session");
    let req = http.client.get(&http.url).header("accept", "text/event-stream").header("mcp-session-id", session);
    req.send().await.expect("GET /mcp")
}

/// Opens a `subscriptions/listen` stream of revision 2026-07-28.
async fn open_listen_stream(http: &Http, id: &str) -> reqwest::Response {
    let message = json!({"jsonrpc":"2.0","id":id,"method":"subscriptions/listen","params":{"notifications":{},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let req = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen");
    req.body(message.to_string()).send().await.expect("POST subscriptions/listen")
}

#[track_caller]
fn assert_open(what: &str, resp: &reqwest::Response) {
    assert_eq!(resp.status(), 200, "{what}");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"), "{what}");
}

async fn assert_refused(what: &str, resp: reqwest::Response, id: Value) {
    assert_eq!(resp.status(), 503, "{what}");
    let body: Value = resp.json().await.expect("a JSON-RPC error body");
    assert_eq!(body["id"], id, "{what}: {body}");
    assert_eq!(body["error"]["message"], "too many open event streams: at most 2 (--max-streams)", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_beyond_the_limit_get_503_until_one_closes() {
    let env = TestEnv::new();
    // Keep-alives every 100 ms let the daemon notice a client that went away.
    let daemon = Daemon::start(&env, &["--max-streams", "2", "--keep-alive-ms", "100"]);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut http = Http::new(daemon.url());
        http.initialize("2025-11-25").await;
        sessions.push(http);
    }

    let first = open_get_stream(&sessions[0]).await;
    assert_open("the first GET stream", &first);
    let listen = open_listen_stream(&sessions[0], "listen-1").await;
    assert_open("a listen stream", &listen);
    let h = daemon.health().await;
    assert_eq!((h["event_streams"].as_u64(), h["listen_streams"].as_u64()), (Some(2), Some(1)), "{h}");

    assert_refused("a third stream (GET)", open_get_stream(&sessions[1]).await, Value::Null).await;
    assert_refused("a third stream (listen)", open_listen_stream(&sessions[1], "listen-2").await, json!("listen-2"))
        .await;
    assert_eq!(daemon.health().await["event_streams"], 2, "a refusal takes no place");

    // The client closing its stream frees the place.
    drop(first);
    daemon.wait_health("event_streams", 1).await;
    let second = open_get_stream(&sessions[1]).await;
    assert_open("a GET stream after one closed", &second);

    // So does ending the session that owns a stream.
    let deleted = sessions[1]
        .client
        .delete(&sessions[1].url)
        .header("mcp-session-id", sessions[1].session.as_deref().unwrap())
        .send()
        .await
        .expect("DELETE /mcp");
    assert_eq!(deleted.status(), 200);
    daemon.wait_health("event_streams", 1).await;
    let third = open_get_stream(&sessions[2]).await;
    assert_open("a GET stream after a session ended", &third);

    drop(listen);
    daemon.wait_health("event_streams", 1).await;
    assert_eq!(daemon.health().await["listen_streams"], 0);
    drop((second, third));
    daemon.wait_health("event_streams", 0).await;
}
