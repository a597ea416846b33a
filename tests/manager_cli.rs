//! `mcp-manager`'s command line (issue 5 items 3, 6 and 7): status with and without the
//! API, start/stop/ensure, the *-all commands from many shells at once, logs and their
//! rotation, and one-line errors for bad input.

#[path = "manager_common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{ManagerEnv, Run, alive, poll};
use e2e::free_port;
use serde_json::Value;

#[test]
fn status_works_with_and_without_the_api() {
    let env = ManagerEnv::new();

    // No API: read directly.
    let run = env.manager(&["status"]);
    let out = run.ok();
    let header = out.lines().next().unwrap();
    for column in ["NAME", "PORT", "TRANSPORT", "PID", "ALIVE", "UPTIME", "LOG"] {
        assert!(header.contains(column), "{out}");
    }
    let row = out.lines().find(|l| l.starts_with("memory ")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(&env.memory_port.to_string()) && row.contains(" no "), "{row}");
    assert!(out.contains("manager: not running"), "{out}");
    let json: Value = serde_json::from_str(env.manager(&["status", "--json"]).ok()).unwrap();
    assert_eq!(json["manager"], Value::Null);
    assert_eq!(json["daemons"][0]["name"], "memory");
    assert_eq!(json["daemons"][0]["alive"], false);
    assert_eq!(json["daemons"][0]["state"], "stopped");

    env.manager(&["ensure", "memory"]).ok();
    let pid = env.lock_pid("memory").unwrap();
    let json: Value = serde_json::from_str(env.manager(&["status", "--json"]).ok()).unwrap();
    let memory = &json["daemons"][0];
    assert_eq!((memory["alive"].clone(), memory["pid"].clone()), (Value::Bool(true), pid.into()));
    assert!(memory["uptime_secs"].is_u64(), "{memory}");
    assert!(memory["log_file"].as_str().unwrap().ends_with("memory.log"));
    let out = env.manager(&["status"]).ok().to_owned();
    let row = out.lines().find(|l| l.starts_with("memory ")).unwrap();
    assert!(row.contains(&pid.to_string()) && row.contains(" yes ") && row.contains("running"), "{row}");
    assert!(row.ends_with("memory.log"), "{row}");

    // With the API: the same daemons plus the manager's view.
    let mgr = env.serve(&[]);
    let json: Value = serde_json::from_str(env.manager(&["status", "--json"]).ok()).unwrap();
    assert_eq!(json["manager"]["pid"], mgr.pid());
    assert_eq!(json["daemons"][0]["pid"], pid);
    assert_eq!(json["daemons"][0]["restarts"], 0);
    let out = env.manager(&["status"]).ok().to_owned();
    assert!(out.contains("manager: serving") && out.contains(&pid.to_string()), "{out}");
}

#[test]
fn start_stop_and_ensure_work_without_the_api() {
    let env = ManagerEnv::new();
    let out = env.manager(&["start", "memory"]).ok().to_owned();
    assert!(out.starts_with("memory: started on port"), "{out}");
    assert!(env.memory_up());
    let pid = env.lock_pid("memory").unwrap();
    assert!(out.contains(&format!("pid {pid}")), "{out}");
    let lock = env.lock("memory").unwrap();
    assert_eq!(lock["port"], env.memory_port);
    assert_eq!(lock["transport"], "streamable-http");
    assert!(lock["startedAt"].is_string());

    let out = env.manager(&["start", "memory"]).ok().to_owned();
    assert!(out.starts_with("memory: already running"), "{out}");
    let out = env.manager(&["ensure", "memory"]).ok().to_owned();
    assert!(out.starts_with("memory: already running"), "{out}");
    assert_eq!(env.lock_pid("memory"), Some(pid));

    // stop: SIGTERM is enough for memory-server; the lock file goes.
    let out = env.manager(&["stop", "memory"]).ok().to_owned();
    assert_eq!(out.trim(), format!("memory: stopped (pid {pid})"));
    assert!(!alive(pid));
    assert_eq!(env.lock("memory"), None);
    assert!(!env.memory_up());
    assert!(env.log_text("memory").contains("SIGTERM"), "memory-server logs its graceful stop");
    let out = env.manager(&["stop", "memory"]).ok().to_owned();
    assert_eq!(out.trim(), "memory: not running");

    // ensure starts it again; start-all and stop-all too.
    let out = env.manager(&["ensure", "memory"]).ok().to_owned();
    assert!(out.starts_with("memory: started"), "{out}");
    let out = env.manager(&["stop-all"]).ok().to_owned();
    assert!(out.starts_with("memory: stopped"), "{out}");
    assert!(!env.memory_up());
    let out = env.manager(&["start-all"]).ok().to_owned();
    assert!(out.starts_with("memory: started"), "{out}");
    assert!(env.memory_up());
}

/// Not a test: the daemon of `stop_escalates_to_sigkill`, run as a child process of that
/// test through this test binary. It ignores SIGTERM and listens until killed (or for at
/// most two minutes).
#[test]
#[ignore = "helper process, started by stop_escalates_to_sigkill"]
fn stubborn_listener_helper() {
    let Ok(port) = std::env::var("MANAGER_E2E_STUBBORN_PORT") else { return };
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let _ = listener.accept();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stop_escalates_to_sigkill() {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let env = ManagerEnv::with_config(&format!(
        "[daemons.stubborn]\nport = {port}\ncommand = {}\n\
         args = [\"stubborn_listener_helper\", \"--exact\", \"--ignored\", \"--nocapture\"]\n\
         env = {{ MANAGER_E2E_STUBBORN_PORT = \"{port}\" }}\n",
        serde_json::to_string(exe.to_str().unwrap()).unwrap()
    ));
    env.manager(&["start", "stubborn"]).ok();
    let pid = env.lock_pid("stubborn").unwrap();
    let out = env.manager(&["stop", "stubborn", "--timeout-secs", "0.5"]).ok().to_owned();
    assert_eq!(out.trim(), format!("stubborn: killed (pid {pid} ignored SIGTERM)"));
    assert!(!alive(pid));
    assert_eq!(env.lock("stubborn"), None);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn ensure_all_from_many_shells_spawns_once_and_is_idempotent() {
    let env = ManagerEnv::new();
    let shells: Vec<_> = (0..8)
        .map(|_| {
            let mut cmd = env.manager_command();
            cmd.arg("ensure-all");
            std::thread::spawn(move || Run::bounded(cmd))
        })
        .collect();
    let runs: Vec<Run> = shells.into_iter().map(|t| t.join().unwrap()).collect();
    let mut started = 0;
    for run in &runs {
        let out = run.ok();
        assert!(out.starts_with("memory: started") || out.starts_with("memory: already running"), "{out}");
        started += usize::from(out.starts_with("memory: started"));
    }
    assert_eq!(started, 1, "exactly one shell started it");
    let log = env.log_text("memory");
    assert_eq!(log.matches("memory-server listening").count(), 1, "one daemon spawned:\n{log}");
    assert!(!log.contains("already in use"), "{log}");
    let pid = env.lock_pid("memory").unwrap();
    assert!(alive(pid) && env.memory_up());

    // Everything up: nothing is started, nothing changes.
    let out = env.manager(&["ensure-all"]).ok().to_owned();
    assert_eq!(out.trim(), format!("memory: already running on port {} (pid {pid})", env.memory_port));
    assert_eq!(env.manager(&["ensure-all", "--quiet"]).ok(), "");
    assert_eq!(env.lock_pid("memory"), Some(pid));
    assert_eq!(env.log_text("memory").matches("memory-server listening").count(), 1);
}

#[test]
fn commands_go_through_a_running_manager() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&["--health-interval-secs", "1"]);
    env.manager(&["start", "memory"]).ok();
    assert!(env.memory_up());
    env.manager(&["stop", "memory"]).ok();
    assert!(!env.memory_up());
    let log = mgr.log_text();
    assert!(log.contains("POST /start: memory: started"), "{log}");
    assert!(log.contains("POST /stop: memory: stopped"), "{log}");
    // The manager knows it was stopped on purpose: its health check leaves it down.
    let until = mgr.get("/ping").1["uptime_secs"].as_u64().unwrap() + 3;
    poll(|| (mgr.get("/ping").1["uptime_secs"].as_u64().unwrap() >= until).then_some(()));
    assert!(!env.memory_up());
    assert_eq!(mgr.status_of("memory")["restarts"], 0);

    env.manager(&["start-all"]).ok();
    assert!(env.memory_up());
    env.manager(&["stop-all"]).ok();
    assert!(!env.memory_up());
    let log = mgr.log_text();
    assert!(log.contains("POST /start-all") && log.contains("POST /stop-all"), "{log}");
}

#[test]
fn logs_show_the_tail_and_rotate_by_size() {
    let env = ManagerEnv::new();
    let run = env.manager(&["logs", "memory"]);
    assert!(run.one_line_error().contains("no log for `memory` yet"), "{}", run.stderr);

    env.manager(&["start", "memory"]).ok();
    let last = poll(|| env.log_text("memory").lines().last().map(str::to_owned));
    assert!(env.manager(&["logs", "memory"]).ok().contains("memory-server listening"));
    assert_eq!(env.manager(&["logs", "memory", "-n", "1"]).ok(), format!("{last}\n"));
    env.manager(&["stop", "memory"]).ok();

    // A log past 10 MiB is rotated when the daemon starts.
    let log_path = env.runtime().join("memory.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log_path).unwrap();
    f.set_len(10 * 1024 * 1024).unwrap();
    f.write_all(b"OLD-MARKER\n").unwrap();
    drop(f);
    env.manager(&["start", "memory"]).ok();
    let rotated = env.runtime().join("memory.log.1");
    assert!(std::fs::read_to_string(&rotated).unwrap().ends_with("OLD-MARKER\n"));
    let current = poll(|| Some(env.log_text("memory")).filter(|t| t.contains("listening")));
    assert!(!current.contains("OLD-MARKER"));
    // The tail reaches back into the rotated file when the current one is short.
    let tail = env.manager(&["logs", "memory", "-n", "500"]).ok().to_owned();
    assert!(tail.contains("OLD-MARKER\n") && tail.ends_with(&current), "{tail}");

    // While it runs, the manager's health check rotates it (copy, then truncate).
    let mgr = env.serve(&["--health-interval-secs", "1"]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log_path).unwrap();
    f.write_all(&vec![b'x'; 10 * 1024 * 1024]).unwrap();
    f.write_all(b"\nLIVE-MARKER\n").unwrap();
    drop(f);
    poll(|| std::fs::metadata(&log_path).ok().filter(|m| m.len() < 1024 * 1024));
    let second = env.runtime().join("memory.log.2");
    assert!(std::fs::read_to_string(&second).unwrap().ends_with("OLD-MARKER\n"), "older logs shift");
    assert!(std::fs::read_to_string(&rotated).unwrap().ends_with("LIVE-MARKER\n"));
    for file in [&log_path, &rotated, &second] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    assert!(env.memory_up(), "the daemon is unaffected");
    drop(mgr);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let env = ManagerEnv::new();
    for args in [&["start", "nope"][..], &["stop", "nope"], &["ensure", "nope"], &["logs", "nope"]] {
        let run = env.manager(args);
        assert_eq!(run.code, Some(2), "{args:?}");
        let line = run.one_line_error();
        assert!(line.contains("unknown daemon `nope`") && line.contains("memory"), "{line}");
        assert!(line.contains("add [daemons.nope] to"), "{line}");
    }

    // A broken config.toml: file, line, and what to do.
    env.write_config("[daemons.memory]\nport = \"x\"\n");
    for args in [&["status"][..], &["ensure-all"], &["serve"]] {
        let run = env.manager(args);
        assert_eq!(run.code, Some(2), "{args:?}");
        let line = run.one_line_error();
        assert!(line.contains("config.toml:2:") && line.contains("fix the file"), "{line}");
    }
    env.write_config(&format!("[daemons.memory]\nport = {}\n", env.memory_port));

    // An unwritable runtime directory (here: below a regular file).
    let blocker = env.env.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let config = env.env.dir.path().join("config.toml");
    std::fs::write(&config, format!("[daemons.memory]\nport = {}\n", env.memory_port)).unwrap();
    for args in [&["ensure", "memory"][..], &["start", "memory"], &["ensure-all"], &["serve"]] {
        let mut cmd = env.manager_command();
        cmd.env("MCP_SESSION_MANAGER_HOME", blocker.join("runtime")).arg("--config").arg(&config).args(args);
        let run = Run::bounded(cmd);
        assert_eq!(run.code, Some(1), "{args:?}");
        let line = run.one_line_error();
        assert!(line.contains("set MCP_SESSION_MANAGER_HOME to a writable directory"), "{line}");
    }
    assert!(!env.memory_up(), "nothing was started");
}
