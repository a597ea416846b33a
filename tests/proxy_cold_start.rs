//! mcp-proxy cold start and discovery (issue 4, items 1, 3 and 8): with no daemon running
//! the proxy starts one detached (own session, output in `memory.log`, `memory.lock`
//! written) and the memory lands in the project's database; sixteen proxies starting at
//! once spawn exactly one daemon; a stale lock file is replaced; the project is
//! `--project`, else `CLAUDE_PROJECT_DIR`, else the working directory, non-ASCII or not.

#[path = "proxy_common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Proc, Proxy, ProxyEnv, alive, wait_dead};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

/// The entity names stored in `<dir>/.claude/memory.db` (empty when there is no DB).
fn stored_names(dir: &Path) -> Vec<String> {
    let db = dir.join(".claude").join("memory.db");
    if !db.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM entities ORDER BY name").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn fd_target(pid: i32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_spawns_the_daemon_detached_and_memory_lands_in_the_project() {
    let pe = ProxyEnv::new();
    let project = pe.project("cold");
    assert!(pe.try_health().await.is_none(), "no daemon before the proxy");
    let (transport, proxy, log) = pe.spawn_rmcp(&project);

    // The official Rust SDK's stdio client: initialize, tools/list, tool calls.
    let client = ().serve(transport).await.expect("initialize through mcp-proxy");
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("memory-server"));
    let tools = client.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 9);
    let Value::Object(args) = json!({"entities":[{"name":"Ada","entityType":"person","observations":["first"]}]})
    else {
        unreachable!()
    };
    let created = client.call_tool(CallToolRequestParams::new("create_entities").with_arguments(args)).await.unwrap();
    assert_ne!(created.is_error, Some(true), "{created:?}");
    let graph = client
        .call_tool(CallToolRequestParams::new("read_graph").with_arguments(serde_json::Map::new()))
        .await
        .unwrap();
    assert_eq!(e2e::entity_names(graph.structured_content.as_ref().unwrap()), ["Ada"]);

    // The memory is in the project's own database, not the global one.
    assert_eq!(stored_names(&project), ["Ada"]);
    assert_eq!(mode(&project.join(".claude/memory.db")), 0o600);
    assert!(stored_names(&pe.env.home()).is_empty());

    // The lock file names the daemon; the daemon runs detached in a session of its own.
    let lock = pe.lock().expect("memory.lock written");
    assert_eq!(lock["port"], pe.port);
    assert_eq!(lock["transport"], "streamable-http");
    assert!(lock["startedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{lock}");
    let daemon = lock["pid"].as_i64().unwrap() as i32;
    let procs = pe.daemons();
    assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [daemon], "{procs:?}");
    let d = Proc::read(daemon).unwrap();
    assert_eq!(d.ppid, proxy, "started by the proxy");
    assert!(d.cmdline.iter().any(|a| a == "serve"), "{d:?}");
    // SAFETY: getsid/getpgid only read process attributes.
    let (sid, pgid, proxy_sid, my_sid) =
        unsafe { (libc::getsid(daemon), libc::getpgid(daemon), libc::getsid(proxy), libc::getsid(0)) };
    assert_eq!(sid, daemon, "the daemon leads its own session (setsid)");
    assert_eq!(pgid, daemon);
    assert_ne!(sid, proxy_sid);
    assert_ne!(sid, my_sid);
    let log_file = pe.runtime().join("memory.log");
    assert_eq!(fd_target(daemon, 0), "/dev/null");
    assert_eq!(fd_target(daemon, 1), log_file.display().to_string());
    assert_eq!(fd_target(daemon, 2), log_file.display().to_string());
    assert!(pe.log_text().contains("listening on"), "{}", pe.log_text());
    assert_eq!(mode(&log_file), 0o600);
    assert_eq!(mode(&pe.runtime().join("memory.lock")), 0o600);
    assert!(log.lock().unwrap().contains("[mcp-proxy:memory] started the daemon"), "{}", log.lock().unwrap());

    client.cancel().await.expect("close the client");
    wait_dead(proxy).await;
    assert!(alive(daemon), "the daemon outlives the proxy");
    assert_eq!(pe.health().await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_proxies_started_at_once_spawn_exactly_one_daemon() {
    let pe = ProxyEnv::new();
    let project = pe.project("crowd");
    // Each proxy starts finding or starting the daemon as soon as it runs.
    let mut proxies: Vec<Proxy> = (0..16).map(|_| pe.spawn(&project)).collect();
    futures_util::future::join_all(proxies.iter_mut().map(|p| p.initialize())).await;
    for (i, p) in proxies.iter_mut().enumerate() {
        p.create_entity(1, &format!("e{i:02}")).await;
    }
    for p in &mut proxies {
        assert_eq!(p.entity_names(2).await.len(), 16, "every session works and sees the others' writes");
    }
    pe.wait_live_sessions(16).await;

    let daemons = pe.daemons();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    assert_eq!(pe.lock_pid(), Some(daemons[0].pid));
    let starters: usize = proxies.iter().map(|p| p.stderr_count("started the daemon")).sum();
    assert_eq!(starters, 1, "exactly one proxy spawned the daemon");
    let log = pe.log_text();
    assert_eq!(log.matches("listening on").count(), 1, "one daemon ever ran:\n{log}");
    assert!(!log.contains("in use"), "no second daemon tried the port:\n{log}");

    for p in &mut proxies {
        p.close_stdin();
    }
    for p in &mut proxies {
        assert_eq!(p.wait_exit().await.code(), Some(0));
        p.assert_protocol_only();
    }
    pe.wait_live_sessions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_file_is_replaced() {
    let pe = ProxyEnv::new();
    // A dead pid (a child that has exited and been reaped) and, on the port the lock
    // names, a listener that is not the daemon: only the dead pid shows it is stale.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let decoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale = json!({"pid": dead, "port": decoy.local_addr().unwrap().port(),
        "transport": "streamable-http", "startedAt": "2020-01-01T00:00:00.000Z"});
    std::fs::write(pe.runtime().join("memory.lock"), stale.to_string()).unwrap();

    let mut proxy = pe.spawn(&pe.project("p"));
    proxy.initialize().await;
    proxy.create_entity(1, "fresh").await;
    let lock = pe.lock().unwrap();
    assert_ne!(lock["pid"], dead, "{lock}");
    assert_eq!(lock["port"], pe.port, "{lock}");
    let daemons: Vec<i32> = pe.daemons().iter().map(|p| p.pid).collect();
    assert_eq!(daemons, [lock["pid"].as_i64().unwrap() as i32]);
    assert_eq!(proxy.stderr_count("started the daemon"), 1);
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_is_the_flag_else_claude_project_dir_else_the_working_directory() {
    let pe = ProxyEnv::new();
    // Non-ASCII, a space and a literal `%41`: the header must be percent-encoded.
    let in_cwd = pe.project("工藤 プロジェクト %41 ü");
    let from_env = pe.project("環境-env");
    let cwd_only = pe.project("just-cwd");
    let from_flag = pe.project("フラグ flag");

    async fn store(mut proxy: Proxy, name: &str) {
        proxy.initialize().await;
        proxy.create_entity(1, name).await;
        proxy.close_stdin();
        assert_eq!(proxy.wait_exit().await.code(), Some(0));
        proxy.assert_protocol_only();
    }
    // The working directory alone.
    store(pe.spawn(&in_cwd), "by-cwd").await;
    // CLAUDE_PROJECT_DIR beats the working directory.
    let mut cmd = pe.command("memory", &cwd_only, &[]);
    cmd.env("CLAUDE_PROJECT_DIR", &from_env);
    store(Proxy::spawn(cmd, "memory"), "by-env").await;
    // --project beats both.
    let mut cmd = pe.command("memory", &cwd_only, &["--project", from_flag.to_str().unwrap()]);
    cmd.env("CLAUDE_PROJECT_DIR", &from_env);
    store(Proxy::spawn(cmd, "memory"), "by-flag").await;

    assert_eq!(stored_names(&in_cwd), ["by-cwd"]);
    assert_eq!(stored_names(&from_env), ["by-env"]);
    assert_eq!(stored_names(&from_flag), ["by-flag"]);
    assert!(!cwd_only.join(".claude").exists(), "the working directory was not used");
    assert!(stored_names(&pe.env.home()).is_empty(), "nothing fell back to the global DB");
}
