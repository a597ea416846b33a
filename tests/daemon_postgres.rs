//! Team memory on PostgreSQL (SPEC 2.12), against throwaway servers the tests start
//! themselves (`e2e::postgres`, Debian's binaries): the official server's answers byte for
//! byte and the SQLite daemon's for harder calls, projects keyed by `Mcp-Project-Id` or
//! the path as sent, three daemons on one database (counts, cross-daemon notifications,
//! kill -9), an outage, the schema's version, and moving memories in and out.

#[path = "proxy_common/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::postgres::TestPostgres;
use e2e::rmcp_client::{Watcher, call, connect, subscribe_graph};
use e2e::{Daemon, Http, PATIENCE, Reply, TestEnv, bin, entity_names, fixture};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn team_daemon(env: &TestEnv, pg: &TestPostgres) -> Daemon {
    Daemon::start(env, &["--database", &pg.url()])
}

/// A tools/call with extra headers (`Mcp-Project-Id`).
async fn call_with(http: &Http, headers: &[(&str, &str)], name: &str, args: Value) -> Reply {
    let message = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":args}});
    http.post_raw(message.to_string(), headers).await
}

async fn result_with(http: &Http, headers: &[(&str, &str)], name: &str, args: Value) -> Value {
    let reply = call_with(http, headers, name, args).await;
    assert_eq!(reply.status, 200, "{name}: {}", reply.text);
    reply.body.get("result").cloned().unwrap_or_else(|| panic!("{name}: no result in {}", reply.text))
}

fn entity(name: &str) -> Value {
    json!({"entities":[{"name":name,"entityType":"t","observations":[]}]})
}

/// Rows of a table as the `memory` role sees them.
fn count(pg: &TestPostgres, table: &str) -> usize {
    pg.psql(&format!("SELECT count(*) FROM {table}")).trim().parse().expect("a count")
}

#[tokio::test]
async fn answers_equal_the_official_server_and_the_sqlite_daemon() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let team = team_daemon(&env, &pg);
    let official: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("official/server-memory-2026.8.31.json")).unwrap())
            .unwrap();
    let http = Http::new(team.url()).with_project(&env.project("dropin"));
    let list = http.post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await;
    assert_eq!(list.body["result"], official["tools_list"]);
    for (step, recorded) in official["calls"].as_array().unwrap().iter().enumerate() {
        let ours = http.call_tool(recorded["tool"].as_str().unwrap(), recorded["arguments"].clone()).await;
        let theirs = &recorded["result"];
        let what = format!("step {step} ({}: {})", recorded["tool"], recorded["comment"]);
        assert_eq!(ours["content"], theirs["content"], "{what}: text differs");
        assert_eq!(ours["isError"], theirs["isError"], "{what}");
        assert_eq!(ours["structuredContent"], theirs["structuredContent"], "{what}");
    }

    // Calls the fixture does not make, on both daemons: Unicode case folding, LIKE's own
    // characters in needles, texts far beyond a b-tree entry's 2.7 kB, repeats, cascades.
    let solo = Daemon::start(&env, &[]);
    let project = env.project("differential");
    let (a, b) = (Http::new(team.url()).with_project(&project), Http::new(solo.url()).with_project(&project));
    let long = "long observation ".repeat(1000);
    let calls = [
        (
            "create_entities",
            json!({"entities":[
            {"name":"Müller","entityType":"PERSON","observations":["ΣΑΣ lives in Köln", long.clone()]},
            {"name":"100%_done\\x","entityType":"task","observations":["50% of a_b","back\\slash"]},
            {"name":"Zoë","entityType":"person","observations":[]},
            {"name":long.clone(),"entityType":"long","observations":[long.clone(), long.clone()]}]}),
        ),
        (
            "create_relations",
            json!({"relations":[
            {"from":"Müller","to":"Zoë","relationType":"knows"},
            {"from":"Zoë","to":"ghost","relationType":"haunts"},
            {"from":"ghost","to":"nobody","relationType":"unseen"},
            {"from":long.clone(),"to":"Müller","relationType":"mentions"}]}),
        ),
        ("search_nodes", json!({"query":"MÜL"})),
        ("search_nodes", json!({"query":"σας"})),
        ("search_nodes", json!({"query":"%"})),
        ("search_nodes", json!({"query":"_"})),
        ("search_nodes", json!({"query":"\\"})),
        ("search_nodes", json!({"query":"a_b"})),
        ("search_nodes", json!({"query":"ë"})),
        ("search_nodes", json!({"query":"zz"})),
        ("search_nodes", json!({"query":""})),
        ("search_nodes", json!({"query":"observation long"})),
        ("open_nodes", json!({"names":["Zoë","ghost","Müller","Zoë"]})),
        ("add_observations", json!({"observations":[{"entityName":"Zoë","contents":["new","new","Köln"]}]})),
        (
            "add_observations",
            json!({"observations":[
            {"entityName":"Zoë","contents":["never"]},{"entityName":"missing","contents":["x"]}]}),
        ),
        ("search_nodes", json!({"query":"never"})),
        (
            "delete_observations",
            json!({"deletions":[{"entityName":"Müller","observations":["ΣΑΣ lives in Köln","absent"]}]}),
        ),
        ("delete_relations", json!({"relations":[{"from":"Zoë","to":"ghost","relationType":"haunts"}]})),
        ("delete_entities", json!({"entityNames":["Müller","nobody-at-all"]})),
        ("read_graph", json!({})),
        ("create_entities", json!({"entities":[{"name":"Müller","entityType":"again","observations":["back"]}]})),
        ("read_graph", json!({})),
        ("search_nodes", json!({"query":"köln"})),
    ];
    for (step, (tool, args)) in calls.iter().enumerate() {
        let (ours, theirs) = (a.call_tool(tool, args.clone()).await, b.call_tool(tool, args.clone()).await);
        assert_eq!(ours, theirs, "step {step} ({tool}): PostgreSQL and SQLite answer differently");
    }
}

#[tokio::test]
async fn projects_are_keyed_by_project_id_else_by_the_path_as_sent() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let team = team_daemon(&env, &pg);
    assert_eq!(team.health().await["database"], format!("postgres://memory@127.0.0.1:{}/memory", pg.port()));
    let http = Http::new(team.url());
    let id = ("mcp-project-id", "github.com/org/repo");
    // Two clones of one repository at paths that do not even exist on this machine.
    let clone_a = [id, ("mcp-project-path", "/home/alice/src/repo")];
    let clone_b = [id, ("mcp-project-path", "/Users/bob/work/repo")];
    result_with(&http, &clone_a, "create_entities", entity("shared")).await;
    let seen = result_with(&http, &clone_b, "read_graph", json!({})).await;
    assert_eq!(entity_names(&seen["structuredContent"]), ["shared"], "two clones share one memory");

    let other = [("mcp-project-id", "github.com/org/other")];
    let seen = result_with(&http, &other, "read_graph", json!({})).await;
    assert!(entity_names(&seen["structuredContent"]).is_empty(), "two repositories never share");

    // No id: the path header as sent is the project (no file-system access).
    let by_path = [("mcp-project-path", "%2Fno%2Fsuch%2Fdir")];
    result_with(&http, &by_path, "create_entities", entity("by path")).await;
    let raw = [("mcp-project-path", "/no/such/dir")];
    let seen = result_with(&http, &raw, "read_graph", json!({})).await;
    assert_eq!(entity_names(&seen["structuredContent"]), ["by path"], "percent-encoding names the same project");
    let global = result_with(&http, &[], "read_graph", json!({})).await;
    assert!(entity_names(&global["structuredContent"]).is_empty(), "the global memory is its own");
    result_with(&http, &[], "create_entities", entity("global")).await;
    assert_eq!(count(&pg, "memory_projects"), 4, "{}", pg.psql("SELECT key FROM memory_projects"));
    assert_eq!(count(&pg, "memory_entities"), 3);

    let bad = call_with(&http, &[("mcp-project-id", "a%00b")], "read_graph", json!({})).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("Mcp-Project-Id") && bad.text.contains("NUL"), "{}", bad.text);
    let long = "x".repeat(5000);
    let bad = call_with(&http, &[("mcp-project-id", &long)], "read_graph", json!({})).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("longer than 4096 bytes"), "{}", bad.text);
    // A text PostgreSQL cannot hold is refused by name, and the daemon serves on.
    let nul = result_with(&http, &[id], "create_entities", entity("a\u{0}b")).await;
    assert_eq!(nul["isError"], true);
    assert!(nul["content"][0]["text"].as_str().unwrap().contains("NUL"), "{nul}");
    assert_eq!(
        entity_names(&result_with(&http, &[id], "read_graph", json!({})).await["structuredContent"]),
        ["shared"]
    );
}

#[tokio::test]
async fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    // MEMORY_DATABASE_URL stands for --database.
    let team = Daemon::start_with(&env, &[], |cmd| {
        cmd.env("MEMORY_DATABASE_URL", pg.url());
    });
    assert_eq!(team.health().await["database"], format!("postgres://memory@127.0.0.1:{}/memory", pg.port()));
    assert_eq!(pg.psql("SELECT version FROM memory_schema").trim(), "1");
    assert_eq!(pg.psql("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1"), "pg_trgm");
    drop(team);
    // A second daemon on the same database migrates nothing and serves.
    let again = team_daemon(&env, &pg);
    drop(again);

    pg.psql("UPDATE memory_schema SET version = 99");
    let out = env
        .command(&bin("memory-server"))
        .args(["serve", "--port", &e2e::free_port().to_string(), "--database", &pg.url()])
        .stdin(Stdio::null())
        .output()
        .expect("run memory-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a newer schema must be refused: {stderr}");
    assert!(stderr.contains("schema version 99") && stderr.contains("newer"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{}/memory", pg.port())), "names the database: {stderr}");

    // A password never appears in messages; an unreachable database is named at start.
    let closed = e2e::free_port();
    let out = env
        .command(&bin("memory-server"))
        .args(["serve", "--port", &e2e::free_port().to_string()])
        .args(["--database", &format!("postgres://memory:s3cret@127.0.0.1:{closed}/memory")])
        .stdin(Stdio::null())
        .output()
        .expect("run memory-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("postgres://memory@127.0.0.1:{closed}/memory is unavailable")), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// Three daemons on one database: 16 clients × 100 writes spread over them give exactly
/// 1,600 rows, and a subscriber on the first hears a write made through the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_share_one_database() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let daemons: Vec<Daemon> = (0..3).map(|_| team_daemon(&env, &pg)).collect();
    let project = env.project("team");

    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &daemons[0].url(), &project).await;
    subscribe_graph(&listener).await;
    let writer = connect((), &daemons[2].url(), &project).await;
    let wrote = Instant::now();
    call(&writer, "create_entities", json!({"entities":[{"name":"via C","entityType":"t","observations":[]}]})).await;
    let uri = tokio::time::timeout(PATIENCE, updates.recv()).await.expect("the update arrives").unwrap();
    let latency = wrote.elapsed();
    assert_eq!(uri, "memory://knowledge-graph");
    assert!(latency < Duration::from_secs(1), "a write through C reached A's subscriber after {latency:?}");
    eprintln!("cross-daemon notification after {latency:?}");

    let urls: Vec<String> = daemons.iter().map(Daemon::url).collect();
    let wave = |names: fn(usize, usize) -> String| {
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let http = Http::new(urls[c % 3].clone()).with_project(&project);
                tokio::spawn(async move {
                    let mut errors = 0;
                    for i in 0..100 {
                        if http.call_tool("create_entities", entity(&names(c, i))).await["isError"] == true {
                            errors += 1;
                        }
                    }
                    errors
                })
            })
            .collect();
        async move {
            let mut errors = 0;
            for c in clients {
                errors += c.await.unwrap();
            }
            errors
        }
    };
    assert_eq!(wave(|c, i| format!("c{c}-{i}")).await, 0, "errors in the wave of writes");
    assert_eq!(count(&pg, "memory_entities"), 1600 + 1, "16 × 100 writes and the one above");
    // The same 100 names from all 16 clients at once: the daemons race on each unique
    // key, and exactly one row wins each race.
    assert_eq!(wave(|_, i| format!("raced-{i}")).await, 0, "errors in the racing wave");
    assert_eq!(count(&pg, "memory_entities"), 1601 + 100);
    let graph = Http::new(urls[1].clone()).with_project(&project).read_graph().await;
    assert_eq!(entity_names(&graph).len(), 1701);

    // Fresh projects first touched through all three daemons at once: each gets one row
    // (a daemon that loses the race to create it finds the winner's), and no call fails.
    let mut first_touches = Vec::new();
    for p in 0..20 {
        for url in &urls {
            let http = Http::new(url.clone());
            first_touches.push(tokio::spawn(async move {
                let id = format!("fresh-{p}");
                result_with(&http, &[("mcp-project-id", &id)], "create_entities", entity("x")).await
            }));
        }
    }
    for t in first_touches {
        let result = t.await.unwrap();
        assert!(result.get("isError").is_none_or(|e| e == false), "{result}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM memory_projects WHERE key LIKE 'fresh-%'"), "20");
    listener.cancel().await.unwrap();
    writer.cancel().await.unwrap();
}

/// kill -9 of a daemon in the middle of a wave of writes loses no write it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_daemon_loses_no_acknowledged_write() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let victim = team_daemon(&env, &pg);
    let survivor = team_daemon(&env, &pg);
    let project = env.project("kill");
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = Http::new(victim.url()).with_project(&project);
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("w{w}-{i}");
                let message = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                    "params":{"name":"create_entities","arguments":entity(&name)}});
                let sent = http
                    .client
                    .post(&http.url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-project-path", e2e::encode_project(http.project.as_ref().unwrap()))
                    .body(message.to_string())
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                let Ok(body) = resp.json::<Value>().await else { return };
                if body["result"]["isError"] != true && body["result"].is_object() {
                    acked.lock().unwrap().insert(name);
                }
            }
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "writes were not acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.signal(libc::SIGKILL);
    for w in writers {
        let _ = tokio::time::timeout(PATIENCE, w).await.expect("writers stop once the daemon is gone");
    }
    let acked = acked.lock().unwrap().clone();
    let stored: BTreeSet<String> =
        entity_names(&Http::new(survivor.url()).with_project(&project).read_graph().await).into_iter().collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    eprintln!("{} acknowledged, {} stored", acked.len(), stored.len());
}

/// PostgreSQL restarted under a serving daemon: calls meanwhile get a JSON-RPC error
/// naming the database, promptly; afterwards the same daemon serves again, keeps every
/// acknowledged write, and its subscribers hear writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_going_away_and_coming_back() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let team = team_daemon(&env, &pg);
    let project = env.project("outage");
    let http = Http::new(team.url()).with_project(&project);
    for i in 0..20 {
        http.call_tool("create_entities", entity(&format!("before-{i}"))).await;
    }
    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &team.url(), &project).await;
    subscribe_graph(&listener).await;

    pg.stop();
    for tool in ["create_entities", "read_graph", "search_nodes"] {
        let started = Instant::now();
        let reply = call_with(&http, &[], tool, json!({"entities":[], "query": "x"})).await;
        assert!(started.elapsed() < PATIENCE, "{tool} hung for {:?}", started.elapsed());
        let error = &reply.body["error"];
        assert!(error.is_object(), "{tool} during the outage: {}", reply.text);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("postgres://memory@127.0.0.1:{}/memory is unavailable", pg.port())),
            "{tool}: {message}"
        );
    }
    assert!(team.health().await["status"] == "ok", "the daemon serves on");

    pg.start_again();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = call_with(&http, &[], "create_entities", entity("after")).await;
        if reply.body["result"]["isError"] == false || reply.body["result"].get("structuredContent").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon never served again: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names = entity_names(&http.read_graph().await);
    for i in 0..20 {
        assert!(names.contains(&format!("before-{i}")), "before-{i} lost: {names:?}");
    }
    assert!(names.contains(&"after".to_owned()));

    // The LISTEN connection comes back too (bounded by its backoff): drain what the
    // reconnect announced, then a new write is heard.
    tokio::time::sleep(Duration::from_secs(6)).await;
    while updates.try_recv().is_ok() {}
    http.call_tool("create_entities", entity("heard")).await;
    let uri = tokio::time::timeout(PATIENCE, updates.recv()).await.expect("subscribers hear writes again").unwrap();
    assert_eq!(uri, "memory://knowledge-graph");
    listener.cancel().await.unwrap();
}

/// Runs a transfer command that must succeed; its stdout (the export, or the report).
fn memory_server(env: &TestEnv, args: &[&str]) -> String {
    let out = env.command(&bin("memory-server")).args(args).stdin(Stdio::null()).output().expect("run memory-server");
    assert!(out.status.success(), "memory-server {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn import_export_backup_and_copy_move_memories_in_and_out() {
    let pg = TestPostgres::start();
    let env = TestEnv::new();
    let url = pg.url();
    // The same graph in a SQLite project (through a plain daemon) ...
    let solo = Daemon::start(&env, &[]);
    let project = env.project("source");
    let sqlite = Http::new(solo.url()).with_project(&project);
    sqlite
        .call_tool(
            "create_entities",
            json!({"entities":[{"name":"Ada","entityType":"person","observations":["wrote notes","Ünïcödé"]},
                               {"name":"Engine","entityType":"machine","observations":[]}]}),
        )
        .await;
    sqlite
        .call_tool("create_relations", json!({"relations":[{"from":"Ada","to":"Engine","relationType":"programs"}]}))
        .await;
    drop(solo);
    let db = project.join(".claude/memory.db");
    let db = db.to_str().unwrap();
    let sqlite_export = memory_server(&env, &["export", "--db", db]);

    // ... copied into PostgreSQL, twice: the second run adds nothing.
    let first =
        memory_server(&env, &["copy", "--from-db", db, "--to-database", &url, "--project-id", "github.com/o/r"]);
    assert!(first.contains("entities: 2 added"), "{first}");
    let second =
        memory_server(&env, &["copy", "--from-db", db, "--to-database", &url, "--project-id", "github.com/o/r"]);
    assert!(
        second.contains("entities: 0 added, 2 already present") && second.contains("relations: 0 added"),
        "{second}"
    );

    let team_export = memory_server(&env, &["export", "--database", &url, "--project-id", "github.com/o/r"]);
    assert_eq!(team_export, sqlite_export, "export of the copy equals the SQLite export");

    // A daemon sees the copy under that id.
    let team = team_daemon(&env, &pg);
    let http = Http::new(team.url());
    let graph = result_with(&http, &[("mcp-project-id", "github.com/o/r")], "read_graph", json!({})).await;
    assert_eq!(entity_names(&graph["structuredContent"]), ["Ada", "Engine"]);

    // import into another project, export it again: the same lines.
    let file = env.dir.path().join("memory.jsonl");
    std::fs::write(&file, &sqlite_export).unwrap();
    let imported =
        memory_server(&env, &["import", file.to_str().unwrap(), "--database", &url, "--project-id", "imported"]);
    assert!(imported.contains("entities: 2 added"), "{imported}");
    assert_eq!(memory_server(&env, &["export", "--database", &url, "--project-id", "imported"]), sqlite_export);

    // backup to a new SQLite file, readable as any SQLite memory.
    let backup = env.dir.path().join("backup.db");
    memory_server(
        &env,
        &["backup", "--database", &url, "--project-id", "github.com/o/r", "-o", backup.to_str().unwrap()],
    );
    assert_eq!(memory_server(&env, &["export", "--db", backup.to_str().unwrap()]), sqlite_export);
    let again = env
        .command(&bin("memory-server"))
        .args(["backup", "--database", &url, "--project-id", "github.com/o/r", "-o", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing backup file is not overwritten");

    // A malformed file imports nothing and names its line.
    std::fs::write(&file, "{\"type\":\"entity\",\"name\":\"x\",\"entityType\":\"t\",\"observations\":[]}\nnot json\n")
        .unwrap();
    let out = env
        .command(&bin("memory-server"))
        .args(["import", file.to_str().unwrap(), "--database", &url, "--project-id", "broken"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(memory_server(&env, &["export", "--database", &url, "--project-id", "broken"]), "");
}

/// `sslmode=require` (or libpq's verify-full) with `sslrootcert`: the daemon and the
/// transfer commands speak TLS to a server that takes nothing else, verifying its
/// certificate; without the CA the certificate is refused, by name.
#[tokio::test]
async fn tls_to_the_database_is_verified() {
    let pg = TestPostgres::start();
    let ca = tls::TestCa::new("team-memory-test-ca");
    pg.require_tls(&ca.cert_pem, &ca.key_pem);
    let env = TestEnv::new();
    let ca_file = env.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let base = pg.url();

    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca_file.display());
    let team = Daemon::start(&env, &["--database", &url]);
    let http = Http::new(team.url());
    result_with(&http, &[("mcp-project-id", "tls")], "create_entities", entity("over tls")).await;
    let ssl = pg.psql_admin(
        "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.application_name = 'memory-server'",
    );
    assert_eq!(ssl.trim(), "t", "every memory-server connection uses TLS");
    let exported = memory_server(&env, &["export", "--database", &url, "--project-id", "tls"]);
    assert!(exported.contains("over tls"), "{exported}");
    drop(team);

    // The same without the CA: the server's certificate is not trusted, and that is said.
    let out = env
        .command(&bin("memory-server"))
        .args(["serve", "--port", &e2e::free_port().to_string(), "--database", &format!("{base}?sslmode=require")])
        .stdin(Stdio::null())
        .output()
        .expect("run memory-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an untrusted certificate must be refused: {stderr}");
    assert!(stderr.contains("is unavailable") && stderr.to_lowercase().contains("certificate"), "{stderr}");
    // Without TLS the server takes no connection at all (hostssl only).
    let out = env
        .command(&bin("memory-server"))
        .args(["serve", "--port", &e2e::free_port().to_string(), "--database", &format!("{base}?sslmode=disable")])
        .stdin(Stdio::null())
        .output()
        .expect("run memory-server");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A CA file that is not there is named at once (exit status 2, a usage error).
    let missing = format!("{base}?sslmode=require&sslrootcert=/no/such/ca.pem");
    let out = env
        .command(&bin("memory-server"))
        .args(["serve", "--port", &e2e::free_port().to_string(), "--database", &missing])
        .stdin(Stdio::null())
        .output()
        .expect("run memory-server");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sslrootcert /no/such/ca.pem"));
}
