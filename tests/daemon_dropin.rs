//! Drop-in compatibility: the official server's recorded answers
//! (`fixtures/official/server-memory-2026.8.31.json`, captured by
//! `fixtures/capture/capture-official.mjs`) replayed against `memory-server`, over HTTP
//! and over stdio: same text byte for byte, same isError, equal structuredContent, and
//! the same tools/list.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use e2e::{Daemon, Http, TestEnv, bin, fixture};
use serde_json::{Value, json};

fn official() -> Value {
    let text = std::fs::read_to_string(fixture("official/server-memory-2026.8.31.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Compares one recorded call with our answer, field by field, with a readable diff.
fn assert_same_result(step: usize, call: &Value, ours: &Value) {
    let theirs = &call["result"];
    let what = format!("step {step} ({}: {})", call["tool"], call["comment"]);
    assert_eq!(ours["isError"], theirs["isError"], "{what}: isError differs");
    let their_text = theirs["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{what}: fixture has no text"));
    let our_text = ours["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{what}: no text in {ours}"));
    assert_eq!(our_text, their_text, "{what}: text differs");
    assert_eq!(ours["content"].as_array().map(Vec::len), Some(1), "{what}: one content item");
    assert_eq!(ours["content"][0]["type"], "text", "{what}");
    assert_eq!(ours["structuredContent"], theirs["structuredContent"], "{what}: structuredContent differs");
}

#[tokio::test]
async fn http_answers_equal_the_official_server() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("dropin");
    let http = Http::new(daemon.url()).with_project(&project);
    let official = official();

    let list = http.post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await;
    assert_eq!(list.body["result"], official["tools_list"], "tools/list differs from the official server");

    let calls = official["calls"].as_array().unwrap();
    assert!(calls.len() >= 40, "the fixture covers a real sequence");
    for (step, call) in calls.iter().enumerate() {
        assert!(call.get("error").is_none(), "fixture step {step} is a JSON-RPC error; not expected");
        let ours = http.call_tool(call["tool"].as_str().unwrap(), call["arguments"].clone()).await;
        assert_same_result(step, call, &ours);
    }
    assert!(project.join(".claude/memory.db").exists());
}

#[test]
fn stdio_answers_equal_the_official_server() {
    let env = TestEnv::new();
    let project = env.project("dropin-stdio");
    let mut child = env.memory_server_stdio(&project);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Sends one line, reads one line.
    let mut rpc = |line: String| -> Value {
        writeln!(stdin, "{line}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"))
    };
    let init = rpc(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}})
    .to_string());
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");

    let official = official();
    let list = rpc(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string());
    assert_eq!(list["result"], official["tools_list"]);
    for (step, call) in official["calls"].as_array().unwrap().iter().enumerate() {
        let reply = rpc(json!({"jsonrpc":"2.0","id":step + 2,"method":"tools/call",
            "params":{"name":call["tool"],"arguments":call["arguments"]}})
        .to_string());
        assert_eq!(reply["id"], json!(step + 2));
        assert_same_result(step, call, &reply["result"]);
    }

    // A batch gets one array: a tool result (written as raw JSON), a ping, no entry for
    // the notification.
    let batch = rpc(json!([
        {"jsonrpc":"2.0","id":"b1","method":"tools/call","params":{"name":"open_nodes","arguments":{"names":[]}}},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},
        {"jsonrpc":"2.0","id":"b2","method":"ping"},
    ])
    .to_string());
    let replies = batch.as_array().unwrap_or_else(|| panic!("a batch answer is an array: {batch}"));
    assert_eq!(replies.len(), 2, "{batch}");
    assert_eq!(replies[0]["id"], "b1");
    assert_eq!(replies[0]["result"]["structuredContent"], json!({"entities": [], "relations": []}));
    assert_eq!(replies[1], json!({"jsonrpc":"2.0","id":"b2","result":{}}));

    // An unparseable line gets a parse error with id null, and the server goes on.
    let bad = rpc("{not json".to_owned());
    assert_eq!(bad["error"]["code"], -32700);
    assert_eq!(bad["id"], Value::Null);
    let ping = rpc(json!({"jsonrpc":"2.0","id":"p","method":"ping"}).to_string());
    assert_eq!(ping["result"], json!({}));

    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "stdin EOF exits 0, got {status}");
    assert!(project.join(".claude/memory.db").exists());
}

/// Claude Code starts stdio servers with `CLAUDE_PROJECT_DIR` set: `memory-server stdio`
/// without `--project` keeps that project's memory in the project (the README's one
/// config entry gives every project its own memory), says so in its log together with
/// the negotiated protocol version, and without the variable uses the global database.
#[test]
fn stdio_uses_claude_project_dir() {
    let env = TestEnv::new();
    let project = env.project("from-env");
    let write = |claude_project_dir: Option<&std::path::Path>, name: &str| -> String {
        let mut cmd = env.command(&bin("memory-server"));
        cmd.arg("stdio").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(dir) = claude_project_dir {
            cmd.env("CLAUDE_PROJECT_DIR", dir);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}});
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_entities",
            "arguments":{"entities":[{"name":name,"entityType":"t","observations":[]}]}}});
        writeln!(stdin, "{init}\n{call}").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[1]["result"]["structuredContent"]["entities"][0]["name"], name, "{lines:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let log = write(Some(&project), "in-project");
    assert!(log.contains("protocol_version=\"2025-06-18\""), "the log names the negotiated version:\n{log}");
    assert!(log.contains("from-env"), "and the project:\n{log}");
    write(None, "global");
    let names = |db: &std::path::Path| -> Vec<String> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT name FROM entities").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(names(&project.join(".claude/memory.db")), ["in-project"]);
    assert_eq!(names(&env.global_db()), ["global"]);
}

/// Where the official server stores repeats within one call twice (see
/// `fixtures/official/server-memory-2026.8.31.repeats.json`), we store them once, as
/// SPEC 2.5 says, and the result shows what was stored.
#[tokio::test]
async fn repeats_within_one_call_are_stored_once() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let http = Http::new(daemon.url()).with_project(&env.project("repeats"));

    let r = http
        .call_tool(
            "create_entities",
            json!({"entities":[
                {"name":"Dup","entityType":"first","observations":["first copy"]},
                {"name":"Dup","entityType":"second","observations":["second copy"]},
                {"name":"Echo","entityType":"sound","observations":["same","same","other","same"]}]}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["entities"],
        json!([{"name":"Dup","entityType":"first","observations":["first copy"]},
               {"name":"Echo","entityType":"sound","observations":["same","other"]}])
    );
    let r = http
        .call_tool(
            "create_relations",
            json!({"relations":[{"from":"Echo","to":"Dup","relationType":"links"},
                                {"from":"Echo","to":"Dup","relationType":"links"}]}),
        )
        .await;
    assert_eq!(r["structuredContent"]["relations"].as_array().unwrap().len(), 1);
    let r = http
        .call_tool("add_observations", json!({"observations":[{"entityName":"Echo","contents":["added","added"]}]}))
        .await;
    assert_eq!(r["structuredContent"]["results"], json!([{"entityName":"Echo","addedObservations":["added"]}]));

    let graph = http.read_graph().await;
    assert_eq!(
        graph,
        json!({"entities":[
                {"name":"Dup","entityType":"first","observations":["first copy"]},
                {"name":"Echo","entityType":"sound","observations":["same","other","added"]}],
               "relations":[{"from":"Echo","to":"Dup","relationType":"links"}]})
    );
}

#[test]
fn help_is_available_for_every_command() {
    for args in [&["--help"][..], &["serve", "--help"], &["stdio", "--help"]] {
        let out = Command::new(bin("memory-server")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}
