//! The stateless MCP revision 2026-07-28 served beside the session-based ones on the
//! same `/mcp` (SPEC 2.9): the official Python SDK (`mcp` 2.3.0, whose client speaks
//! 2026-07-28) with no handshake and no session; session clients of 2025-11-25 and
//! 2024-11-05 on the same daemon at the same time; `subscriptions/listen` (in-process,
//! session and cross-process writes, project isolation, keep-alives, closing frees it);
//! the revision's header validation and error mapping; `memory-server stdio`.
//!
//! The Python SDK is installed once per target directory into its own venv
//! (`target/tmp/e2e-venv-mcp2`), shared through a file lock. If pip cannot install it,
//! the test fails and says why.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use e2e::{Daemon, Http, PATIENCE, TestEnv, entity_names, fixture};
use futures_util::StreamExt;
use serde_json::{Value, json};

const PYTHON_MCP: &str = "mcp==2.3.0";
const V: &str = "2026-07-28";
const META: &str = "io.modelcontextprotocol/protocolVersion";
const SUB_ID: &str = "io.modelcontextprotocol/subscriptionId";
const GRAPH: &str = "memory://knowledge-graph";

// ---------------------------------------------------------------------------------------
// The Python SDK's venv

fn venv_python() -> PathBuf {
    e2e::python::python_with("e2e-venv-mcp2", PYTHON_MCP)
}

// ---------------------------------------------------------------------------------------
// A raw client of the stateless revision

fn meta() -> Value {
    json!({ META: V, "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {} })
}

fn request(id: Value, method: &str, mut params: Value) -> Value {
    params["_meta"] = meta();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The headers a conforming client mirrors from the body.
fn mirrored(message: &Value) -> Vec<(String, String)> {
    let method = message["method"].as_str().unwrap().to_owned();
    let mut h = vec![("mcp-protocol-version".to_owned(), V.to_owned()), ("mcp-method".to_owned(), method.clone())];
    let name = match method.as_str() {
        "tools/call" => message["params"]["name"].as_str(),
        "resources/read" => message["params"]["uri"].as_str(),
        _ => None,
    };
    if let Some(name) = name {
        h.push(("mcp-name".to_owned(), name.to_owned()));
    }
    h
}

async fn send(http: &Http, message: &Value, headers: &[(String, String)]) -> e2e::Reply {
    let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http.post_raw(message.to_string(), &extra).await
}

/// A conforming stateless request; returns the result (panics on anything else).
async fn stateless(http: &Http, method: &str, params: Value) -> Value {
    let message = request(json!(7), method, params);
    let reply = send(http, &message, &mirrored(&message)).await;
    assert_eq!(reply.status, 200, "{method}: {}", reply.text);
    assert!(reply.headers.get("mcp-session-id").is_none(), "{method}: a stateless request got a session");
    let result = reply.body["result"].clone();
    assert_eq!(result["resultType"], "complete", "{method}: {}", reply.text);
    assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "memory-server", "{}", reply.text);
    result
}

async fn stateless_tool(http: &Http, name: &str, arguments: Value) -> Value {
    stateless(http, "tools/call", json!({"name": name, "arguments": arguments})).await
}

fn entities(names: &[&str]) -> Value {
    json!({ "entities": names.iter().map(|n| json!({"name": n, "entityType": "test", "observations": []})).collect::<Vec<_>>() })
}

// ---------------------------------------------------------------------------------------
// An SSE reader for `subscriptions/listen`

#[derive(Debug)]
enum Sse {
    Comment,
    Message(Value),
}

struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl SseReader {
    async fn open(http: &Http, id: &str, project: &Path, filter: Value) -> SseReader {
        let message = request(json!(id), "subscriptions/listen", json!({ "notifications": filter }));
        let mut req = http
            .client
            .post(&http.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-project-path", e2e::encode_project(project));
        for (k, v) in mirrored(&message) {
            req = req.header(k, v);
        }
        let resp = req.body(message.to_string()).send().await.expect("POST subscriptions/listen");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        assert!(resp.headers().get("mcp-session-id").is_none());
        SseReader { stream: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(), buf: String::new() }
    }

    /// The next event or comment (bounded by PATIENCE).
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                if data.is_empty() {
                    if block.lines().any(|l| l.starts_with(':')) {
                        return Sse::Comment;
                    }
                    continue;
                }
                return Sse::Message(serde_json::from_str(&data.join("\n")).expect("SSE data is JSON"));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("the listen stream stayed silent past PATIENCE (no keep-alive either)")
                .expect("the listen stream ended")
                .expect("reading the listen stream");
            self.buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next message, skipping keep-alive comments.
    async fn message(&mut self) -> Value {
        loop {
            if let Sse::Message(m) = self.next().await {
                return m;
            }
        }
    }

    /// Reads until `n` keep-alive comments arrived and asserts no message came with them.
    async fn quiet_for(&mut self, n: usize, what: &str) {
        for _ in 0..n {
            match self.next().await {
                Sse::Comment => {}
                Sse::Message(m) => panic!("{what}: expected only keep-alives, got {m}"),
            }
        }
    }
}

#[track_caller]
fn assert_updated(message: &Value, id: &str, what: &str) {
    assert_eq!(message["method"], "notifications/resources/updated", "{what}: {message}");
    assert_eq!(message["params"]["uri"], GRAPH, "{what}: {message}");
    assert_eq!(message["params"]["_meta"][SUB_ID], id, "{what}: {message}");
}

// ---------------------------------------------------------------------------------------
// (1) + (2): the Python SDK statelessly, equal to a 2025-11-25 session; both generations at once

fn calls() -> Value {
    json!([
        ["create_entities", {"entities": [
            {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
            {"name": "Engine", "entityType": "machine", "observations": []}]}],
        ["create_relations", {"relations": [{"from": "Ada", "to": "Engine", "relationType": "programmed"}]}],
        ["add_observations", {"observations": [{"entityName": "Ada", "contents": ["born 1815", "Zürich ß"]}]}],
        ["add_observations", {"observations": [{"entityName": "Nobody", "contents": ["x"]}]}],
        ["search_nodes", {"query": "ada"}],
        ["open_nodes", {"names": ["Engine", "Ada"]}],
        ["read_graph", {}],
        ["delete_observations", {"deletions": [{"entityName": "Ada", "observations": ["born 1815"]}]}],
        ["delete_relations", {"relations": [{"from": "Ada", "to": "Engine", "relationType": "programmed"}]}],
        ["delete_entities", {"entityNames": ["Engine"]}],
        ["read_graph", {}],
    ])
}

/// What both generations must agree on: the text, the structured content, isError.
fn comparable(result: &Value) -> Value {
    json!({
        "content": result["content"],
        "structuredContent": result.get("structuredContent").cloned().unwrap_or(Value::Null),
        "isError": result.get("isError").cloned().unwrap_or(json!(false)),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_stateless_client_equals_a_session_client() {
    let python = venv_python();
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let py_project = env.project("py-stateless");
    let session_project = env.project("session-2025");

    let out = {
        let python = python.clone();
        let url = daemon.url();
        let project = py_project.clone();
        let calls = calls().to_string();
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(fixture("stateless/sdk_client.py"))
                .arg(url)
                .arg(&project)
                .arg(calls)
                .output()
                .expect("run the Python SDK client")
        })
        .await
        .unwrap()
    };
    assert!(out.status.success(), "Python SDK client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).expect("client output is JSON");

    assert_eq!(py["protocol_version"], V, "the SDK did not settle on 2026-07-28: {py}");
    let discover = &py["discover"];
    assert_eq!(discover["supportedVersions"][0], V, "{discover}");
    assert!(discover["supportedVersions"].as_array().unwrap().contains(&json!("2025-11-25")));
    assert_eq!(discover["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "memory-server");
    assert!(discover["capabilities"]["tools"].is_object() && discover["capabilities"]["resources"].is_object());
    assert!(discover["ttlMs"].is_u64() && discover["cacheScope"] == "public", "{discover}");
    let tools: Vec<&str> = py["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tools.len(), 9, "{tools:?}");
    // No handshake means no session was ever created.
    assert_eq!(daemon.health().await["live_sessions"], 0, "the stateless client created a session");

    // The same calls from a 2025-11-25 session client, on a fresh project.
    let mut session = Http::new(daemon.url()).with_project(&session_project);
    assert_eq!(session.initialize("2025-11-25").await.status, 200);
    let listed = session.post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await.body;
    let session_tools: Vec<&str> =
        listed["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(tools, session_tools);
    let py_calls = py["calls"].as_array().unwrap();
    for (i, call) in calls().as_array().unwrap().iter().enumerate() {
        let name = call[0].as_str().unwrap();
        let expected = session.call_tool(name, call[1].clone()).await;
        assert_eq!(py_calls[i]["resultType"], "complete");
        assert_eq!(comparable(&py_calls[i]), comparable(&expected), "call {i} ({name}) differs between generations");
    }
    assert_eq!(py_calls[3]["isError"], true, "the error case must be an error in both");
    // resources/read too (the text is the whole graph).
    let read =
        session.post(&json!({"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":GRAPH}})).await.body;
    assert_eq!(py["graph"]["contents"], read["result"]["contents"]);
    assert_eq!(py["graph"]["cacheScope"], "private");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_generations_share_one_daemon_at_the_same_time() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("shared");
    let mut s2025 = Http::new(daemon.url()).with_project(&project);
    let mut s2024 = Http::new(daemon.url()).with_project(&project);
    let modern = Http::new(daemon.url()).with_project(&project);
    let init = s2025.initialize("2025-11-25").await;
    assert_eq!(init.body["result"]["protocolVersion"], "2025-11-25");
    let init = s2024.initialize("2024-11-05").await;
    assert_eq!(init.body["result"]["protocolVersion"], "2024-11-05");
    assert!(s2025.session.is_some() && s2024.session.is_some());

    // Interleaved, concurrently: each generation writes its own entities.
    let write = |http: Http, prefix: &'static str, stateless_client: bool| async move {
        for i in 0..10 {
            let name = format!("{prefix}-{i}");
            let result = if stateless_client {
                stateless_tool(&http, "create_entities", entities(&[&name])).await
            } else {
                http.call_tool("create_entities", entities(&[&name])).await
            };
            assert_eq!(result["structuredContent"]["entities"][0]["name"], name.as_str(), "{result}");
        }
    };
    tokio::join!(
        write(s2025.clone(), "s2025", false),
        write(s2024.clone(), "s2024", false),
        write(modern.clone(), "modern", true)
    );

    // Everyone sees everyone's writes; the sessions still work; ping is legacy-only.
    let graph = stateless_tool(&modern, "read_graph", json!({})).await["structuredContent"].clone();
    assert_eq!(entity_names(&graph).len(), 30, "{graph}");
    assert_eq!(entity_names(&s2024.read_graph().await).len(), 30);
    assert_eq!(entity_names(&s2025.read_graph().await).len(), 30);
    let pong = s2025.post(&json!({"jsonrpc":"2.0","id":"p","method":"ping"})).await;
    assert_eq!(pong.body["result"], json!({}), "{}", pong.text);
    assert!(pong.body["result"].get("resultType").is_none(), "session results are not decorated");
    assert_eq!(daemon.health().await["live_sessions"], 2);
}

// ---------------------------------------------------------------------------------------
// (3): subscriptions/listen

#[tokio::test(flavor = "multi_thread")]
async fn listen_streams_updates_of_its_project_only() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--keep-alive-ms", "100"]);
    let project_a = env.project("listen-a");
    let project_b = env.project("listen-b");
    let http = Http::new(daemon.url());
    let a = http.clone().with_project(&project_a);
    let b = http.clone().with_project(&project_b);

    let mut listen_a = SseReader::open(
        &http,
        "listen-a",
        &project_a,
        json!({"resourceSubscriptions": [GRAPH], "toolsListChanged": true}),
    )
    .await;
    let ack = listen_a.message().await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(ack["params"]["_meta"][SUB_ID], "listen-a", "{ack}");
    // Only what we honour: the graph resource, no tool-list changes (the catalog is fixed).
    assert_eq!(ack["params"]["notifications"], json!({"resourceSubscriptions": [GRAPH]}), "{ack}");
    let mut listen_b = SseReader::open(&http, "listen-b", &project_b, json!({"resourceSubscriptions": [GRAPH]})).await;
    assert_eq!(listen_b.message().await["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(daemon.health().await["listen_streams"], 2);

    // A quiet stream carries keep-alives.
    listen_a.quiet_for(2, "quiet stream").await;

    // A write to B reaches B's listener, and A's stream stays quiet: keep-alives that
    // follow the write are only sent while no notification is queued before them.
    stateless_tool(&b, "create_entities", entities(&["b1"])).await;
    assert_updated(&listen_b.message().await, "listen-b", "write to B");
    listen_a.quiet_for(3, "after a write to project B").await;

    // A stateless write to A.
    stateless_tool(&a, "create_entities", entities(&["a1"])).await;
    assert_updated(&listen_a.message().await, "listen-a", "stateless write to A");

    // A session client's write to A.
    let mut session = Http::new(daemon.url()).with_project(&project_a);
    session.initialize("2025-11-25").await;
    session.call_tool("create_entities", entities(&["a2"])).await;
    assert_updated(&listen_a.message().await, "listen-a", "session write to A");

    // Another daemon process on the same DB file (same HOME, so the same project DB):
    // detected by polling SQLite's PRAGMA data_version.
    let other = Daemon::start(&env, &[]);
    let other_a = Http::new(other.url()).with_project(&project_a);
    other_a.call_tool("create_entities", entities(&["a3"])).await;
    assert_updated(&listen_a.message().await, "listen-a", "write to A by another daemon process");
    let names = entity_names(&a.read_graph().await);
    assert_eq!(names, ["a1", "a2", "a3"]);
    // Project B's listener saw none of A's writes.
    listen_b.quiet_for(3, "B after writes to A").await;

    // Closing a stream frees its subscription.
    drop(listen_a);
    daemon.wait_health("listen_streams", 1).await;
    drop(listen_b);
    daemon.wait_health("listen_streams", 0).await;
    // And the daemon serves on.
    stateless_tool(&a, "read_graph", json!({})).await;
}

// ---------------------------------------------------------------------------------------
// (4): validation per the revision

#[tokio::test(flavor = "multi_thread")]
async fn stateless_validation_errors() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("validation");
    let http = Http::new(daemon.url()).with_project(&project);
    let call = request(json!(1), "tools/call", json!({"name": "read_graph", "arguments": {}}));
    let good = mirrored(&call);
    let without = |skip: &str| good.iter().filter(|(k, _)| k != skip).cloned().collect::<Vec<_>>();
    let replacing = |key: &str, value: &str| {
        good.iter().map(|(k, v)| (k.clone(), if k == key { value.to_owned() } else { v.clone() })).collect::<Vec<_>>()
    };
    let check = |status: u16, code: i64, reply: &e2e::Reply, what: &str| {
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        assert_eq!(reply.body["error"]["code"], code, "{what}: {}", reply.text);
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    };
    let serving = |what: &'static str| {
        let http = http.clone();
        async move {
            let result = stateless_tool(&http, "create_entities", entities(&[what])).await;
            assert_eq!(result["structuredContent"]["entities"][0]["name"], what);
        }
    };

    // Missing required headers.
    for header in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        let reply = send(&http, &call, &without(header)).await;
        check(400, -32020, &reply, &format!("without {header}"));
        assert_eq!(reply.body["id"], 1);
    }
    serving("after-missing-headers").await;

    // Header/body mismatches.
    for (key, value) in
        [("mcp-method", "tools/list"), ("mcp-name", "create_entities"), ("mcp-protocol-version", "2025-11-25")]
    {
        let reply = send(&http, &call, &replacing(key, value)).await;
        check(400, -32020, &reply, &format!("{key}: {value}"));
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("does not match"), "{}", reply.text);
    }
    // The header names the revision but the body carries no _meta (or lacks a required
    // field of it): invalid params, 400.
    let bare = json!({"jsonrpc":"2.0","id":3,"method":"tools/list"});
    check(400, -32602, &send(&http, &bare, &mirrored(&bare)).await, "no _meta");
    let mut no_caps = request(json!(3), "tools/list", json!({}));
    no_caps["params"]["_meta"].as_object_mut().unwrap().remove("io.modelcontextprotocol/clientCapabilities");
    check(400, -32602, &send(&http, &no_caps, &mirrored(&no_caps)).await, "no clientCapabilities");
    // A Base64-encoded Mcp-Name is decoded before the comparison.
    let encoded = replacing("mcp-name", "=?base64?cmVhZF9ncmFwaA==?=");
    assert_eq!(send(&http, &call, &encoded).await.status, 200);
    serving("after-mismatches").await;

    // Unsupported version: 400, -32022, the supported versions in data.
    let mut old = call.clone();
    old["params"]["_meta"][META] = json!("1900-01-01");
    let reply = send(&http, &old, &replacing("mcp-protocol-version", "1900-01-01")).await;
    check(400, -32022, &reply, "unsupported version");
    let supported = &reply.body["error"]["data"]["supported"];
    assert_eq!(supported[0], V, "{}", reply.text);
    assert!(supported.as_array().unwrap().contains(&json!("2024-11-05")), "{}", reply.text);
    assert_eq!(reply.body["error"]["data"]["requested"], "1900-01-01");
    serving("after-unsupported-version").await;

    // Unknown methods (and methods this revision removed) are 404 with -32601.
    for method in ["no/such", "ping", "logging/setLevel", "initialize", "resources/subscribe"] {
        let m = request(json!(4), method, json!({}));
        check(404, -32601, &send(&http, &m, &mirrored(&m)).await, method);
    }
    serving("after-unknown-methods").await;

    // Resource not found is invalid params in this revision; a session still gets -32002.
    let read = request(json!(5), "resources/read", json!({"uri": "memory://nope"}));
    let reply = send(&http, &read, &mirrored(&read)).await;
    check(200, -32602, &reply, "unknown resource");
    // A stateless request ignores a session id and never gets one.
    let mut with_session = good.clone();
    with_session.push(("mcp-session-id".to_owned(), "not-a-session".to_owned()));
    let reply = send(&http, &call, &with_session).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers.get("mcp-session-id").is_none());
    // The session-based path is unchanged: an unknown MCP-Protocol-Version without _meta
    // is still its 400 -32600.
    let legacy = json!({"jsonrpc":"2.0","id":6,"method":"tools/list"});
    let reply = http.post_raw(legacy.to_string(), &[("mcp-protocol-version", "1900-01-01")]).await;
    check(400, -32600, &reply, "legacy unsupported header");
    serving("at-the-end").await;
    assert_eq!(daemon.health().await["live_sessions"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_reply_carries_the_result_and_lists_are_cacheable() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("sse");
    let http = Http::new(daemon.url()).with_project(&project);
    for (method, scope) in
        [("tools/list", "public"), ("resources/list", "public"), ("resources/templates/list", "public")]
    {
        let result = stateless(&http, method, json!({})).await;
        assert_eq!(result["cacheScope"], scope, "{method}: {result}");
        assert!(result["ttlMs"].is_u64(), "{method}: {result}");
    }
    let read = stateless(&http, "resources/read", json!({"uri": GRAPH})).await;
    assert_eq!((read["ttlMs"].as_u64(), read["cacheScope"].as_str()), (Some(0), Some("private")));

    // A client that accepts only an event stream gets the result as one SSE event.
    let call = request(json!("sse-1"), "tools/call", json!({"name": "create_entities", "arguments": entities(&["s"])}));
    let mut req = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("mcp-project-path", e2e::encode_project(&project));
    for (k, v) in mirrored(&call) {
        req = req.header(k, v);
    }
    let resp = req.body(call.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = tokio::time::timeout(PATIENCE, resp.text()).await.expect("the SSE reply ends").unwrap();
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).expect("a data line");
    let message: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(message["id"], "sse-1");
    assert_eq!(message["result"]["structuredContent"]["entities"][0]["name"], "s");
    // It was served in the request's project.
    assert_eq!(entity_names(&http.read_graph().await), ["s"]);
}

/// Closing a request's SSE response cancels it: a write held up by another process's
/// lock on the project DB is not committed after its client went away.
#[tokio::test(flavor = "multi_thread")]
async fn closing_an_sse_response_cancels_the_request() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--keep-alive-ms", "100"]);
    let project = env.project("cancel");
    let http = Http::new(daemon.url()).with_project(&project);
    stateless_tool(&http, "create_entities", entities(&["before"])).await;

    // Another process holds the write lock.
    let db = project.join(".claude").join("memory.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let call =
        request(json!("c"), "tools/call", json!({"name": "create_entities", "arguments": entities(&["cancelled"])}));
    let mut req = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("mcp-project-path", e2e::encode_project(&project));
    for (k, v) in mirrored(&call) {
        req = req.header(k, v);
    }
    let resp = req.body(call.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp); // the client goes away while the write waits for the lock

    // The daemon notices at its next keep-alive and cancels the request.
    let deadline = Instant::now() + PATIENCE;
    while !daemon.log_text().contains("request cancelled") {
        assert!(Instant::now() < deadline, "the daemon never cancelled the request:\n{}", daemon.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    // Depending on how far the cancelled request had got, it was aborted before its write
    // began, or its write gives up at the cancellation check ("write cancelled before
    // commit"); either way it never commits, even when it reaches the writer after this one.
    stateless_tool(&http, "create_entities", entities(&["after"])).await;
    assert_eq!(entity_names(&http.read_graph().await), ["before", "after"]);
}

// ---------------------------------------------------------------------------------------
// (5): stdio

#[test]
fn stdio_answers_discover_and_per_request_versions() {
    let env = TestEnv::new();
    let project = env.project("stdio");
    let mut child = env.memory_server_stdio(&project);
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).expect("stdout is JSON lines")).is_err() {
                return;
            }
        }
    });
    let mut send = move |m: Value| writeln!(stdin, "{m}").expect("write to stdin");
    let recv = || rx.recv_timeout(PATIENCE).expect("an answer on stdout");

    send(request(json!(1), "server/discover", json!({})));
    let discover = recv();
    assert_eq!(discover["id"], 1, "{discover}");
    assert_eq!(discover["result"]["supportedVersions"][0], V, "{discover}");
    assert_eq!(discover["result"]["resultType"], "complete");

    send(request(json!(2), "tools/call", json!({"name": "create_entities", "arguments": entities(&["x"])})));
    let created = recv();
    assert_eq!(created["result"]["structuredContent"]["entities"][0]["name"], "x", "{created}");
    assert_eq!(created["result"]["resultType"], "complete");

    let mut old = request(json!(3), "tools/list", json!({}));
    old["params"]["_meta"][META] = json!("1900-01-01");
    send(old);
    let err = recv();
    assert_eq!(err["error"]["code"], -32022, "{err}");
    assert_eq!(err["error"]["data"]["supported"][0], V);

    send(request(json!(4), "ping", json!({})));
    assert_eq!(recv()["error"]["code"], -32601);

    // subscriptions/listen on stdio: the ack, then an update tagged with its id.
    send(request(json!("sub"), "subscriptions/listen", json!({"notifications": {"resourceSubscriptions": [GRAPH]}})));
    let ack = recv();
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(ack["params"]["_meta"][SUB_ID], "sub");
    send(request(json!(5), "tools/call", json!({"name": "create_entities", "arguments": entities(&["y"])})));
    let mut got = vec![recv(), recv()];
    got.sort_by_key(|m| m.get("id").is_some());
    assert_eq!(got[0]["method"], "notifications/resources/updated", "{got:?}");
    assert_eq!(got[0]["params"]["_meta"][SUB_ID], "sub");
    assert_eq!(got[1]["id"], 5);

    // notifications/cancelled ends the subscription; a new one gets the next update.
    send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"sub"}}));
    send(request(json!("sub2"), "subscriptions/listen", json!({"notifications": {"resourceSubscriptions": [GRAPH]}})));
    assert_eq!(recv()["params"]["_meta"][SUB_ID], "sub2");
    send(request(json!(8), "tools/call", json!({"name": "create_entities", "arguments": entities(&["z"])})));
    let (mut reply, mut update) = (false, false);
    while !(reply && update) {
        let m = recv();
        assert_ne!(m["params"]["_meta"][SUB_ID], "sub", "a cancelled subscription still notifies: {m}");
        reply |= m["id"] == 8;
        update |= m["params"]["_meta"][SUB_ID] == "sub2";
    }

    // The same process still serves a session-era client.
    send(json!({"jsonrpc":"2.0","id":6,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}));
    assert_eq!(recv()["result"]["protocolVersion"], "2025-11-25");
    send(json!({"jsonrpc":"2.0","id":7,"method":"ping"}));
    assert_eq!(recv()["result"], json!({}));

    drop(send);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memory-server stdio did not exit at EOF");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// (7): the official conformance suite's 2026-07-28 server scenarios

const CONFORMANCE: &str = "@modelcontextprotocol/conformance";
/// The first release line with 2026-07-28 scenarios (the stable 0.1.x has none).
const CONFORMANCE_VERSION: &str = "0.2.0-alpha.12";

/// The scenarios that apply to a memory server (the others exercise the suite's own
/// fixture tools, prompts, sampling or elicitation, which a drop-in memory server has not).
const SCENARIOS: &[&str] = &[
    "server-stateless",
    "http-header-validation",
    "caching",
    "tools-list",
    "sep-2164-resource-not-found",
    "dns-rebinding-protection",
];

/// Checks that cannot pass here, with why: everything else must be SUCCESS (or a SKIPPED
/// / INFO the suite itself decides on).
const NOT_APPLICABLE: &[(&str, &str)] =
    &[("sep-2549-prompts-list-caching-hints", "no prompts (none advertised in server/discover)")];

/// The suite's CLI imports `fs.globSync` (Node 22) for its client-side commands only; on
/// an older Node the import alone fails, so a copy without it (calling it throws) is run.
fn conformance_cli(dir: &Path) -> PathBuf {
    let original = dir.join("dist").join("index.js");
    let node_major: u32 = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()))
        .expect("node --version");
    if node_major >= 22 {
        return original;
    }
    let text = std::fs::read_to_string(&original).expect("read the conformance CLI");
    let patched = text.replacen("existsSync as i,globSync as a,", "existsSync as i,", 1);
    assert_ne!(patched, text, "the conformance CLI no longer imports globSync as expected; update this shim");
    let shim = "const a=()=>{throw new Error(\"fs.globSync needs Node 22\")};";
    let path = dir.join("dist").join("index.node20.js");
    let body = match patched.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => format!("{first}\n{shim}{rest}"),
        _ => format!("{shim}{patched}"),
    };
    std::fs::write(&path, body).expect("write the Node 20 copy of the CLI");
    path
}

#[test]
fn official_conformance_suite_2026_07_28_server_scenarios() {
    let dir = e2e::node::npm_package(CONFORMANCE, CONFORMANCE_VERSION);
    let cli = conformance_cli(&dir);
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let out = Command::new(e2e::node::node())
            .arg(&cli)
            .args(["server", "--url", &daemon.url(), "--scenario", scenario, "--spec-version", V, "--verbose"])
            .current_dir(env.dir.path())
            .output()
            .expect("run the conformance suite");
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find("\n[").map(|i| i + 1).unwrap_or_else(|| {
            panic!("{scenario}: no JSON results in the output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
        });
        let checks: Value = serde_json::Deserializer::from_str(&text[start..])
            .into_iter::<Value>()
            .next()
            .expect("a JSON array of checks")
            .expect("valid JSON checks");
        let checks = checks.as_array().expect("checks array");
        assert!(!checks.is_empty(), "{scenario}: no checks ran");
        for check in checks {
            let id = check["id"].as_str().unwrap_or_default();
            let status = check["status"].as_str().unwrap_or_default();
            let untestable = check["details"]["untestable"] == true;
            let excused = NOT_APPLICABLE.iter().any(|(n, _)| *n == id);
            if !matches!(status, "SUCCESS" | "SKIPPED" | "INFO") && !untestable && !excused {
                failures.push(format!("{scenario}/{id}: {status}: {}", check["errorMessage"]));
            }
        }
    }
    assert!(failures.is_empty(), "conformance checks failed:\n{}", failures.join("\n"));
}

/// SIGTERM ends an open listen stream gracefully: the subscription's closing response
/// (tagged with its id) comes before the stream ends, and the daemon exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_listen_streams_with_a_response() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env, &["--keep-alive-ms", "100"]);
    let project = env.project("shutdown");
    let http = Http::new(daemon.url());
    let mut listen = SseReader::open(&http, "bye", &project, json!({"resourceSubscriptions": [GRAPH]})).await;
    assert_eq!(listen.message().await["method"], "notifications/subscriptions/acknowledged");
    daemon.signal(libc::SIGTERM);
    let closing = listen.message().await;
    assert_eq!(closing["id"], "bye", "{closing}");
    assert_eq!(closing["result"]["resultType"], "complete", "{closing}");
    assert_eq!(closing["result"]["_meta"][SUB_ID], "bye", "{closing}");
    let status = tokio::task::block_in_place(|| daemon.wait_exit(PATIENCE)).expect("the daemon exits after SIGTERM");
    assert!(status.success(), "{status}");
}
