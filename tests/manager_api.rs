//! `mcp-manager serve`: the HTTP API (issue 5 item 1) and the health check (item 2),
//! against the real memory-server started through the shared spawn path.

#[path = "manager_common/mod.rs"]
mod common;

use common::{ManagerEnv, alive, http, kill, poll};
use e2e::free_port;
use serde_json::{Value, json};

#[test]
fn the_api_answers_the_seed_routes() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&[]);

    let (code, ping) = mgr.get("/ping");
    assert_eq!(code, 200);
    assert_eq!(ping["status"], "ok");
    assert_eq!(ping["pid"], mgr.pid());

    // Nothing runs yet: every configured daemon is listed, stopped.
    let memory = mgr.status_of("memory");
    assert_eq!(memory["alive"], false);
    assert_eq!(memory["state"], "stopped");
    assert_eq!(memory["pid"], Value::Null);

    // /ensure starts it and answers {running, port, transport}.
    let (code, ensured) = mgr.post("/ensure", r#"{"name":"memory"}"#);
    assert_eq!(code, 200, "{ensured}");
    assert_eq!(ensured, json!({"running": true, "port": env.memory_port, "transport": "streamable-http"}));
    assert!(env.memory_up());
    let pid = env.lock_pid("memory").expect("lock file written");

    let memory = mgr.status_of("memory");
    for key in ["name", "port", "transport", "pid", "alive", "uptime_secs", "log_file", "restarts", "state"] {
        assert!(memory.get(key).is_some(), "{key} missing in {memory}");
    }
    assert_eq!(memory["name"], "memory");
    assert_eq!(memory["port"], env.memory_port);
    assert_eq!(memory["transport"], "streamable-http");
    assert_eq!(memory["pid"], pid);
    assert_eq!(memory["alive"], true);
    assert_eq!(memory["state"], "running");
    assert_eq!(memory["restarts"], 0);
    assert!(memory["uptime_secs"].is_u64(), "{memory}");
    let log_file = memory["log_file"].as_str().unwrap();
    assert_eq!(log_file, env.runtime().join("memory.log").to_str().unwrap());
    assert!(std::fs::read_to_string(log_file).unwrap().contains("listening"));

    // Ensuring again is a no-op; /start of a running daemon too.
    let (code, again) = mgr.post("/ensure", r#"{"name":"memory"}"#);
    assert_eq!((code, again["running"].clone()), (200, json!(true)));
    let (code, started) = mgr.post("/start", r#"{"name":"memory"}"#);
    assert_eq!(code, 200, "{started}");
    assert_eq!((started["started"].clone(), started["pid"].clone()), (json!(false), json!(pid)));
    assert_eq!(env.lock_pid("memory"), Some(pid));

    // /stop: the process exits, the lock file goes, the port closes.
    let (code, stopped) = mgr.post("/stop", r#"{"name":"memory"}"#);
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["stopped"], true);
    assert_eq!(stopped["pid"], pid);
    assert!(!alive(pid));
    assert_eq!(env.lock("memory"), None);
    assert!(!env.memory_up());
    assert_eq!(mgr.status_of("memory")["state"], "stopped");

    // /start starts a new one.
    let (code, started) = mgr.post("/start", r#"{"name":"memory"}"#);
    assert_eq!(code, 200, "{started}");
    assert_eq!(started["started"], true);
    assert_eq!(started["running"], true);
    assert!(env.memory_up());

    // /stop-all and /start-all report per daemon.
    let (code, all) = mgr.post("/stop-all", "");
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["ok"], true);
    assert_eq!(all["results"][0]["name"], "memory");
    assert!(!env.memory_up());
    let (code, all) = mgr.post("/start-all", "");
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["ok"], true, "{all}");
    assert!(env.memory_up());
}

#[test]
fn bad_requests_are_refused() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&[]);

    for route in ["/start", "/stop", "/ensure"] {
        let (code, body) = mgr.post(route, r#"{"name":"nope"}"#);
        assert_eq!(code, 404, "{route}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("unknown daemon `nope`") && message.contains("memory"), "{message}");

        for bad in ["", "not json", "{}", r#"{"name": 3}"#, r#"["memory"]"#, r#"{"name":"memory","x":1}"#] {
            let (code, body) = mgr.post(route, bad);
            assert_eq!(code, 400, "{route} {bad:?}: {body}");
            assert!(body["error"].as_str().unwrap().contains("malformed body"), "{body}");
        }
    }
    assert!(!env.memory_up(), "nothing was started by bad requests");

    // DNS-rebinding protection: foreign Host or Origin.
    let port = mgr.port;
    for headers in [
        vec![("Host", "evil.example")],
        vec![("Host", "evil.example:3199")],
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "null")],
    ] {
        let (code, body) = http(port, "GET", "/status", &headers, None);
        assert_eq!(code, 403, "{headers:?}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("Forbidden"), "{body}");
        let (code, _) = http(port, "POST", "/ensure", &headers, Some(r#"{"name":"memory"}"#));
        assert_eq!(code, 403);
    }
    assert!(!env.memory_up());
    let localhost = format!("localhost:{port}");
    for headers in [vec![("Host", localhost.as_str())], vec![("Origin", "http://127.0.0.1:5173")]] {
        let (code, _) = http(port, "GET", "/ping", &headers, None);
        assert_eq!(code, 200, "{headers:?}");
    }

    // Unknown routes say which exist.
    let (code, body) = mgr.get("/nope");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("GET /status"), "{body}");
}

#[test]
fn the_health_check_restarts_a_killed_daemon() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&["--health-interval-secs", "1"]);
    let (code, body) = mgr.post("/start", r#"{"name":"memory"}"#);
    assert_eq!(code, 200, "{body}");
    let first = env.lock_pid("memory").unwrap();

    kill(first, libc::SIGKILL);
    let restarted = poll(|| {
        let s = mgr.status_of("memory");
        (s["alive"] == true && s["pid"].as_i64().is_some_and(|p| p as i32 != first)).then_some(s)
    });
    assert_eq!(restarted["state"], "running");
    assert!(restarted["restarts"].as_u64().unwrap() >= 1, "{restarted}");
    assert!(env.memory_up());
    poll(|| mgr.log_text().contains("memory: restarted").then_some(()));

    // A daemon stopped on purpose stays down.
    let (code, _) = mgr.post("/stop", r#"{"name":"memory"}"#);
    assert_eq!(code, 200);
    let restarts = mgr.status_of("memory")["restarts"].clone();
    // Let a few health checks pass (observed through the manager's uptime, not a clock).
    let until = mgr.get("/ping").1["uptime_secs"].as_u64().unwrap() + 3;
    poll(|| (mgr.get("/ping").1["uptime_secs"].as_u64().unwrap() >= until).then_some(()));
    let s = mgr.status_of("memory");
    assert_eq!((s["state"].clone(), s["restarts"].clone()), (json!("stopped"), restarts));
    assert!(!env.memory_up());
}

#[test]
fn a_crash_loop_backs_off_and_is_reported() {
    let crash_port = free_port();
    let env = ManagerEnv::with_config(&format!(
        "[daemons.crashy]\nport = {crash_port}\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"echo crash-attempt; exit 3\"]\nstartup_timeout_ms = 10000\n"
    ));
    let mgr = env.serve(&["--health-interval-secs", "1"]);

    let (code, body) = mgr.post("/start", r#"{"name":"crashy"}"#);
    assert_eq!(code, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("exited"), "{body}");

    // Poll until the backoff reached 4 health intervals, recording what /status said.
    let mut backoffs: Vec<u64> = Vec::new();
    let last = poll(|| {
        let s = mgr.status_of("crashy");
        if let Some(b) = s["backoff_secs"].as_u64()
            && backoffs.last() != Some(&b)
        {
            backoffs.push(b);
        }
        (s["backoff_secs"].as_u64() >= Some(4)).then_some(s)
    });
    assert_eq!(last["state"], "crash-loop", "{last}");
    assert_eq!(last["alive"], false);
    assert!(last["last_error"].as_str().unwrap().contains("exited"), "{last}");
    assert!(backoffs.windows(2).all(|w| w[0] < w[1]), "backoff must grow: {backoffs:?}");

    // Stop it (no more attempts), then count the attempts in its log: the user's start
    // plus one per restart, each restart having doubled the wait.
    let (code, _) = mgr.post("/stop", r#"{"name":"crashy"}"#);
    assert_eq!(code, 200);
    let s = mgr.status_of("crashy");
    let restarts = s["restarts"].as_u64().unwrap();
    let attempts = env.log_text("crashy").matches("crash-attempt").count() as u64;
    assert_eq!(attempts, restarts + 1, "{s}");
    // Backoff 4 s is in effect after the 3rd failure: start + 2 restarts (+1 at most
    // for one that was already due when polled).
    assert!((2..=3).contains(&restarts), "{s}");
    assert_eq!(s["state"], "stopped");
}

#[test]
fn serve_on_a_port_in_use_fails_with_advice() {
    let env = ManagerEnv::new();
    let holder = std::net::TcpListener::bind(("127.0.0.1", env.manager_port)).unwrap();
    let run = env.manager(&["serve"]);
    let line = run.one_line_error();
    assert!(line.contains(&format!("port {} on 127.0.0.1 is already in use", env.manager_port)), "{line}");
    assert!(line.contains("--port"), "{line}");
    drop(holder);

    // A second manager on the same port is told that one already runs.
    let _mgr = env.serve(&[]);
    let run = env.manager(&["serve"]);
    let line = run.one_line_error();
    assert!(line.contains("already in use by a running mcp-manager"), "{line}");
}
