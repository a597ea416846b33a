//! mcp-manager with a stdio server hosted by mcp-host (issue 16 item 5): `status` lists
//! the host's children with their share key, pid, RSS, sessions and restarts; `stop`
//! ends the host and its children; the health check restarts a host that died. The
//! hosted server is our own `memory-server stdio`, so no package registry is needed.

#[path = "manager_common/mod.rs"]
mod common;

use common::{ManagerEnv, alive, http, kill, poll};
use e2e::bin;
use serde_json::{Value, json};

fn env_with_a_stdio_daemon() -> ManagerEnv {
    let server = bin("memory-server");
    ManagerEnv::with_config(&format!(
        "[daemons.notes]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
        server.display()
    ))
}

/// Opens a session on the host for `project`; returns the host's port.
fn open_session(env: &ManagerEnv, project: &std::path::Path) -> u16 {
    let port = poll(|| env.lock("notes").and_then(|l| l["port"].as_u64())) as u16;
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (code, answer) = http(
        port,
        "POST",
        "/mcp",
        &[("Accept", "application/json, text/event-stream"), ("Mcp-Project-Path", project.to_str().unwrap())],
        Some(&init.to_string()),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["result"]["serverInfo"]["name"], "memory-server", "{answer}");
    port
}

fn status_json(env: &ManagerEnv) -> Value {
    let run = env.manager(&["status", "--json"]);
    serde_json::from_str(run.ok()).unwrap()
}

fn notes(status: &Value) -> Value {
    status["daemons"].as_array().unwrap().iter().find(|d| d["name"] == "notes").cloned().unwrap()
}

#[test]
fn status_lists_a_hosts_children_and_stop_ends_them_too() {
    let env = env_with_a_stdio_daemon();
    let run = env.manager(&["ensure", "notes"]);
    run.ok();
    let host_pid = env.lock_pid("notes").expect("the host records itself in notes.lock");
    let project = env.env.project("alpha");
    open_session(&env, &project);

    let entry = notes(&status_json(&env));
    assert_eq!(entry["transport"], "stdio");
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["pid"], host_pid);
    let children = entry["children"].as_array().expect("children listed");
    assert_eq!(children.len(), 1, "{entry}");
    let child = &children[0];
    assert_eq!(child["share_key"], project.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(child["sessions"], 1);
    assert_eq!(child["restarts"], 0);
    assert!(child["rss_bytes"].as_u64().unwrap() > 0, "{child}");
    let child_pid = child["pid"].as_i64().unwrap() as i32;
    assert!(alive(child_pid));

    let table = env.manager(&["status"]);
    let text = table.ok();
    assert!(
        text.contains(&format!("notes: child for {}: pid {child_pid}", project.canonicalize().unwrap().display())),
        "{text}"
    );
    assert!(text.contains("1 session, 0 restarts, running"), "{text}");

    env.manager(&["stop", "notes"]).ok();
    poll(|| (!alive(host_pid) && !alive(child_pid)).then_some(()));
    assert!(env.lock("notes").is_none(), "the host removes its lock file");
}

#[test]
fn the_health_check_restarts_a_host_that_died() {
    let env = env_with_a_stdio_daemon();
    let mgr = env.serve(&["--health-interval-secs", "1"]);
    let (code, ensured) = mgr.post("/ensure", r#"{"name":"notes"}"#);
    assert_eq!(code, 200, "{ensured}");
    let first = env.lock_pid("notes").unwrap();
    kill(first, libc::SIGKILL);
    let second = poll(|| env.lock_pid("notes").filter(|p| *p != first && alive(*p)));
    let entry = poll(|| Some(mgr.status_of("notes")).filter(|e| e["alive"] == true));
    assert_eq!(entry["pid"], second);
    assert!(entry["restarts"].as_u64().unwrap() >= 1, "{entry}");
    // The new host serves sessions.
    open_session(&env, &env.env.project("beta"));
}

/// The host holds its children's tools for its own user only, as the daemon does: another
/// uid (through `setpriv`) and a page on a foreign origin are refused before any session
/// or child exists; its own user is served.
#[test]
fn the_host_serves_only_its_own_user_on_a_loopback_origin() {
    use e2e::curl::{As, OTHER_UID, curl, my_uid, post_json};
    let env = env_with_a_stdio_daemon();
    env.manager(&["ensure", "notes"]).ok();
    let port = poll(|| env.lock("notes").and_then(|l| l["port"].as_u64()));
    let url = format!("http://127.0.0.1:{port}/mcp");
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
    .to_string();
    let mut args = post_json(&init);
    args.extend(["-H", "Accept: application/json, text/event-stream"]);

    let other = curl(As::Other, &url, &args);
    assert_eq!(other.status, 403, "{}", other.text);
    let message = other.error_message();
    assert!(message.contains(&OTHER_UID.to_string()) && message.contains(&my_uid().to_string()), "{message}");
    let status = curl(As::Other, &format!("http://127.0.0.1:{port}/status"), &[]);
    assert_eq!(status.status, 403, "{}", status.text);

    let mut foreign = args.clone();
    foreign.extend(["-H", "Origin: http://evil.example"]);
    assert_eq!(curl(As::Me, &url, &foreign).status, 403);

    let me = curl(As::Me, &url, &args);
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.body["result"]["serverInfo"]["name"], "memory-server", "{}", me.text);
    // Only the served session reached the host, and with it the one child.
    let entry = notes(&status_json(&env));
    assert_eq!(entry["children"][0]["sessions"], 1, "{entry}");
}
