//! The graph browser (`GET /ui`, SPEC 2.11) in a real browser: headless Chromium
//! (Debian's `chromium`) driven by Playwright (`playwright-core`, installed under
//! `target/e2e-npm/`; it downloads no browser of its own) through
//! `fixtures/ui/driver.mjs`, against the real daemon. The browser scenarios run one at a
//! time, so the timings they report (first screen and keystrokes at 100,000 entities,
//! live updates) are not shared with another browser; they are printed, and checked
//! only against generous bounds.
//!
//! Also here, without a browser: the projects list surviving a restart, and
//! `mcp-manager status` printing the browser's URL.

#[path = "manager_common/mod.rs"]
mod manager_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{Daemon, Http, TestEnv, bin, node};
use serde_json::{Value, json};

/// One Chromium at a time.
static BROWSER: Mutex<()> = Mutex::new(());

/// How long one driver run may take (the 100,000-entity scenario types ~30 keys with
/// pauses and loads the page five times).
const DRIVER_LIMIT: Duration = Duration::from_secs(300);

const PLAYWRIGHT: (&str, &str) = ("playwright-core", "1.65.2");

/// Debian's Chromium (`CHROMIUM` overrides); `.ci/run` installs it when missing.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: these tests need Debian's chromium (apt-get install chromium)",
        path.display()
    );
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Runs one scenario of the driver with `config` (plus where the browser and Playwright
/// are) and returns its timings; panics with its output and the daemon's log on failure.
fn drive(env: &TestEnv, daemon: &Daemon, scenario: &str, mut config: Value) -> Value {
    let _one_browser = BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    let profile = env.dir.path().join(format!("chromium-{scenario}"));
    config["scenario"] = scenario.into();
    config["base"] = format!("http://127.0.0.1:{}", daemon.port).into();
    config["chromium"] = chromium().display().to_string().into();
    config["playwright"] = node::npm_package(PLAYWRIGHT.0, PLAYWRIGHT.1).display().to_string().into();
    config["profile"] = profile.display().to_string().into();
    let mut cmd = env.command(&node::node());
    cmd.arg(workspace().join("tests/fixtures/ui/driver.mjs"))
        .env("UI_TEST", config.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Bounded::run(cmd, &profile);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(
        out.status.is_some_and(|s| s.success()) && result["ok"] == true,
        "the {scenario} scenario failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon log\n{}",
        out.status,
        daemon.log_text()
    );
    eprintln!("graph browser, {scenario}: {}", result["timings"]);
    result["timings"].clone()
}

struct Output {
    status: Option<std::process::ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A child in its own process group, killed with its group at [`DRIVER_LIMIT`]; then any
/// Chromium left with this run's profile directory (Playwright starts it in a group of
/// its own) is killed by its pid.
struct Bounded;

impl Bounded {
    fn run(mut cmd: Command, profile: &Path) -> Output {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("start node (Node 20 is needed for the browser tests)");
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        });
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + DRIVER_LIMIT;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let group = child.id() as i32;
                // SAFETY: kill(2) on the group of a child we started.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        kill_browsers_using(profile);
        Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
    }
}

/// SIGKILLs every process whose command line names `profile` (this run's own Chromium
/// user-data directory, so nothing else matches).
fn kill_browsers_using(profile: &Path) {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: kill(2) on a pid whose command line names our temporary profile.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn entity(name: &str, ty: &str, observations: &[&str]) -> Value {
    json!({ "name": name, "entityType": ty, "observations": observations })
}

fn relation(from: &str, to: &str, ty: &str) -> Value {
    json!({ "from": from, "to": to, "relationType": ty })
}

fn names(graph: &Value) -> Vec<String> {
    e2e::entity_names(graph)
}

/// The nodes within `hops` of `centre` in `graph` (a read_graph result), either way.
fn neighbourhood(graph: &Value, centre: &str, hops: usize) -> Vec<String> {
    let mut found = vec![centre.to_owned()];
    let mut frontier = found.clone();
    for _ in 0..hops {
        let mut next = Vec::new();
        for r in graph["relations"].as_array().unwrap() {
            let (from, to) = (r["from"].as_str().unwrap(), r["to"].as_str().unwrap());
            for (a, b) in [(from, to), (to, from)] {
                if frontier.iter().any(|f| f == a) && !found.iter().any(|f| f == b) {
                    found.push(b.to_owned());
                    next.push(b.to_owned());
                }
            }
        }
        frontier = next;
    }
    found
}

const XSS_NAME: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_TYPE: &str = "<b>bold</b>";
const XSS_OBSERVATION: &str = "<script>window.__xss2=1</script>";

/// Picks a project from the list, searches (search_nodes' matches), opens an entity,
/// follows a relation, checks its graph at 1 and 2 hops, clicks in the graph, sees the
/// 300-node cap, sees writes by another /mcp client and by another process appear live,
/// finds the XSS entity inert, and takes the README's screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_browses_searches_and_sees_writes_live() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let atlas = std::fs::canonicalize(env.project("atlas")).unwrap();
    let galaxy = std::fs::canonicalize(env.project("galaxy")).unwrap();
    let mcp = Http::new(daemon.url()).with_project(&atlas);
    let entities = json!([
        entity(
            "Ada Lovelace",
            "person",
            &["wrote the first program", "translated Menabrea's paper", "worked with Babbage"]
        ),
        entity("Charles Babbage", "person", &["designed the Analytical Engine"]),
        entity("Analytical Engine", "machine", &["never finished", "programmable with punched cards"]),
        entity("Difference Engine", "machine", &["computes polynomials"]),
        entity("Menabrea", "person", &["wrote about the engine in French"]),
        entity("London", "city", &[]),
        entity(XSS_NAME, XSS_TYPE, &[XSS_OBSERVATION]),
    ]);
    mcp.call_tool("create_entities", json!({ "entities": entities })).await;
    let relations = json!([
        relation("Ada Lovelace", "Charles Babbage", "worked_with"),
        relation("Ada Lovelace", "Analytical Engine", "wrote_about"),
        relation("Charles Babbage", "Analytical Engine", "designed"),
        relation("Charles Babbage", "Difference Engine", "designed"),
        relation("Menabrea", "Ada Lovelace", "was_translated_by"),
        relation("Charles Babbage", "London", "lived_in"),
        relation("Ada Lovelace", XSS_NAME, "knows"),
    ]);
    mcp.call_tool("create_relations", json!({ "relations": relations })).await;
    let hub = Http::new(daemon.url()).with_project(&galaxy);
    let spokes: Vec<Value> = (0..320).map(|i| entity(&format!("spoke-{i:03}"), "star", &[])).collect();
    hub.call_tool("create_entities", json!({ "entities": [entity("hub", "centre", &["the middle"])] })).await;
    hub.call_tool("create_entities", json!({ "entities": spokes })).await;
    let links: Vec<Value> = (0..320).map(|i| relation("hub", &format!("spoke-{i:03}"), "holds")).collect();
    hub.call_tool("create_relations", json!({ "relations": links })).await;

    // What the page must show, from the tools themselves.
    let graph = mcp.read_graph().await;
    let mut searches = Vec::new();
    for q in ["ENGINE", "a", "wrote", "ch", "punched cards", "nothing like this", "<img"] {
        let found = mcp.call_tool("search_nodes", json!({ "query": q })).await;
        searches.push(json!({ "q": q, "names": names(&found["structuredContent"]) }));
    }
    let ada = &graph["entities"].as_array().unwrap().iter().find(|e| e["name"] == "Ada Lovelace").unwrap().clone();
    let outgoing: Vec<String> = graph["relations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["from"] == "Ada Lovelace")
        .map(|r| format!("{} → {}", r["relationType"].as_str().unwrap(), r["to"].as_str().unwrap()))
        .collect();
    let incoming: Vec<String> = graph["relations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["to"] == "Ada Lovelace")
        .map(|r| format!("{} {} →", r["from"].as_str().unwrap(), r["relationType"].as_str().unwrap()))
        .collect();

    // Another process's write: `memory-server import` into the same file.
    let import = env.dir.path().join("import.jsonl");
    let imported = "Imported Idea";
    std::fs::write(
        &import,
        format!(
            "{}\n",
            json!({"type": "entity", "name": imported, "entityType": "note", "observations": ["from another process"]})
        ),
    )
    .unwrap();
    let importer_env: serde_json::Map<String, Value> = [
        ("HOME", env.home().display().to_string()),
        ("MCP_SESSION_MANAGER_HOME", env.runtime().display().to_string()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();

    let screenshot = if std::env::var_os("UPDATE_UI_SCREENSHOT").is_some() {
        workspace().join("docs/graph-browser.png")
    } else {
        let dir = e2e::target_tmp().join("ui");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("graph-browser.png")
    };
    let entity_count = graph["entities"].as_array().unwrap().len();
    let observation_count: usize =
        graph["entities"].as_array().unwrap().iter().map(|e| e["observations"].as_array().unwrap().len()).sum();
    let config = json!({
        "project": atlas.display().to_string(),
        "hubProject": galaxy.display().to_string(),
        "projectCounts": [entity_count.to_string(), graph["relations"].as_array().unwrap().len().to_string(), observation_count.to_string()],
        "entityCount": entity_count,
        "searches": searches,
        "ada": {
            "name": "Ada Lovelace",
            "type": "person",
            "observations": ada["observations"],
            "outgoing": outgoing,
            "incoming": incoming,
            "oneHop": neighbourhood(&graph, "Ada Lovelace", 1),
            "twoHops": neighbourhood(&graph, "Ada Lovelace", 2),
            "followed": "Charles Babbage",
            "graphClick": "Analytical Engine",
        },
        "xss": { "name": XSS_NAME, "type": XSS_TYPE, "observations": [XSS_OBSERVATION] },
        "hub": { "name": "hub", "total": 321 },
        "importer": {
            "command": bin("memory-server").display().to_string(),
            "args": ["import", import.display().to_string(), "--project", atlas.display().to_string()],
            "env": importer_env,
            "entity": imported,
        },
        "screenshot": screenshot.display().to_string(),
    });
    let timings = drive(&env, &daemon, "walkthrough", config);
    for key in ["liveObservationMs", "liveEntityMs", "liveGraphMs", "liveRelationMs", "liveOtherProcessMs"] {
        let ms = timings[key].as_f64().unwrap_or(f64::MAX);
        // The issue asks for a second (the other process's write is seen by polling
        // every 500 ms); a loaded CI machine gets five.
        assert!(ms < 5_000.0, "{key}: {ms} ms");
    }
    assert!(screenshot.exists());
}

/// 100,000 entities: the first screen and each search keystroke, measured in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_of_100000_entities_is_quick_to_open_and_search() {
    const N: usize = 100_000;
    let env = TestEnv::new();
    let project = std::fs::canonicalize(env.project("big")).unwrap();
    let jsonl = env.dir.path().join("big.jsonl");
    std::fs::write(&jsonl, graph_jsonl(N)).unwrap();
    let started = Instant::now();
    let out = env
        .command(&bin("memory-server"))
        .args(["import"])
        .arg(&jsonl)
        .arg("--project")
        .arg(&project)
        .output()
        .expect("memory-server import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("imported {N} entities in {:?}", started.elapsed());
    let daemon = Daemon::start(&env, &[]);
    // Served once, so the daemon lists it.
    let mcp = Http::new(daemon.url()).with_project(&project);
    mcp.call_tool("open_nodes", json!({ "names": ["entity-000000"] })).await;

    let config = json!({
        "project": project.display().to_string(),
        "total": N,
        // A name typed from its start (dense, then selective), a phrase of common
        // words, and a word no entity holds (its first letters scan every row).
        "queries": [
            { "q": "entity-04242", "matches": true },
            { "q": "lives in city 42", "matches": true },
            { "q": "zebra", "matches": false },
        ],
    });
    let t = drive(&env, &daemon, "big", config);
    let first = t["firstScreenMs"].as_array().unwrap().iter().filter_map(Value::as_f64).fold(f64::MAX, f64::min);
    let keys_max = t["keystrokeMaxMs"].as_f64().unwrap_or(f64::MAX);
    eprintln!(
        "100,000 entities: first screen {} ms (page's clock; best {first}), {} ms (test's clock); keystrokes median {} ms, max {} ms",
        t["firstScreenMs"], t["firstScreenWallMs"], t["keystrokeMedianMs"], t["keystrokeMaxMs"]
    );
    // The targets are 1 s and 100 ms; these bounds only catch what is broken.
    assert!(first < 10_000.0, "first screen: {first} ms");
    assert!(keys_max < 5_000.0, "slowest keystroke: {keys_max} ms");
}

/// The bench's graph: `entity-NNNNNN` of 20 types, three observations each, and a
/// relation from each to another.
fn graph_jsonl(n: usize) -> String {
    let mut out = String::with_capacity(n * 300);
    for i in 0..n {
        let line = json!({
            "type": "entity",
            "name": format!("entity-{i:06}"),
            "entityType": format!("type-{}", i % 20),
            "observations": [
                format!("Observation about entity {i}, written in ordinary words for the benchmark"),
                format!("lives in city {} and works on project {}", i % 97, i % 89),
                format!("member of group <g{:06}>", i / 10),
            ],
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    for i in 0..n {
        let line = json!({"type": "relation", "from": format!("entity-{i:06}"), "to": format!("entity-{:06}", (i * 7 + 1) % n), "relationType": "knows"});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// With `--token` the page asks once and keeps a cookie; the token is in no URL and in
/// no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_once() {
    let token = "s3cret-UI-token-7f3a";
    let env = TestEnv::new();
    let daemon = Daemon::start_with_token(&env, token, &[], |_| {});
    let project = std::fs::canonicalize(env.project("locked")).unwrap();
    let mcp = Http::new(daemon.url()).with_project(&project).with_token(token);
    mcp.call_tool(
        "create_entities",
        json!({ "entities": [entity("kept", "secret", &["behind a token"]), entity("also kept", "secret", &[])] }),
    )
    .await;
    let config =
        json!({ "token": token, "project": project.display().to_string(), "port": daemon.port, "entities": 2 });
    drive(&env, &daemon, "token", config);
    assert!(!daemon.log_text().contains(token), "the token is not logged:\n{}", daemon.log_text());
    assert!(daemon.log_text().contains("graph browser login refused: wrong token"));
}

/// The projects list is kept in the runtime directory: a restarted daemon lists the
/// projects it served before, with their last write.
#[tokio::test]
async fn the_projects_list_survives_a_restart() {
    let env = TestEnv::new();
    let project = std::fs::canonicalize(env.project("remembered")).unwrap();
    let mut daemon = Daemon::start(&env, &[]);
    let mcp = Http::new(daemon.url()).with_project(&project);
    mcp.call_tool("create_entities", json!({ "entities": [entity("one", "t", &[])] })).await;
    let before = projects(&daemon).await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(e2e::PATIENCE).is_some_and(|s| s.success()), "{}", daemon.log_text());
    let kept = std::fs::read_to_string(env.runtime().join("memory-projects.json")).unwrap();
    assert!(kept.contains(&project.display().to_string()), "{kept}");

    let daemon = Daemon::start(&env, &[]);
    let after = projects(&daemon).await;
    let find = |list: &Value| {
        list["projects"].as_array().unwrap().iter().find(|p| p["project"] == project.display().to_string()).cloned()
    };
    let (was, is) = (find(&before).expect("listed before"), find(&after).expect("listed after a restart"));
    assert_eq!(is["lastWrite"], was["lastWrite"]);
    assert_eq!(is["counts"]["entities"], 1);
    assert_eq!(after["projects"][0]["global"], true, "the global memory first");
}

async fn projects(daemon: &Daemon) -> Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{}/ui/api/projects", daemon.port);
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[test]
fn mcp_manager_status_prints_the_browser_url() {
    let env = manager_common::ManagerEnv::new();
    let out = env.manager(&["status"]).ok().to_owned();
    let line = format!("memory: graph browser at http://127.0.0.1:{}/ui", env.memory_port);
    assert!(out.lines().any(|l| l == line), "{out}");
}
