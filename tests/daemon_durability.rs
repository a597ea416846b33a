//! Durability of the memory daemon's SQLite storage, driven through the real binary:
//! many concurrent writers in two daemon processes on the same files lose nothing and
//! never see `SQLITE_BUSY`; `kill -9` mid-load loses no acknowledged write and leaves a
//! sound file; a `memory.db` written by the Node server `@pepk/mcp-memory-sqlite` is
//! adopted in place without loss, and one from a newer schema is refused untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Daemon, Http, PATIENCE, TestEnv, encode_project, fixture};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Why a tool call did not produce a result.
#[derive(Debug)]
enum CallError {
    /// No complete HTTP answer (connection refused or reset, truncated body, timeout):
    /// expected once a daemon has been killed, a failure otherwise.
    Transport(String),
    /// The daemon answered, but not with a successful result: an HTTP error status, a
    /// JSON-RPC error or `isError: true`. Always a failure.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport: {m}"),
            CallError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// An `Http` whose requests give up after PATIENCE, so a hung daemon fails the test
/// instead of hanging it.
fn client(daemon: &Daemon, project: Option<&Path>) -> Http {
    let mut http = Http::new(daemon.url());
    http.client = reqwest::Client::builder().no_proxy().timeout(PATIENCE).build().unwrap();
    http.project = project.map(Path::to_owned);
    http
}

/// Calls a tool without panicking on any failure, so load tests can record every one.
async fn try_call(http: &Http, name: &str, arguments: Value) -> Result<Value, CallError> {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":arguments}});
    let mut req = http
        .client
        .post(&http.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(p) = &http.project {
        req = req.header("mcp-project-path", encode_project(p));
    }
    if let Some(s) = &http.session {
        req = req.header("mcp-session-id", s);
    }
    let exchange = async {
        let resp = req.body(body.to_string()).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    };
    let (status, text) = match tokio::time::timeout(PATIENCE, exchange).await {
        Err(_) => return Err(CallError::Transport(format!("{name}: no answer within {PATIENCE:?}"))),
        Ok(Err(e)) => return Err(CallError::Transport(format!("{name}: {e}"))),
        Ok(Ok(answer)) => answer,
    };
    if status != 200 {
        return Err(CallError::Failed(format!("{name}: HTTP {status}: {text}")));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| CallError::Failed(format!("{name}: body is not JSON ({e}): {text}")))?;
    if let Some(error) = body.get("error") {
        return Err(CallError::Failed(format!("{name}: JSON-RPC error {error}")));
    }
    let result = body.get("result").ok_or_else(|| CallError::Failed(format!("{name}: no result in {text}")))?;
    if result.get("isError") == Some(&Value::Bool(true)) {
        return Err(CallError::Failed(format!("{name}: isError: {}", result["content"][0]["text"])));
    }
    Ok(result.clone())
}

/// Calls a tool that must succeed and returns its structured content.
async fn call_ok(http: &Http, name: &str, arguments: Value) -> Value {
    match try_call(http, name, arguments).await {
        Ok(result) => result["structuredContent"].clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A graph as a comparable value: entity name -> (type, observations in order), and
/// the set of relations.
#[derive(Debug, Default, PartialEq)]
struct Graph {
    entities: BTreeMap<String, (String, Vec<String>)>,
    relations: BTreeSet<(String, String, String)>,
}

impl Graph {
    /// From a `read_graph` structured result; panics on duplicate entity names.
    fn from_json(graph: &Value) -> Graph {
        let mut out = Graph::default();
        for e in graph["entities"].as_array().expect("entities array") {
            let name = e["name"].as_str().unwrap().to_owned();
            let obs = e["observations"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_owned()).collect();
            let previous = out.entities.insert(name.clone(), (e["entityType"].as_str().unwrap().to_owned(), obs));
            assert!(previous.is_none(), "entity {name:?} listed twice");
        }
        for r in graph["relations"].as_array().expect("relations array") {
            let rel = (
                r["from"].as_str().unwrap().into(),
                r["to"].as_str().unwrap().into(),
                r["relationType"].as_str().unwrap().into(),
            );
            assert!(out.relations.insert(rel.clone()), "relation {rel:?} listed twice");
        }
        out
    }

    /// Straight from the tables, as any SQLite reader (the Node server) sees them.
    fn from_db(conn: &Connection) -> Graph {
        let mut out = Graph::default();
        let mut stmt = conn.prepare("SELECT name, entity_type FROM entities ORDER BY rowid").unwrap();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap() {
            let (name, ty) = row.unwrap();
            out.entities.insert(name, (ty, Vec::new()));
        }
        let mut stmt = conn.prepare("SELECT entity_name, content FROM observations ORDER BY id").unwrap();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap() {
            let (name, content) = row.unwrap();
            out.entities
                .get_mut(&name)
                .unwrap_or_else(|| panic!("observation of missing entity {name:?}"))
                .1
                .push(content);
        }
        let mut stmt = conn.prepare("SELECT from_entity, to_entity, relation_type FROM relations ORDER BY id").unwrap();
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap() {
            out.relations.insert(row.unwrap());
        }
        out
    }
}

fn db_of(project: &Path) -> PathBuf {
    project.join(".claude").join("memory.db")
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_read_only(db: &Path) -> Connection {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn integrity_check(conn: &Connection) -> String {
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.join("\n")
}

/// The highest schema version among `migrations/NNNN_*.sql`: what the daemon stamps.
fn latest_migration() -> u32 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("migrations");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".sql").then(|| name[..4].parse::<u32>().unwrap())
        })
        .max()
        .expect("at least one migration")
}

/// `PRAGMA user_version` read from the file header (bytes 60..64), without SQLite, so
/// that reading it cannot create `-wal`/`-shm` files.
fn header_user_version(db: &Path) -> u32 {
    let bytes = std::fs::read(db).unwrap();
    u32::from_be_bytes(bytes[60..64].try_into().unwrap())
}

/// Log lines that would betray lock trouble or failed tool calls.
fn assert_clean_log(daemon: &Daemon) {
    let log = daemon.log_text();
    for bad in ["database is locked", "SQLITE_BUSY", "stayed locked", "tool call failed", "panicked"] {
        assert!(!log.contains(bad), "daemon log mentions {bad:?}:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------
// 1. Concurrency
// ---------------------------------------------------------------------------------------

/// Concurrent clients of the first daemon, split over two projects.
const CLIENTS: usize = 16;
/// Concurrent clients of the second daemon (another process, same files).
const OTHER_PROCESS_CLIENTS: usize = 4;
/// Writes per client: alternately `create_entities` and `add_observations`.
const WRITES: usize = 200;

/// One client's load: `WRITES` writes, each checked for exactly the expected result.
/// Halfway it waits until every client (of both processes) is halfway, so the two
/// processes' writes are interleaved whatever the scheduling. Returns every failure it
/// saw (none expected).
async fn write_load(http: Http, tag: String, halfway: Arc<tokio::sync::Barrier>) -> Vec<String> {
    let mut failures = Vec::new();
    for k in 0..WRITES {
        if k == WRITES / 2 && tokio::time::timeout(PATIENCE, halfway.wait()).await.is_err() {
            failures.push(format!("{tag}: the other clients did not get halfway"));
        }
        let (tool, args, expected) = if k % 2 == 0 {
            let entity =
                json!({"name": format!("{tag}-e{k}"), "entityType": "load", "observations": [format!("{tag}-o{k}")]});
            ("create_entities", json!({"entities": [entity.clone()]}), json!({"entities": [entity]}))
        } else {
            let (name, content) = (format!("{tag}-e{}", k - 1), format!("{tag}-o{k}"));
            (
                "add_observations",
                json!({"observations": [{"entityName": name, "contents": [content]}]}),
                json!({"results": [{"entityName": name, "addedObservations": [content]}]}),
            )
        };
        match try_call(&http, tool, args).await {
            Ok(result) if result["structuredContent"] == expected => {}
            Ok(result) => failures.push(format!("{tag} write {k}: unexpected result {result}")),
            Err(e) => failures.push(format!("{tag} write {k}: {e}")),
        }
    }
    failures
}

/// What one client's load leaves behind.
fn expected_entities(tag: &str, into: &mut BTreeMap<String, (String, Vec<String>)>) {
    for k in (0..WRITES).step_by(2) {
        let obs = vec![format!("{tag}-o{k}"), format!("{tag}-o{}", k + 1)];
        into.insert(format!("{tag}-e{k}"), ("load".to_owned(), obs));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_two_processes_lose_nothing_and_never_see_busy() {
    let env = TestEnv::new();
    let first = Daemon::start(&env, &[]);
    let second = Daemon::start(&env, &[]);
    assert_ne!(first.port, second.port);
    let projects = [env.project("busy-one"), env.project("busy-two")];

    // Every client is set up (half with a session, half stateless) before any writes,
    // so the writes really overlap.
    let mut loads = Vec::new();
    let mut expected: [Graph; 2] = Default::default();
    let halfway = Arc::new(tokio::sync::Barrier::new(CLIENTS + OTHER_PROCESS_CLIENTS));
    for (daemon, prefix, count) in [(&first, "a", CLIENTS), (&second, "b", OTHER_PROCESS_CLIENTS)] {
        for i in 0..count {
            let project = &projects[i % 2];
            let mut http = client(daemon, Some(project));
            if i % 4 < 2 {
                let init = http.initialize("2025-11-25").await;
                assert_eq!(init.status, 200, "{}", init.text);
                assert!(http.session.is_some(), "initialize issues a session");
                let ack = http.post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
                assert_eq!(ack.status, 202, "{}", ack.text);
            }
            let tag = format!("{prefix}{i}");
            expected_entities(&tag, &mut expected[i % 2].entities);
            loads.push((tag.clone(), write_load(http, tag, halfway.clone())));
        }
    }
    let handles: Vec<_> = loads.into_iter().map(|(tag, load)| (tag, tokio::spawn(load))).collect();
    let mut failures = Vec::new();
    for (tag, handle) in handles {
        match handle.await {
            Ok(f) => failures.extend(f),
            Err(e) => failures.push(format!("client {tag} panicked: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the writes failed, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );

    let per_project = (CLIENTS + OTHER_PROCESS_CLIENTS) / 2 * WRITES / 2;
    for (project, expected) in projects.iter().zip(&expected) {
        assert_eq!(expected.entities.len(), per_project);
        // Both processes serve the same, complete graph.
        for daemon in [&first, &second] {
            let graph = Graph::from_json(&call_ok(&client(daemon, Some(project)), "read_graph", json!({})).await);
            assert_eq!(
                graph.entities.len(),
                expected.entities.len(),
                "entity count via the daemon on port {}",
                daemon.port
            );
            assert!(
                graph == *expected,
                "the graph of {} via port {} differs from the writes",
                project.display(),
                daemon.port
            );
        }
        // And so do the tables themselves.
        let conn = open_read_only(&db_of(project));
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as usize;
        assert_eq!(count("SELECT count(*) FROM entities"), per_project);
        assert_eq!(count("SELECT count(*) FROM observations"), per_project * 2);
        assert_eq!(count("SELECT count(*) FROM relations"), 0);
        assert!(Graph::from_db(&conn) == *expected, "the tables of {} differ from the writes", project.display());
        // Both processes wrote this file in both halves of the load (the barrier orders
        // every first-half write before every second-half one).
        let order: Vec<(String, usize)> = conn
            .prepare("SELECT name FROM entities ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|name| {
                let name = name.unwrap();
                let (tag, k) = name.split_once("-e").unwrap();
                (tag[..1].to_owned(), k.parse().unwrap())
            })
            .collect();
        let first_half = order.iter().take_while(|(_, k)| *k < WRITES / 2).count();
        assert_eq!(first_half, per_project / 2, "every first-half write precedes every second-half one");
        for half in [&order[..first_half], &order[first_half..]] {
            for process in ["a", "b"] {
                assert!(half.iter().any(|(p, _)| p == process), "process {process} wrote in each half");
            }
        }
        assert_eq!(integrity_check(&conn), "ok");
    }
    assert_clean_log(&first);
    assert_clean_log(&second);
}

// ---------------------------------------------------------------------------------------
// 2. Crash safety
// ---------------------------------------------------------------------------------------

/// kill -9 rounds, each against a daemon restarted on the previous round's files.
const ROUNDS: usize = 5;
const CRASH_WRITERS: usize = 4;
/// Bound on one writer's loop in one round (it normally stops at the kill, far sooner).
const MAX_STEPS: usize = 50_000;

/// A write the daemon acknowledged (HTTP 200 with a successful result).
#[derive(Debug, Clone)]
enum Ack {
    Entity(String),
    Observation(String, String),
    Relation(String, String),
}

#[derive(Default)]
struct CrashLog {
    acks: Mutex<Vec<Ack>>,
    ack_count: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Set just before SIGKILL: transport errors are expected from then on.
    killed: AtomicBool,
    /// Writers whose request the kill cut off (all of them, normally).
    cut_off: AtomicUsize,
}

impl CrashLog {
    fn ack(&self, ack: Ack) {
        self.acks.lock().unwrap().push(ack);
        self.ack_count.fetch_add(1, Ordering::SeqCst);
    }
}

/// The two observations every crash-load entity is created with, in one transaction.
fn birth_observations(name: &str) -> [String; 2] {
    [format!("{name} born"), format!("{name} named")]
}

/// Writes until the daemon is gone: per step an entity (with two observations), a
/// third observation on it, and a relation to the previous step's entity.
async fn crash_load(http: Http, tag: String, log: Arc<CrashLog>) {
    let mut previous: Option<String> = None;
    for step in 0..MAX_STEPS {
        let name = format!("{tag}-{step}");
        let mut writes = vec![
            (
                "create_entities",
                json!({"entities":[{"name": name, "entityType": "crash", "observations": birth_observations(&name)}]}),
                Ack::Entity(name.clone()),
            ),
            (
                "add_observations",
                json!({"observations":[{"entityName": name, "contents": [format!("{name} grown")]}]}),
                Ack::Observation(name.clone(), format!("{name} grown")),
            ),
        ];
        if let Some(prev) = &previous {
            writes.push((
                "create_relations",
                json!({"relations":[{"from": name, "to": prev, "relationType": "follows"}]}),
                Ack::Relation(name.clone(), prev.clone()),
            ));
        }
        for (tool, args, ack) in writes {
            match try_call(&http, tool, args).await {
                Ok(_) => log.ack(ack),
                Err(CallError::Transport(_)) if log.killed.load(Ordering::SeqCst) => {
                    log.cut_off.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    log.failures.lock().unwrap().push(format!("{tag}: {e}"));
                    return;
                }
            }
        }
        previous = Some(name);
    }
}

/// Checks that `graph` holds every acknowledged write and that every crash-load entity
/// it holds is whole (both observations of its creating transaction, in order).
fn assert_acks_present(graph: &Graph, acks: &[Ack], what: &str) {
    for ack in acks {
        let present = match ack {
            Ack::Entity(name) => graph.entities.contains_key(name),
            Ack::Observation(name, content) => graph.entities.get(name).is_some_and(|(_, obs)| obs.contains(content)),
            Ack::Relation(from, to) => graph.relations.contains(&(from.clone(), to.clone(), "follows".to_owned())),
        };
        assert!(present, "{what}: acknowledged write lost: {ack:?}");
    }
    for (name, (ty, obs)) in &graph.entities {
        assert_eq!(ty, "crash");
        assert_eq!(obs[..2], birth_observations(name), "{what}: {name} is not whole: {obs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_write() {
    let env = TestEnv::new();
    let project = env.project("crash");
    let db = db_of(&project);
    let mut daemon = Daemon::start(&env, &[]);
    let mut all_acks: Vec<Ack> = Vec::new();

    for round in 0..ROUNDS {
        let log = Arc::new(CrashLog::default());
        let writers: Vec<_> = (0..CRASH_WRITERS)
            .map(|w| tokio::spawn(crash_load(client(&daemon, Some(&project)), format!("r{round}w{w}"), log.clone())))
            .collect();

        // Let the load run for a while (a different amount each round), then kill -9.
        let target = 100 + 150 * round;
        let deadline = Instant::now() + PATIENCE;
        while log.ack_count.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            let failures = log.failures.lock().unwrap().clone();
            assert!(failures.is_empty(), "round {round}: failures before the kill: {failures:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(log.ack_count.load(Ordering::SeqCst) >= target, "round {round}: the load did not get going");
        log.killed.store(true, Ordering::SeqCst);
        daemon.signal(libc::SIGKILL);
        let status = daemon.wait_exit(PATIENCE).expect("the daemon dies of SIGKILL");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        for writer in writers {
            tokio::time::timeout(PATIENCE, writer).await.expect("writers stop once the daemon is gone").unwrap();
        }
        let failures = log.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "round {round}: failures before the kill: {failures:?}");
        assert_clean_log(&daemon);
        assert_eq!(log.cut_off.load(Ordering::SeqCst), CRASH_WRITERS, "round {round}: the kill cut every writer off");
        all_acks.extend(log.acks.lock().unwrap().iter().cloned());
        eprintln!("round {round}: killed after {} acknowledged writes", log.ack_count.load(Ordering::SeqCst));

        // The crash image as left on disk: the WAL was not folded back, so restarting
        // really exercises recovery. A copy is checked by an independent SQLite.
        let wal = sidecar(&db, "-wal");
        assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0), "round {round}: a -wal file is left by the kill");
        let image = env.dir.path().join(format!("crash-image-{round}"));
        std::fs::create_dir(&image).unwrap();
        std::fs::copy(&db, image.join("memory.db")).unwrap();
        std::fs::copy(&wal, image.join("memory.db-wal")).unwrap();
        {
            let conn = Connection::open(image.join("memory.db")).unwrap();
            assert_eq!(integrity_check(&conn), "ok", "round {round}: crash image");
            for fts in ["entity_fts", "observation_fts"] {
                conn.execute(&format!("INSERT INTO {fts}({fts}) VALUES ('integrity-check')"), [])
                    .unwrap_or_else(|e| panic!("round {round}: {fts} integrity-check: {e}"));
            }
            assert_acks_present(&Graph::from_db(&conn), &all_acks, &format!("round {round}, crash image"));
        }

        // Restart on the same files: every acknowledged write is served, the search
        // index agrees, and SQLite finds the file sound.
        daemon = Daemon::start(&env, &[]);
        let http = client(&daemon, Some(&project));
        let graph = Graph::from_json(&call_ok(&http, "read_graph", json!({})).await);
        assert_acks_present(&graph, &all_acks, &format!("round {round}, after restart"));
        if let Some(Ack::Entity(last)) = all_acks.iter().rev().find(|a| matches!(a, Ack::Entity(_))) {
            let found = call_ok(&http, "search_nodes", json!({"query": format!("{last} BORN")})).await;
            assert_eq!(found["entities"][0]["name"], json!(last), "round {round}: search finds {last}: {found}");
        }
        let conn = open_read_only(&db);
        assert_eq!(integrity_check(&conn), "ok", "round {round}: after restart");
        drop(conn);
        assert_clean_log(&daemon);
    }
    assert!(all_acks.len() >= ROUNDS * 100);
}

// ---------------------------------------------------------------------------------------
// 3. Adoption of the Node server's database
// ---------------------------------------------------------------------------------------

/// The Node server's tables and indexes, which must keep their exact definitions.
const NODE_SCHEMA: [&str; 6] =
    ["entities", "observations", "relations", "idx_observations_entity", "idx_relations_from", "idx_relations_to"];

/// type, name, table, root page and SQL of the Node server's schema objects.
fn node_schema(conn: &Connection) -> Vec<(String, String, String, i64, String)> {
    let mut stmt =
        conn.prepare("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master WHERE name = ?1").unwrap();
    NODE_SCHEMA
        .iter()
        .map(|name| {
            stmt.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

/// A project whose `.claude/memory.db` is a copy of the Node server's file.
fn project_with_node_db(env: &TestEnv, name: &str) -> PathBuf {
    let project = env.project(name);
    std::fs::create_dir_all(project.join(".claude")).unwrap();
    std::fs::copy(fixture("node-sqlite/memory.db"), db_of(&project)).unwrap();
    project
}

/// What `search_nodes` must return, computed by a plain scan of `graph` (a `read_graph`
/// result) with the official server's rule: lower-cased substring of name, type or an
/// observation; relations with at least one endpoint among the matches.
fn scan(graph: &Value, query: &str) -> Value {
    let q = query.to_lowercase();
    let entities: Vec<&Value> = graph["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let hit = |v: &Value| v.as_str().unwrap().to_lowercase().contains(&q);
            hit(&e["name"]) || hit(&e["entityType"]) || e["observations"].as_array().unwrap().iter().any(hit)
        })
        .collect();
    let names: BTreeSet<&str> = entities.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let relations: Vec<&Value> = graph["relations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| names.contains(r["from"].as_str().unwrap()) || names.contains(r["to"].as_str().unwrap()))
        .collect();
    json!({"entities": entities, "relations": relations})
}

/// Observation lists as sorted lists: the Node server listed them ordered by content.
fn with_sorted_observations(graph: &Value) -> Value {
    let mut graph = graph.clone();
    for e in graph["entities"].as_array_mut().unwrap() {
        let obs = e["observations"].as_array_mut().unwrap();
        obs.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    graph
}

#[tokio::test]
async fn adopts_a_node_server_database_in_place() {
    let env = TestEnv::new();
    let project = project_with_node_db(&env, "adopted");
    let db = db_of(&project);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("node-sqlite/expected-graph.json")).unwrap()).unwrap();

    // The schema as the Node server left it, read from a separate pristine copy.
    let pristine = env.dir.path().join("pristine.db");
    std::fs::copy(fixture("node-sqlite/memory.db"), &pristine).unwrap();
    let schema_before = node_schema(&open_read_only(&pristine));
    let schema_sql = std::fs::read_to_string(fixture("node-sqlite/schema.sql")).unwrap();
    for (_, name, _, _, sql) in &schema_before {
        assert!(schema_sql.contains(sql.as_str()), "{name} as in schema.sql");
    }
    assert_eq!(header_user_version(&db), 0, "the Node server does not version its schema");

    let daemon = Daemon::start(&env, &[]);
    let http = client(&daemon, Some(&project));

    // The same graph: entities and relations in the same order, the same observations.
    let graph = call_ok(&http, "read_graph", json!({})).await;
    let names = |g: &Value| e2e::entity_names(&json!({"entities": g["entities"]}));
    assert_eq!(names(&graph), names(&expected), "entity order");
    assert_eq!(graph["relations"], expected["relations"], "relations in order");
    assert_eq!(with_sorted_observations(&graph), with_sorted_observations(&expected), "entities and observations");

    // Upgraded in place: versioned, but the Node server's definitions (and root pages:
    // nothing was rebuilt) are untouched.
    let conn = open_read_only(&db);
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, latest_migration());
    assert_eq!(node_schema(&conn), schema_before, "the Node server's schema objects are unchanged");
    assert_eq!(integrity_check(&conn), "ok");
    // The migration indexed the adopted rows for search, and stored their lower-cased
    // text (JavaScript's lower-casing, not this plain connection's ASCII-only lower()).
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT count(*) FROM entity_fts"), count("SELECT count(*) FROM entities"));
    assert_eq!(count("SELECT count(*) FROM observation_fts"), count("SELECT count(*) FROM observations"));
    assert_eq!(count("SELECT count(*) FROM entity_text"), count("SELECT count(*) FROM entities"));
    assert_eq!(count("SELECT count(*) FROM observation_text"), count("SELECT count(*) FROM observations"));
    let stored: Vec<(String, String)> = conn
        .prepare("SELECT e.name, t.name_lc FROM entities e JOIN entity_text t ON t.id = e.rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(stored.iter().any(|(name, _)| !name.is_ascii()), "the fixture holds non-ASCII names");
    for (name, lower) in &stored {
        assert_eq!(lower, &name.to_lowercase(), "entity_text of {name}");
    }
    drop(conn);

    // search_nodes finds adopted data, through the index (three or more characters) and
    // through the short-query scan, exactly as a plain scan would.
    let queries = ["日本語", "東京に住", "東京", "MÜLLER", "käsespätzle", "straße", "zoë", "🦀", "UNION"];
    for query in queries {
        let found = call_ok(&http, "search_nodes", json!({"query": query})).await;
        let want = scan(&graph, query);
        if query != "UNION" {
            assert!(!want["entities"].as_array().unwrap().is_empty(), "{query} is a meaningful query");
        }
        assert_eq!(found, want, "search_nodes {query:?}");
    }
    // As in the official server, ß does not upper-case-match "SS".
    let none = call_ok(&http, "search_nodes", json!({"query": "STRASSE"})).await;
    assert_eq!(none, json!({"entities": [], "relations": []}));

    // New writes land in the adopted file and are searchable.
    call_ok(
        &http,
        "create_entities",
        json!({"entities":[{"name":"Ferris","entityType":"crab","observations":["Rust の マスコット"]}]}),
    )
    .await;
    let added = call_ok(
        &http,
        "add_observations",
        json!({"observations":[{"entityName":"工藤","contents":["Schreibt Rust 🦀"]}]}),
    )
    .await;
    assert_eq!(added["results"][0]["addedObservations"], json!(["Schreibt Rust 🦀"]));
    call_ok(
        &http,
        "create_relations",
        json!({"relations":[{"from":"Ferris","to":"Rustaceans","relationType":"mascot_of"}]}),
    )
    .await;
    let after = call_ok(&http, "read_graph", json!({})).await;
    let mut want = graph.clone();
    want["entities"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name":"Ferris","entityType":"crab","observations":["Rust の マスコット"]}));
    want["entities"][0]["observations"].as_array_mut().unwrap().push(json!("Schreibt Rust 🦀"));
    want["relations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"from":"Ferris","to":"Rustaceans","relationType":"mascot_of"}));
    assert_eq!(after, want);
    for query in ["マスコット", "SCHREIBT"] {
        let found = call_ok(&http, "search_nodes", json!({"query": query})).await;
        assert_eq!(found, scan(&after, query), "search_nodes {query:?} after new writes");
        assert!(!found["entities"].as_array().unwrap().is_empty());
    }

    // Any SQLite reader (such as the Node server) still sees the whole graph.
    let conn = open_read_only(&db);
    assert!(Graph::from_db(&conn) == Graph::from_json(&after));
    assert_eq!(integrity_check(&conn), "ok");
    assert_clean_log(&daemon);
}

#[tokio::test]
async fn refuses_a_database_from_a_newer_schema_untouched() {
    let env = TestEnv::new();
    let future = project_with_node_db(&env, "future");
    let db = db_of(&future);
    {
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    assert_eq!(header_user_version(&db), 99);
    for suffix in ["-wal", "-shm"] {
        assert!(!sidecar(&db, suffix).exists(), "closing the stamping connection removed {suffix}");
    }
    let before = std::fs::read(&db).unwrap();

    let daemon = Daemon::start(&env, &[]);
    let refused = client(&daemon, Some(&future));
    let healthy = client(&daemon, Some(&env.project("healthy")));
    let global = client(&daemon, None);

    let assert_refused = |outcome: Result<Value, CallError>, what: &str| match outcome {
        Err(CallError::Failed(message)) => {
            assert!(message.contains("isError"), "{what}: {message}");
            assert!(message.contains("newer") && message.contains("99"), "{what}: the message says why: {message}");
        }
        other => panic!("{what}: expected an isError result, got {other:?}"),
    };
    let entity = json!({"entities":[{"name":"x","entityType":"t","observations":["o"]}]});
    assert_refused(try_call(&refused, "create_entities", entity.clone()).await, "create_entities");
    assert_refused(try_call(&refused, "read_graph", json!({})).await, "read_graph");

    // The daemon keeps serving other projects and the global DB...
    for http in [&healthy, &global] {
        let created = call_ok(http, "create_entities", entity.clone()).await;
        assert_eq!(created, entity);
        assert_eq!(e2e::entity_names(&call_ok(http, "read_graph", json!({})).await), ["x"]);
    }
    // ...and keeps refusing the newer file, which it never modified.
    assert_refused(try_call(&refused, "search_nodes", json!({"query": "Müller"})).await, "search_nodes");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the newer file's bytes are unchanged");
    assert_eq!(header_user_version(&db), 99);
    for suffix in ["-wal", "-shm"] {
        assert!(!sidecar(&db, suffix).exists(), "no {suffix} file appeared next to the newer file");
    }
    assert_clean_log(&daemon);
}
