//! A daemon that runs for months (SPEC 2.10), on the real binary: open stores are
//! bounded and closed when idle without the client noticing, a subscribed project keeps
//! hearing about writes across its store's close and reopen, and thousands of projects
//! fit under a small open-file limit with files and threads that do not grow with them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::rmcp_client::{Watcher, call, connect, subscribe_graph};
use e2e::{Daemon, Http, PATIENCE, TestEnv, entity_names};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn proc_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn proc_threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// A small deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// 2,000 projects, each written and then read back twice in random order by 8 clients,
/// against a daemon whose open-file limit is 256 (soft and hard): every call succeeds,
/// every project holds exactly its own data, `open_stores` never exceeds the limit the
/// daemon reports, and its open files and threads stay under bounds set by that limit,
/// not by the number of projects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_projects_under_a_small_file_limit() {
    const PROJECTS: usize = 2000;
    const CLIENTS: usize = 8;
    let env = TestEnv::new();
    let daemon = Daemon::start_with(&env, &[], |cmd| {
        // SAFETY: setrlimit(2) in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let max_open = daemon.health().await["max_open_stores"].as_u64().expect("max_open_stores") as usize;
    assert!(max_open < 64, "the daemon fitted its stores to the small file limit: {max_open}");
    assert!(daemon.log_text().contains("ulimit -n"), "and said so:\n{}", daemon.log_text());

    let projects: Arc<Vec<PathBuf>> = Arc::new((0..PROJECTS).map(|i| env.project(&format!("p{i:04}"))).collect());

    // A watcher samples /health, open files and threads until the load ends.
    let done = Arc::new(AtomicBool::new(false));
    let (max_stores, max_fds, max_threads) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let watcher = {
        let (done, client, pid, port) = (done.clone(), client.clone(), daemon.pid(), daemon.port);
        let (max_stores, max_fds, max_threads) = (max_stores.clone(), max_fds.clone(), max_threads.clone());
        tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{port}/health");
            // Bounded: the load below is bounded too; this ends when it does.
            while !done.load(Ordering::SeqCst) {
                if let Ok(resp) = client.get(&url).send().await
                    && let Ok(h) = resp.json::<Value>().await
                {
                    max_stores.fetch_max(h["open_stores"].as_u64().unwrap_or(0) as usize, Ordering::SeqCst);
                }
                max_fds.fetch_max(proc_fds(pid), Ordering::SeqCst);
                max_threads.fetch_max(proc_threads(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Phase 1: every project written once. Phase 2: each read back twice, shuffled.
    let mut reads: Vec<usize> = (0..PROJECTS).chain(0..PROJECTS).collect();
    shuffle(&mut reads, 0x9e37_79b9_7f4a_7c15);
    let reads = Arc::new(reads);
    for phase in 0..2 {
        let mut workers = Vec::new();
        for k in 0..CLIENTS {
            let (projects, reads) = (projects.clone(), reads.clone());
            // One connection per client, kept alive across its calls.
            let base = Http::new(daemon.url());
            workers.push(tokio::spawn(async move {
                if phase == 0 {
                    for i in (k..PROJECTS).step_by(CLIENTS) {
                        let http = base.clone().with_project(&projects[i]);
                        let name = format!("entity-{i}");
                        let args = json!({"entities": [{"name": name, "entityType": "t", "observations": [format!("of {i}")]}]});
                        let result = http.call_tool("create_entities", args).await;
                        assert_ne!(result["isError"], json!(true), "project {i}: {result}");
                    }
                } else {
                    for &i in reads.iter().skip(k).step_by(CLIENTS) {
                        let http = base.clone().with_project(&projects[i]);
                        let graph = http.read_graph().await;
                        assert_eq!(entity_names(&graph), [format!("entity-{i}")], "project {i} holds its own data");
                        assert_eq!(graph["entities"][0]["observations"], json!([format!("of {i}")]));
                    }
                }
            }));
        }
        for w in workers {
            w.await.expect("a client failed");
        }
    }
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();

    let (stores, fds, threads) =
        (max_stores.load(Ordering::SeqCst), max_fds.load(Ordering::SeqCst), max_threads.load(Ordering::SeqCst));
    eprintln!("max open_stores {stores} (limit {max_open}), max open files {fds}, max threads {threads}");
    assert!(stores <= max_open, "open_stores reached {stores}, over --max-open-stores {max_open}");
    // Bounds from the store limit and the clients, not from the 2,000 projects.
    let fd_bound = 32 + 10 * max_open + 4 * CLIENTS;
    assert!(fds <= fd_bound, "{fds} open files, over {fd_bound}");
    assert!(threads <= 48, "{threads} threads");
    assert!(!daemon.log_text().contains("Too many open files"), "{}", daemon.log_text());
}

/// A store unused for `--store-idle-secs` is closed: its WAL folded back and its
/// connections gone; the next request opens it again without the client noticing.
#[tokio::test]
async fn an_idle_store_is_closed_and_reopened_on_demand() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--store-idle-secs", "1"]);
    let project = env.project("idle");
    let http = Http::new(daemon.url()).with_project(&project);
    let result =
        http.call_tool("create_entities", json!({"entities":[{"name":"a","entityType":"t","observations":[]}]})).await;
    assert_ne!(result["isError"], json!(true), "{result}");
    assert_eq!(daemon.health().await["open_stores"], 1);

    daemon.wait_health("open_stores", 0).await; // the idle store is closed
    let wal = project.join(".claude/memory.db-wal");
    let deadline = Instant::now() + PATIENCE;
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) != 0 {
        assert!(Instant::now() < deadline, "the closed store's WAL was not checkpointed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(daemon.log_text().contains("store closed"), "{}", daemon.log_text());
    assert_eq!(entity_names(&http.read_graph().await), ["a"], "reopened without the client noticing");
}

/// With room for one store, a subscribed project's store is closed to serve another
/// project, and the subscriber still hears about the next write to its project.
#[tokio::test]
async fn a_subscriber_keeps_hearing_across_its_stores_close_and_reopen() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--max-open-stores", "1"]);
    let (project_a, project_b) = (env.project("a"), env.project("b"));

    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &daemon.url(), &project_a).await;
    subscribe_graph(&listener).await;

    // B's request needs the one place: A's store is closed although subscribed.
    let writer_b = connect((), &daemon.url(), &project_b).await;
    call(&writer_b, "create_entities", json!({"entities":[{"name":"b","entityType":"t","observations":[]}]})).await;
    let deadline = Instant::now() + PATIENCE;
    while !daemon.log_text().contains("store closed") {
        assert!(Instant::now() < deadline, "A's store was never closed:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(daemon.health().await["open_stores"], 1);
    assert!(updates.try_recv().is_err(), "B's write is not announced to A's subscriber");

    let writer_a = connect((), &daemon.url(), &project_a).await;
    call(&writer_a, "create_entities", json!({"entities":[{"name":"a","entityType":"t","observations":[]}]})).await;
    let uri = tokio::time::timeout(PATIENCE, updates.recv()).await.expect("the update arrives").unwrap();
    assert_eq!(uri, "memory://knowledge-graph");
    for c in [writer_a, writer_b] {
        c.cancel().await.unwrap();
    }
    listener.cancel().await.unwrap();
}
