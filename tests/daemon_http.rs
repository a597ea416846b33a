//! The HTTP edge of `memory-server serve`, end to end (SPEC 2.1–2.3, 2.6): every kind of
//! bad input gets the status and JSON-RPC error the spec names and the daemon goes on
//! serving; the bearer token; batches; sessions, their streams and their expiry;
//! per-project routing; SIGINT ignored and SIGTERM draining an in-flight request.
//!
//! Requests whose headers reqwest would add to or merge (Host, Content-Type, Accept) go
//! over a raw socket so the daemon sees exactly what the test means.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Daemon, Http, PATIENCE, TestEnv, encode_project, entity_names};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Helpers

fn entities(names: &[&str]) -> Value {
    json!({ "entities": names.iter().map(|n| json!({"name": n, "entityType": "test", "observations": []})).collect::<Vec<_>>() })
}

fn tool_call(id: Value, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":arguments}})
}

fn ping() -> Value {
    json!({"jsonrpc":"2.0","id":"p","method":"ping"})
}

/// A successful tool call: the daemon serves normally after whatever came before.
async fn assert_serving(http: &Http, after: &str) {
    let result = http.call_tool("create_entities", entities(&[after])).await;
    assert_ne!(result["isError"], json!(true), "after {after}: {result}");
    assert_eq!(result["structuredContent"]["entities"][0]["name"], after, "after {after}: {result}");
}

/// Checks a JSON-RPC error reply and returns its message.
#[track_caller]
fn rpc_error(what: &str, status: u16, body: &Value, want_status: u16, want_code: i64) -> String {
    assert_eq!(status, want_status, "{what}: HTTP status; body {body}");
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{what}: error code; body {body}");
    body["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no error message in {body}")).to_owned()
}

/// A response read off a raw socket.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    text: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn parse(bytes: &[u8]) -> RawReply {
        let split = find(bytes, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..split]).expect("ASCII response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
        let mut body = bytes[split + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        RawReply { status, headers, body, text }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_text = std::str::from_utf8(&data[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads a whole response (the request said `Connection: close`).
fn read_reply(s: &mut TcpStream) -> RawReply {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the response (bounded by PATIENCE)");
    RawReply::parse(&buf)
}

/// `POST /mcp` over a raw socket with the usual headers (loopback Host, JSON
/// Content-Type, the MCP Accept) changed by `changes`: `Some` sets, `None` removes.
fn raw_post(port: u16, changes: &[(&str, Option<&str>)], body: &[u8]) -> RawReply {
    let host = format!("127.0.0.1:{port}");
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), host),
        ("Content-Type".into(), "application/json".into()),
        ("Accept".into(), "application/json, text/event-stream".into()),
    ];
    for (name, value) in changes {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            headers.push(((*name).into(), (*v).into()));
        }
    }
    let mut req = String::from("POST /mcp HTTP/1.1\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut s = connect(port);
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_reply(&mut s)
}

/// `GET path` over a raw socket with extra header lines.
fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> RawReply {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut s = connect(port);
    s.write_all(req.as_bytes()).unwrap();
    read_reply(&mut s)
}

/// `/health` as JSON (asserting it answers 200).
fn health(daemon: &Daemon) -> Value {
    let r = raw_get(daemon.port, "/health", &[]);
    assert_eq!(r.status, 200, "/health: {}", r.text);
    r.body
}

/// Polls `/health` (which does not touch any session) until `live_sessions` is `n`.
async fn wait_live_sessions(daemon: &Daemon, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let live = health(daemon)["live_sessions"].as_u64().expect("live_sessions");
        if live == n {
            return;
        }
        assert!(Instant::now() < deadline, "live_sessions stayed {live}, expected it to fall to {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the daemon's log until it contains `needle`.
fn wait_for_log(daemon: &Daemon, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !daemon.log_text().contains(needle) {
        assert!(Instant::now() < deadline, "daemon log never said {needle:?}:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Entity names in a SQLite memory DB, read directly from the file.
fn db_entity_names(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut stmt = conn.prepare("SELECT name FROM entities ORDER BY rowid").unwrap();
    stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------
// 1. Bad input

#[tokio::test]
async fn bad_input_gets_the_named_error_and_the_daemon_keeps_serving() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--max-body-bytes", "1024"]);
    let port = daemon.port;
    let http = Http::new(daemon.url()).with_project(&env.project("bad-input"));
    assert_serving(&http, "before anything").await;

    // Framing.
    let r = http.post_raw(r#"{"jsonrpc":"2.0","id":1,"#, &[]).await;
    let msg = rpc_error("malformed JSON", r.status, &r.body, 400, -32700);
    assert_eq!(r.body["id"], Value::Null, "a parse error has id null");
    assert!(msg.contains("Parse error"), "{msg}");
    assert_serving(&http, "malformed JSON").await;

    let r = http.post_raw(vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'], &[]).await;
    let msg = rpc_error("invalid UTF-8", r.status, &r.body, 400, -32700);
    assert!(msg.contains("UTF-8"), "{msg}");
    assert_eq!(r.body["id"], Value::Null);
    assert_serving(&http, "invalid UTF-8").await;

    let r = http.post_raw("42", &[]).await;
    let msg = rpc_error("non-object body", r.status, &r.body, 400, -32600);
    assert!(msg.contains("object"), "{msg}");
    assert_serving(&http, "non-object body").await;

    let r = http.post(&json!({"id":7,"method":"ping"})).await;
    let msg = rpc_error("missing jsonrpc", r.status, &r.body, 400, -32600);
    assert!(msg.contains("\"jsonrpc\""), "the message names the field: {msg}");
    assert_eq!(r.body["id"], 7, "the id is kept when it could be read");
    assert_serving(&http, "missing jsonrpc").await;

    let r = http.post(&json!({"jsonrpc":"2.0","id":8})).await;
    let msg = rpc_error("missing method", r.status, &r.body, 400, -32600);
    assert!(msg.contains("\"method\""), "the message names the field: {msg}");
    assert_serving(&http, "missing method").await;

    // Methods and params.
    let r = http.post(&json!({"jsonrpc":"2.0","id":9,"method":"no/such/method"})).await;
    let msg = rpc_error("unknown method", r.status, &r.body, 200, -32601);
    assert!(msg.contains("no/such/method"), "{msg}");
    assert_eq!(r.body["id"], 9);
    assert_serving(&http, "unknown method").await;

    let r = http
        .post(&json!({"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"read_graph","arguments":[1,2]}}))
        .await;
    let msg = rpc_error("non-object arguments", r.status, &r.body, 200, -32602);
    assert!(msg.contains("arguments"), "{msg}");
    assert_serving(&http, "non-object arguments").await;

    let r = http.post(&tool_call(json!(11), "no_such_tool", json!({}))).await;
    let msg = rpc_error("unknown tool", r.status, &r.body, 200, -32602);
    assert!(msg.contains("no_such_tool"), "the message names the tool: {msg}");
    assert_serving(&http, "unknown tool").await;

    // Bad tool arguments are tool results with isError, naming the field path.
    let bad_arguments = [
        ("create_entities", json!({"entities":"Ada"}), "entities", "expected array"),
        ("create_entities", json!({}), "entities", "received undefined"),
        (
            "create_entities",
            json!({"entities":[{"name":1,"entityType":"t","observations":[]}]}),
            "entities[0].name",
            "expected string",
        ),
        (
            "create_entities",
            json!({"entities":[{"name":"","entityType":"t","observations":[]}]}),
            "entities[0].name",
            "empty",
        ),
        (
            "create_entities",
            json!({"entities":[{"name":"ok","entityType":"t","observations":[1]}]}),
            "entities[0].observations[0]",
            "expected string",
        ),
        (
            "create_relations",
            json!({"relations":[{"from":"a","to":"","relationType":"r"}]}),
            "relations[0].to",
            "empty",
        ),
        (
            "add_observations",
            json!({"observations":[{"entityName":"x","contents":"y"}]}),
            "observations[0].contents",
            "expected array",
        ),
        ("search_nodes", json!({"query":5}), "query", "expected string"),
    ];
    for (tool, arguments, path, problem) in bad_arguments {
        let what = format!("{tool} {arguments}");
        let result = http.call_tool(tool, arguments).await;
        assert_eq!(result["isError"], true, "{what}: {result}");
        let text = result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{what}: no text in {result}"));
        assert!(text.ends_with(&format!(" at {path}")), "{what}: the text names the field {path}: {text}");
        assert!(text.contains(problem), "{what}: {text}");
        assert_serving(&http, &what).await;
    }
    let names = entity_names(&http.read_graph().await);
    assert!(!names.iter().any(|n| n.is_empty() || n == "ok"), "bad calls wrote nothing: {names:?}");

    // Transport-level refusals.
    let big = tool_call(json!(12), "create_entities", entities(&[&"x".repeat(2048)])).to_string();
    let r = http.post_raw(big, &[]).await;
    let msg = rpc_error("body over --max-body-bytes", r.status, &r.body, 413, -32600);
    assert!(msg.contains("1024"), "the message names the limit: {msg}");
    assert_serving(&http, "oversized body").await;

    let body = ping().to_string();
    let r = raw_post(port, &[("Host", Some("evil.example:80"))], body.as_bytes());
    let msg = rpc_error("foreign Host", r.status, &r.body, 403, -32600);
    assert!(msg.contains("Host"), "{msg}");
    assert_serving(&http, "foreign Host").await;

    let r = raw_post(port, &[("Host", Some("localhost"))], body.as_bytes());
    assert_eq!(r.status, 200, "a loopback Host name is fine: {}", r.text);

    let r = http.post_raw(body.clone(), &[("origin", "https://evil.example")]).await;
    let msg = rpc_error("foreign Origin", r.status, &r.body, 403, -32600);
    assert!(msg.contains("Origin"), "{msg}");
    assert!(r.headers.get("access-control-allow-origin").is_none(), "no CORS grant on a refusal");
    assert_serving(&http, "foreign Origin").await;

    let r = http.post_raw(body.clone(), &[("origin", "http://localhost:5173")]).await;
    assert_eq!(r.status, 200, "a loopback Origin is fine: {}", r.text);
    assert!(r.headers.get("access-control-allow-origin").is_none(), "no Access-Control-Allow-Origin");

    let r = raw_post(port, &[("Content-Type", Some("text/plain"))], body.as_bytes());
    rpc_error("wrong Content-Type", r.status, &r.body, 415, -32600);
    assert_serving(&http, "wrong Content-Type").await;

    let r = raw_post(port, &[("Content-Type", Some("application/json; charset=utf-8"))], body.as_bytes());
    assert_eq!(r.status, 200, "Content-Type parameters are fine: {}", r.text);

    let r = raw_post(port, &[("Accept", Some("text/html"))], body.as_bytes());
    rpc_error("Accept: text/html", r.status, &r.body, 406, -32600);
    assert_serving(&http, "Accept: text/html").await;

    let r = raw_post(port, &[("Accept", Some("text/event-stream"))], body.as_bytes());
    assert_eq!(r.status, 200, "Accept: text/event-stream only: {}", r.text);
    assert!(r.header("content-type").unwrap_or_default().starts_with("text/event-stream"), "{:?}", r.headers);
    assert!(r.text.contains("data: ") && r.text.contains("\"result\""), "one SSE event with the response: {}", r.text);

    for accept in [None, Some("*/*")] {
        let r = raw_post(port, &[("Accept", accept)], body.as_bytes());
        assert_eq!(r.status, 200, "Accept {accept:?} is served (curl): {}", r.text);
        let content_type = r.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "Accept {accept:?} gets JSON, got {content_type:?}");
        assert_eq!(r.body["result"], json!({}), "Accept {accept:?}: {}", r.text);
    }

    let r = http.post_raw(body.clone(), &[("mcp-protocol-version", "1999-01-01")]).await;
    let msg = rpc_error("unsupported MCP-Protocol-Version", r.status, &r.body, 400, -32600);
    assert!(msg.contains("1999-01-01"), "{msg}");
    assert_serving(&http, "unsupported MCP-Protocol-Version").await;

    let r = http.post_raw(body, &[("mcp-protocol-version", "2025-06-18")]).await;
    assert_eq!(r.status, 200, "a supported MCP-Protocol-Version is fine: {}", r.text);
}

#[tokio::test]
async fn the_bearer_token_guards_every_route() {
    let env = TestEnv::new();
    let daemon = Daemon::start_with_token(&env, "s3cret", &[], |_| {});
    let port = daemon.port;
    let http = Http::new(daemon.url());
    let body = ping().to_string();

    let r = http.post_raw(body.clone(), &[]).await;
    let msg = rpc_error("no token", r.status, &r.body, 401, -32600);
    assert!(msg.contains("Bearer"), "{msg}");
    assert_eq!(r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic czNjcmV0", "s3cret"] {
        let r = http.post_raw(body.clone(), &[("authorization", wrong)]).await;
        assert_eq!(r.status, 401, "Authorization {wrong:?}: {}", r.text);
    }

    let r = http.post_raw(body.clone(), &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], json!({}));
    let r = http
        .post_raw(
            tool_call(json!(1), "create_entities", entities(&["authorized"])).to_string(),
            &[("authorization", "Bearer s3cret")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["structuredContent"]["entities"][0]["name"], "authorized", "{}", r.text);

    for path in ["/health", "/ping", "/mcp"] {
        let r = raw_get(port, path, &[("Accept", "text/event-stream")]);
        assert_eq!(r.status, 401, "GET {path} without the token: {}", r.text);
    }
    let r = raw_get(port, "/health", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "ok");
    let r = http.client.delete(&http.url).header("mcp-session-id", "whatever").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "DELETE without the token");
}

// ---------------------------------------------------------------------------------------
// 2. Batches

fn batch(name: &str) -> Value {
    json!([
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        tool_call(json!("a"), "create_entities", entities(&[name])),
        {"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"zzz"}},
        tool_call(json!("b"), "read_graph", json!({})),
        {"jsonrpc":"2.0","id":"c","method":"no/such/method"},
    ])
}

#[tokio::test]
async fn batches_are_served_for_2025_03_26_sessions_only() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("batches");

    let mut old = Http::new(daemon.url()).with_project(&project);
    let init = old.initialize("2025-03-26").await;
    assert_eq!(init.body["result"]["protocolVersion"], "2025-03-26", "{}", init.text);
    let r = old.post(&batch("batched")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let content_type = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let replies = r.body.as_array().unwrap_or_else(|| panic!("a batch gets an array back: {}", r.text));
    let ids: Vec<&Value> = replies.iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&json!("a"), &json!("b"), &json!("c")], "one entry per request, none for notifications");
    assert_eq!(replies[0]["result"]["structuredContent"]["entities"][0]["name"], "batched");
    assert_eq!(entity_names(&replies[1]["result"]["structuredContent"]), ["batched"], "served in order");
    assert_eq!(replies[2]["error"]["code"], -32601);

    let r = old.post(&json!([{"jsonrpc":"2.0","method":"notifications/initialized"}])).await;
    assert_eq!(r.status, 202, "a batch of notifications only: {}", r.text);
    assert!(r.text.is_empty(), "202 has no body: {:?}", r.text);

    let mut new = Http::new(daemon.url()).with_project(&project);
    let init = new.initialize("2025-06-18").await;
    assert_eq!(init.body["result"]["protocolVersion"], "2025-06-18", "{}", init.text);
    let r = new.post(&batch("refused")).await;
    let msg = rpc_error("2025-06-18 batch", r.status, &r.body, 400, -32600);
    assert!(msg.contains("batch"), "{msg}");
    assert_eq!(entity_names(&new.read_graph().await), ["batched"], "nothing of the refused batch ran");
    assert_serving(&new, "refused batch").await;
}

// ---------------------------------------------------------------------------------------
// 3. Sessions

#[tokio::test]
async fn sessions_are_issued_checked_ended_and_streamed() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);

    let h = health(&daemon);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"), "{h}");
    for field in ["uptime_secs", "open_stores", "live_sessions", "listen_streams"] {
        assert!(h[field].is_u64(), "/health {field} is a count: {h}");
    }
    assert_eq!(h["live_sessions"], 0, "{h}");
    assert_eq!(h["global_db"], env.global_db().to_str().unwrap(), "{h}");
    let ping_route = raw_get(daemon.port, "/ping", &[]);
    assert_eq!(ping_route.status, 200, "{}", ping_route.text);
    assert_eq!(ping_route.body["status"], "ok", "/ping is /health for the old tooling");

    let mut a = Http::new(daemon.url());
    let mut b = Http::new(daemon.url());
    let init = a.initialize("2025-11-25").await;
    assert_eq!(init.status, 200, "{}", init.text);
    b.initialize("2025-11-25").await;
    let (id_a, id_b) = (a.session.clone().expect("Mcp-Session-Id"), b.session.clone().expect("Mcp-Session-Id"));
    for id in [&id_a, &id_b] {
        assert!(id.len() >= 22, "long enough to carry 128 random bits: {id:?}");
        assert!(id.bytes().all(|c| (0x21..=0x7e).contains(&c)), "visible ASCII: {id:?}");
    }
    assert_ne!(id_a, id_b, "two initializes get different ids");
    assert_eq!(health(&daemon)["live_sessions"], 2);

    assert_eq!(a.post(&ping()).await.status, 200);
    assert_serving(&a, "in session a").await;
    for message in [
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":"from-server","result":{}}),
    ] {
        let r = a.post(&message).await;
        assert_eq!(r.status, 202, "{message}: notifications and client responses get 202");
        assert!(r.text.is_empty(), "{message}: 202 has no body: {:?}", r.text);
    }

    let mut ghost = a.clone();
    ghost.session = Some("0123456789abcdef0123456789abcdef".into());
    let r = ghost.post(&ping()).await;
    assert_eq!(r.status, 404, "unknown session id: {}", r.text);
    let r = ghost.post(&tool_call(json!(1), "read_graph", json!({}))).await;
    assert_eq!(r.status, 404, "unknown session id on a tool call: {}", r.text);

    // GET /mcp with the session opens an SSE stream.
    let stream = a
        .client
        .get(&a.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id_a)
        .send()
        .await
        .expect("GET /mcp");
    assert_eq!(stream.status().as_u16(), 200);
    let content_type = stream.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let r = ghost.client.get(&ghost.url).header("accept", "text/event-stream").header("mcp-session-id", "nope");
    assert_eq!(r.send().await.unwrap().status().as_u16(), 404, "GET with an unknown session");
    drop(stream);

    // DELETE ends a session; the other one is untouched.
    let r = b.client.delete(&b.url).header("mcp-session-id", &id_b).send().await.unwrap();
    assert!(r.status().is_success(), "DELETE /mcp: {}", r.status());
    let r = b.post(&ping()).await;
    assert_eq!(r.status, 404, "a deleted session is unknown: {}", r.text);
    let r = b.client.delete(&b.url).header("mcp-session-id", &id_b).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "DELETE of a deleted session");
    assert_eq!(a.post(&ping()).await.status, 200, "session a lives on");
    assert_eq!(health(&daemon)["live_sessions"], 1);

    // Re-initializing is how a client recovers from 404.
    b.initialize("2025-11-25").await;
    assert_ne!(b.session.as_deref(), Some(id_b.as_str()));
    assert_eq!(b.post(&ping()).await.status, 200);
}

#[tokio::test]
async fn idle_sessions_expire_but_streaming_ones_do_not() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--session-idle-secs", "1"]);

    let mut idle = Http::new(daemon.url());
    idle.initialize("2025-11-25").await;
    assert!(idle.session.is_some());

    // A session with an open GET stream is never idle. With a 1 s limit a slow machine
    // may let a fresh session expire before its stream opens; then start over (bounded).
    // Once the stream is open and a request still finds the session, it cannot expire.
    let mut streaming = Http::new(daemon.url());
    let mut stream = None;
    for _ in 0..20 {
        streaming.initialize("2025-11-25").await;
        let resp = streaming
            .client
            .get(&streaming.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", streaming.session.as_deref().expect("Mcp-Session-Id"))
            .send()
            .await
            .expect("GET /mcp");
        match resp.status().as_u16() {
            200 if streaming.post(&ping()).await.status == 200 => {
                stream = Some(resp);
                break;
            }
            200 | 404 => {}
            other => panic!("GET /mcp: {other}"),
        }
    }
    let stream = stream.expect("a GET stream opened");

    // Only the idle session goes.
    wait_live_sessions(&daemon, 1).await;
    let r = idle.post(&ping()).await;
    assert_eq!(r.status, 404, "an expired session is unknown: {}", r.text);
    let r = streaming.post(&ping()).await;
    assert_eq!(r.status, 200, "the streaming session is alive: {}", r.text);
    assert!(daemon.log_text().contains("session expired"), "expiry is logged");

    // Once its stream closes, the other one expires too: live_sessions falls to 0.
    drop(stream);
    wait_live_sessions(&daemon, 0).await;
    let r = streaming.post(&ping()).await;
    assert_eq!(r.status, 404, "expired after its stream closed: {}", r.text);
}

// ---------------------------------------------------------------------------------------
// 4. Routing

#[tokio::test]
async fn project_header_selects_the_store() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);

    // Two projects see disjoint graphs; the global DB is a third.
    let (dir_a, dir_b) = (env.project("a"), env.project("b"));
    let a = Http::new(daemon.url()).with_project(&dir_a);
    let b = Http::new(daemon.url()).with_project(&dir_b);
    let global = Http::new(daemon.url());
    a.call_tool("create_entities", entities(&["alpha"])).await;
    b.call_tool("create_entities", entities(&["beta"])).await;
    global.call_tool("create_entities", entities(&["gamma"])).await;
    assert_eq!(entity_names(&a.read_graph().await), ["alpha"]);
    assert_eq!(entity_names(&b.read_graph().await), ["beta"]);
    assert_eq!(entity_names(&global.read_graph().await), ["gamma"]);
    assert_eq!(db_entity_names(&dir_a.join(".claude/memory.db")), ["alpha"]);
    assert_eq!(db_entity_names(&dir_b.join(".claude/memory.db")), ["beta"]);
    assert!(env.global_db().is_file(), "no header uses $HOME/.claude/memory.db");
    assert_eq!(db_entity_names(&env.global_db()), ["gamma"]);

    // `/x/b`, `/x/b/`, a symlink to it and the plain (unencoded) ASCII value: one store.
    let open_before = health(&daemon)["open_stores"].clone();
    let link = env.dir.path().join("link-to-b");
    std::os::unix::fs::symlink(&dir_b, &link).unwrap();
    let slash = std::path::PathBuf::from(format!("{}/", dir_b.display()));
    for spelling in [&slash, &link] {
        let http = Http::new(daemon.url()).with_project(spelling);
        assert_eq!(entity_names(&http.read_graph().await), ["beta"], "{}", spelling.display());
    }
    let plain = dir_b.to_str().unwrap();
    assert!(plain.is_ascii() && !plain.contains('%'));
    let r =
        global.post_raw(tool_call(json!(1), "read_graph", json!({})).to_string(), &[("mcp-project-path", plain)]).await;
    assert_eq!(entity_names(&r.body["result"]["structuredContent"]), ["beta"], "{}", r.text);
    assert_eq!(health(&daemon)["open_stores"], open_before, "no store was opened for another spelling");

    // A non-ASCII directory name travels percent-encoded.
    let kudo = env.project("工藤 プロジェクト");
    let http = Http::new(daemon.url()).with_project(&kudo);
    assert!(encode_project(&kudo).is_ascii());
    http.call_tool("create_entities", entities(&["工藤"])).await;
    assert_eq!(entity_names(&http.read_graph().await), ["工藤"]);
    let db = kudo.join(".claude").join("memory.db");
    assert_eq!(db_entity_names(&db), ["工藤"]);
    assert_eq!(mode(&kudo.join(".claude")), 0o700, ".claude is private");
    assert_eq!(mode(&db), 0o600, "memory.db is private");

    // Malformed values are refused with a reason, never served from the global DB.
    let file = env.dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let missing = env.dir.path().join("no-such-project");
    let bad = [
        ("relative/project".to_owned(), "absolute"),
        (encode_project(&missing), "does not exist"),
        (encode_project(&file), "not a directory"),
        ("%2Ftmp%00x".to_owned(), "NUL"),
        ("%2Ftmp%2F%FF%FE".to_owned(), "UTF-8"),
    ];
    let write = tool_call(json!(2), "create_entities", entities(&["misrouted"])).to_string();
    for (value, reason) in bad {
        let r = global.post_raw(write.clone(), &[("mcp-project-path", value.as_str())]).await;
        let msg = rpc_error(&format!("Mcp-Project-Path {value:?}"), r.status, &r.body, 400, -32600);
        assert!(msg.contains(reason), "Mcp-Project-Path {value:?}: the message names the problem ({reason}): {msg}");
    }
    assert_eq!(entity_names(&global.read_graph().await), ["gamma"], "nothing fell back to the global DB");
    assert!(!missing.exists());
}

#[tokio::test]
async fn an_unwritable_project_falls_back_to_the_global_db_with_a_warning() {
    let env = TestEnv::new();
    let project = env.project("read-only");
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o555)).unwrap();
    let root = is_root();
    // Root writes through any mode: run the daemon as nobody, with a HOME it owns and a
    // root-owned 0555 project it cannot write. Without a token it would serve only
    // nobody, so this test (root) brings the token.
    const TOKEN: &str = "unwritable-project-test";
    let daemon = if root {
        const NOBODY: u32 = 65534;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for dir in [env.home(), env.runtime()] {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        Daemon::start_with_token(&env, TOKEN, &[], |cmd| {
            use std::os::unix::process::CommandExt;
            cmd.uid(NOBODY).gid(NOBODY);
        })
    } else {
        Daemon::start(&env, &[])
    };
    let client = |http: Http| if root { http.with_bearer(TOKEN) } else { http };

    let http = client(Http::new(daemon.url()).with_project(&project));
    let result = http.call_tool("create_entities", entities(&["homeless"])).await;
    assert_ne!(result["isError"], json!(true), "served from the global DB: {result}");
    assert_eq!(entity_names(&http.read_graph().await), ["homeless"]);
    let global = client(Http::new(daemon.url()));
    assert_eq!(entity_names(&global.read_graph().await), ["homeless"], "the write went to the global DB");
    assert!(!project.join(".claude").exists(), "nothing was created in the read-only project");
    assert_eq!(db_entity_names(&env.global_db()), ["homeless"]);
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("not writable") && l.contains("read-only")),
        "a warning names the project:\n{log}"
    );
    drop(daemon);
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------------------
// 5. Signals

#[tokio::test]
async fn sigint_is_ignored_and_sigterm_finishes_the_request_in_flight() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env, &[]);
    let project = env.project("signals");
    let http = Http::new(daemon.url()).with_project(&project);
    assert_serving(&http, "before SIGINT").await;

    daemon.signal(libc::SIGINT);
    wait_for_log(&daemon, "SIGINT ignored");
    assert!(daemon.child.try_wait().unwrap().is_none(), "SIGINT did not stop serve");
    assert_eq!(health(&daemon)["status"], "ok");
    assert_serving(&http, "after SIGINT").await;

    // A request in flight: headers sent with `Expect: 100-continue`; the server's
    // `100 Continue` proves the handler is reading the body. Half the body goes before
    // SIGTERM, the rest after the daemon has begun shutting down.
    let body = tool_call(json!("inflight"), "create_entities", entities(&["drained"])).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut s = connect(daemon.port);
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Project-Path: {}\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        daemon.port,
        encode_project(&project),
        body.len()
    )
    .unwrap();
    let mut interim = Vec::new();
    while find(&interim, b"\r\n\r\n").is_none() {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).expect("read 100 Continue (bounded by PATIENCE)");
        assert!(n > 0, "connection closed before 100 Continue: {:?}", String::from_utf8_lossy(&interim));
        interim.extend_from_slice(&buf[..n]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{:?}", String::from_utf8_lossy(&interim));
    s.write_all(first).unwrap();

    daemon.signal(libc::SIGTERM);
    wait_for_log(&daemon, "finishing in-flight");
    // Shutting down stops accepting (bounded poll: the listener closes soon after).
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", daemon.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon waits for the request in flight");

    s.write_all(rest).unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(reply.status, 200, "the in-flight request completes: {}", reply.text);
    assert_eq!(reply.body["id"], "inflight", "{}", reply.text);
    assert_eq!(reply.body["result"]["structuredContent"]["entities"][0]["name"], "drained", "{}", reply.text);

    let status = daemon.wait_exit(PATIENCE).expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0; log:\n{}", daemon.log_text());

    // What it wrote is in the file and the WAL was folded back in.
    let db = project.join(".claude").join("memory.db");
    let wal = project.join(".claude").join("memory.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL checkpointed at shutdown");
    assert_eq!(db_entity_names(&db), ["before SIGINT", "after SIGINT", "drained"]);
}
