//! Import, export and backup (SPEC 2.8) through the real `memory-server` commands, also
//! while a daemon serves the same database, and live updates for writes made by other
//! processes (SPEC 2.6: "whichever session or process wrote").

use std::path::Path;
use std::process::Output;

use e2e::rmcp_client::{Watcher, call, connect, subscribe_graph};
use e2e::{Daemon, Http, PATIENCE, TestEnv, bin, fixture};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const OFFICIAL_JSONL: &str = "official/memory-2026.8.31.jsonl";

fn memory_server(env: &TestEnv, args: &[&str]) -> Output {
    env.command(&bin("memory-server")).args(args).output().expect("run memory-server")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The official server's own `read_graph` for the state `OFFICIAL_JSONL` holds: the last
/// call of the recorded sequence.
fn official_final_graph() -> Value {
    let text = std::fs::read_to_string(fixture("official/server-memory-2026.8.31.json")).unwrap();
    let recorded: Value = serde_json::from_str(&text).unwrap();
    let last = recorded["calls"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["tool"], "read_graph");
    last["result"]["structuredContent"].clone()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn import_of_the_official_file_reads_back_as_the_official_graph() {
    let env = TestEnv::new();
    let project = env.project("imported");
    let file = fixture(OFFICIAL_JSONL);
    let report = ok(memory_server(&env, &["import", s(&file), "--project", s(&project)]));
    assert!(report.contains("entities: 11 added"), "{report}");

    let daemon = Daemon::start(&env, &[]);
    let http = Http::new(daemon.url()).with_project(&project);
    assert_eq!(http.read_graph().await, official_final_graph());

    // Importing again adds nothing and says so.
    let report = ok(memory_server(&env, &["import", s(&file), "--project", s(&project)]));
    assert!(report.contains("entities: 0 added, 11 already present"), "{report}");
    assert_eq!(http.read_graph().await, official_final_graph());

    // The search index covers imported rows (indexed in bulk at the end of the import),
    // and its triggers are back for later writes, the daemon's and a second import's.
    let names_for = |graph: Value| e2e::entity_names(&graph);
    let search = |q: &'static str| {
        let http = http.clone();
        async move { http.call_tool("search_nodes", json!({"query": q})).await["structuredContent"].clone() }
    };
    assert_eq!(names_for(search("日本の首").await), ["東京"]);
    assert_eq!(names_for(search("BERLIN").await), ["Bob"]);
    http.call_tool(
        "create_entities",
        json!({"entities":[{"name":"Zed","entityType":"t","observations":["after import"]}]}),
    )
    .await;
    assert_eq!(names_for(search("AFTER IMP").await), ["Zed"]);
    let more = env.dir.path().join("more.jsonl");
    std::fs::write(&more, r#"{"type":"entity","name":"Yara","entityType":"t","observations":["second batch"]}"#)
        .unwrap();
    ok(memory_server(&env, &["import", s(&more), "--project", s(&project)]));
    assert_eq!(names_for(search("SECOND BAT").await), ["Yara"]);
    assert_eq!(names_for(search("日本の首").await), ["東京"], "earlier rows are not indexed twice or lost");
}

#[test]
fn export_round_trips_byte_for_byte_and_through_an_empty_db() {
    let env = TestEnv::new();
    let db = env.dir.path().join("a.db");
    ok(memory_server(&env, &["import", s(&fixture(OFFICIAL_JSONL)), "--db", s(&db)]));
    let exported = env.dir.path().join("out.jsonl");
    ok(memory_server(&env, &["export", "--db", s(&db), "-o", s(&exported)]));
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(fixture(OFFICIAL_JSONL)).unwrap());

    // stdout export, then import into an empty database: the same file again.
    let stdout = ok(memory_server(&env, &["export", "--db", s(&db)]));
    let copy = env.dir.path().join("b.db");
    let again = env.dir.path().join("again.jsonl");
    std::fs::write(&again, &stdout).unwrap();
    ok(memory_server(&env, &["import", s(&again), "--db", s(&copy)]));
    let second = ok(memory_server(&env, &["export", "--db", s(&copy)]));
    assert_eq!(second, stdout);
}

#[test]
fn malformed_lines_abort_with_the_line_number_and_change_nothing() {
    let env = TestEnv::new();
    let db = env.dir.path().join("m.db");
    ok(memory_server(&env, &["import", s(&fixture(OFFICIAL_JSONL)), "--db", s(&db)]));
    let before = ok(memory_server(&env, &["export", "--db", s(&db)]));
    let good = r#"{"type":"entity","name":"new","entityType":"t","observations":["o"]}"#;
    for (bad, what) in [
        ("{not json", "bad JSON"),
        (r#"{"type":"person","name":"x"}"#, "unknown type"),
        (r#"{"type":"relation","from":"a","to":"b"}"#, "missing field"),
    ] {
        let file = env.dir.path().join("bad.jsonl");
        std::fs::write(&file, format!("{good}\n{good}\n{bad}\n{good}\n")).unwrap();
        let out = memory_server(&env, &["import", s(&file), "--db", s(&db)]);
        assert!(!out.status.success(), "{what}: must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{}:3:", file.display())), "{what}: names file and line: {stderr}");
        assert!(stderr.contains("nothing was imported"), "{what}: {stderr}");
        assert_eq!(ok(memory_server(&env, &["export", "--db", s(&db)])), before, "{what}: database unchanged");
    }
    // The aborted imports' trigger changes were rolled back with them.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let triggers: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'", [], |r| r.get(0)).unwrap();
    assert_eq!(triggers, 6, "the search index's triggers are all there");
    drop(conn);
    let empty = env.dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let report = ok(memory_server(&env, &["import", s(&empty), "--db", s(&db)]));
    assert!(report.contains("entities: 0 added"), "{report}");
}

#[test]
fn legacy_single_object_memory_json_imports() {
    let env = TestEnv::new();
    let legacy = env.dir.path().join("memory.json");
    let graph = official_final_graph();
    std::fs::write(&legacy, serde_json::to_string_pretty(&graph).unwrap()).unwrap();
    let db = env.dir.path().join("l.db");
    ok(memory_server(&env, &["import", s(&legacy), "--db", s(&db)]));
    let exported = ok(memory_server(&env, &["export", "--db", s(&db)]));
    assert_eq!(exported.as_bytes(), std::fs::read(fixture(OFFICIAL_JSONL)).unwrap());
}

#[tokio::test]
async fn import_while_serving_notifies_subscribers_of_that_project() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("live");
    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &daemon.url(), &project).await;
    subscribe_graph(&listener).await;

    let report = ok(memory_server(&env, &["import", s(&fixture(OFFICIAL_JSONL)), "--project", s(&project)]));
    assert!(report.contains("11 added"), "{report}");
    let uri = tokio::time::timeout(PATIENCE, updates.recv()).await.expect("an update after the import").unwrap();
    assert_eq!(uri, "memory://knowledge-graph");
    assert_eq!(Http::new(daemon.url()).with_project(&project).read_graph().await, official_final_graph());
    listener.cancel().await.unwrap();
}

#[tokio::test]
async fn writes_by_another_daemon_process_reach_subscribers() {
    let env = TestEnv::new();
    let first = Daemon::start(&env, &[]);
    let second = Daemon::start(&env, &[]);
    let project = env.project("shared");
    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &first.url(), &project).await;
    subscribe_graph(&listener).await;

    let writer = connect((), &second.url(), &project).await;
    call(
        &writer,
        "create_entities",
        json!({"entities":[{"name":"from-elsewhere","entityType":"t","observations":[]}]}),
    )
    .await;
    tokio::time::timeout(PATIENCE, updates.recv()).await.expect("an update for the other process's write").unwrap();
    writer.cancel().await.unwrap();
    listener.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_during_writes_is_consistent_and_opens_with_the_daemon() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("busy");
    let http = Http::new(daemon.url()).with_project(&project);
    http.call_tool("create_entities", json!({"entities":[{"name":"seed","entityType":"t","observations":[]}]})).await;

    // Writers keep going while the backup runs.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let http = http.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let name = format!("w{w}-{i}");
                    http.call_tool(
                        "create_entities",
                        json!({"entities":[{"name":name,"entityType":"t","observations":["x"]}]}),
                    )
                    .await;
                }
            })
        })
        .collect();
    let backup = env.dir.path().join("backup.db");
    let db = project.join(".claude/memory.db");
    let env_ref = &env;
    let out = tokio::task::block_in_place(|| memory_server(env_ref, &["backup", "--db", s(&db), "-o", s(&backup)]));
    ok(out);
    for w in writers {
        w.await.unwrap();
    }

    let conn = rusqlite::Connection::open(&backup).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let entities: i64 = conn.query_row("SELECT count(*) FROM entities", [], |r| r.get(0)).unwrap();
    assert!(entities >= 1);
    // Every observation in the copy belongs to an entity in the copy: one snapshot.
    let orphans: i64 = conn
        .query_row("SELECT count(*) FROM observations WHERE entity_name NOT IN (SELECT name FROM entities)", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(orphans, 0);
    drop(conn);

    // The copy opens with the daemon as a global database.
    let restored = Daemon::start_with(&env, &[], |cmd| {
        cmd.env("MEMORY_DB_PATH", &backup);
    });
    let graph = Http::new(restored.url()).read_graph().await;
    assert_eq!(graph["entities"].as_array().unwrap().len() as i64, entities);
}

/// The official server itself, started on our export, answers `read_graph` with the
/// graph we exported.
#[test]
fn the_official_server_reads_our_export() {
    use std::io::{BufRead, BufReader, Write};
    let env = TestEnv::new();
    let db = env.dir.path().join("o.db");
    ok(memory_server(&env, &["import", s(&fixture(OFFICIAL_JSONL)), "--db", s(&db)]));
    // Add something of our own so the file is not just the fixture coming back.
    let extra = env.dir.path().join("extra.jsonl");
    std::fs::write(
        &extra,
        "{\"type\":\"entity\",\"name\":\"ours\",\"entityType\":\"t\",\"observations\":[\"written by memory-server\"]}\n\
         {\"type\":\"relation\",\"from\":\"ours\",\"to\":\"Bob\",\"relationType\":\"knows\"}",
    )
    .unwrap();
    ok(memory_server(&env, &["import", s(&extra), "--db", s(&db)]));
    let exported = env.dir.path().join("memory.jsonl");
    ok(memory_server(&env, &["export", "--db", s(&db), "-o", s(&exported)]));

    let package = e2e::node::npm_package("@modelcontextprotocol/server-memory", "2026.8.31");
    let mut child = std::process::Command::new(e2e::node::node())
        .arg(package.join("dist/index.js"))
        .env("MEMORY_FILE_PATH", &exported)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for line in [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_graph","arguments":{}}}),
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    let mut theirs = Value::Null;
    for _ in 0..10 {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let msg: Value = serde_json::from_str(&line).unwrap();
        if msg["id"] == 2 {
            theirs = msg["result"]["structuredContent"].clone();
            break;
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();

    let daemon = Daemon::start_with(&env, &[], |cmd| {
        cmd.env("MEMORY_DB_PATH", &db);
    });
    let ours = tokio::runtime::Runtime::new().unwrap().block_on(Http::new(daemon.url()).read_graph());
    assert_eq!(theirs, ours, "the official server reads our export as the same graph");
    assert!(e2e::entity_names(&ours).contains(&"ours".to_string()));
}
