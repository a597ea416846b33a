//! Config keys end to end through the real binaries (issue 16):
//! - an unset `${VAR}` breaks only the daemon that uses it (SPEC 3.2): with the README's
//!   `team-memory` entry and `TEAM_MEMORY_TOKEN` unset, `mcp-proxy --target memory` works,
//!   `mcp-proxy --target team-memory` answers every request with an error naming the
//!   variable (and keeps running), and `mcp-manager status` (table, `--json`, and through
//!   a serving manager's API) shows `team-memory` as `misconfigured` with the message;
//! - `[manager] port` is the port `mcp-proxy` asks and `mcp-manager serve` listens on
//!   when neither is given a flag.

#[path = "proxy_common/mod.rs"]
mod common;
#[path = "manager_common/mod.rs"]
mod manager;

use std::process::Stdio;

use common::{Proxy, ProxyEnv};
use e2e::bin;
use manager::{ManagerEnv, Run, Served, poll, ppid, try_http};
use serde_json::{Value, json};

const TOKEN_VAR: &str = "TEAM_MEMORY_TOKEN";

fn status_entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    let daemons = status["daemons"].as_array().unwrap_or_else(|| panic!("no daemons: {status}"));
    daemons.iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("no {name} in {status}"))
}

fn assert_misconfigured(entry: &Value) {
    assert_eq!(entry["state"], "misconfigured", "{entry}");
    assert_eq!(entry["alive"], false, "{entry}");
    let error = entry["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("${{{TOKEN_VAR}}}")) && error.contains("not set"), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_variable_breaks_only_the_daemon_that_uses_it() {
    let pe = ProxyEnv::bare();
    // The README's example, with the team server's url on loopback: on the memory
    // daemon's port, so something answers there, which must not make it look usable.
    pe.write_config(&format!(
        "[daemons.memory]\nport = {port}\ntransport = \"streamable-http\"\n\n\
         [daemons.team-memory]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
         headers = {{ Authorization = \"Bearer ${{{TOKEN_VAR}}}\" }}\n",
        port = pe.port
    ));
    let project = pe.project("app");
    let spawn = |target: &str| {
        let mut cmd = pe.command(target, &project, &[]);
        cmd.env_remove(TOKEN_VAR);
        Proxy::spawn(cmd, target)
    };

    let mut memory = spawn("memory");
    memory.initialize().await;
    let list = memory.request(1, "tools/list", json!({})).await;
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(9), "{list}");
    memory.create_entity(2, "Ada").await;

    let mut team = spawn("team-memory");
    for (id, method) in [(0, "initialize"), (1, "tools/list"), (2, "ping")] {
        let params = match method {
            "initialize" => common::initialize_request(0)["params"].clone(),
            _ => json!({}),
        };
        let reply = team.request(id, method, params).await;
        let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("{method}: {reply}"));
        assert!(message.contains(TOKEN_VAR) && message.contains("team-memory"), "{method}: {message}");
    }
    assert!(team.child.try_wait().unwrap().is_none(), "the team-memory proxy keeps running");
    team.assert_protocol_only();

    // mcp-manager status, read directly (no manager serves on its port).
    let status_cmd = |args: &[&str]| {
        let mut cmd = pe.env.command(&bin("mcp-manager"));
        cmd.arg("--port").arg(pe.manager_port.to_string()).arg("status").args(args).env_remove(TOKEN_VAR);
        cmd
    };
    let table = tokio::task::block_in_place(|| Run::bounded(status_cmd(&[])));
    let row = table.ok().lines().find(|l| l.starts_with("team-memory")).unwrap_or_else(|| panic!("{}", table.stdout));
    assert!(row.contains("misconfigured"), "{row}");
    let named = table.ok().lines().any(|l| l.starts_with("team-memory: misconfigured:") && l.contains(TOKEN_VAR));
    assert!(named, "the table names the problem: {}", table.stdout);
    let memory_row = table.ok().lines().find(|l| l.starts_with("memory")).unwrap_or_default();
    assert!(memory_row.contains("running"), "{}", table.stdout);
    let json_run = tokio::task::block_in_place(|| Run::bounded(status_cmd(&["--json"])));
    let status: Value = serde_json::from_str(json_run.ok()).unwrap();
    assert_misconfigured(status_entry(&status, "team-memory"));
    assert_eq!(status_entry(&status, "memory")["state"], "running", "{status}");

    // The same through a serving manager's API.
    let log = pe.env.dir.path().join("manager.log");
    let mut serve = pe.env.command(&bin("mcp-manager"));
    serve.arg("--port").arg(pe.manager_port.to_string()).arg("serve").env_remove(TOKEN_VAR);
    serve.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let served = Served { child: serve.spawn().unwrap(), port: pe.manager_port, log };
    tokio::task::block_in_place(|| {
        poll(|| try_http(served.port, "GET", "/ping", &[], None).filter(|(s, _)| *s == 200))
    });
    assert_misconfigured(&served.status_of("team-memory"));
    let via_api = tokio::task::block_in_place(|| Run::bounded(status_cmd(&["--json"])));
    let status: Value = serde_json::from_str(via_api.ok()).unwrap();
    assert!(status["manager"].is_object(), "read through the API: {status}");
    assert_misconfigured(status_entry(&status, "team-memory"));
    assert_eq!(memory.entity_names(3).await, ["Ada"], "memory still works");
}

#[test]
fn the_manager_port_of_the_config_is_used_without_flags() {
    let env = ManagerEnv::new();
    env.write_config(&format!(
        "[daemons.memory]\nport = {}\n\n[manager]\nport = {}\n",
        env.memory_port, env.manager_port
    ));

    // `mcp-manager serve` without --port listens on the config's port.
    let log = env.env.dir.path().join("manager.log");
    let mut serve = env.env.command(&bin("mcp-manager"));
    serve.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let mut served = Served { child: serve.spawn().unwrap(), port: env.manager_port, log };
    let port = served.port;
    poll(|| {
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!("mcp-manager serve exited ({status}): {}", served.log_text());
        }
        try_http(port, "GET", "/ping", &[], None).filter(|(s, _)| *s == 200)
    });

    // `mcp-proxy` without --manager-port asks it, and the manager starts the daemon.
    let project = env.env.project("app");
    let mut proxy = env.env.command(&bin("mcp-proxy"));
    proxy.args(["--target", "memory", "--project"]).arg(&project);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut cmd = tokio::process::Command::from(proxy);
        cmd.kill_on_drop(true);
        let mut proxy = Proxy::spawn(cmd, "memory");
        proxy.initialize().await;
        let list = proxy.request(1, "tools/list", json!({})).await;
        assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(9), "{list}");
    });
    assert!(served.log_text().contains("POST /ensure: memory: started"), "{}", served.log_text());
    let pid = poll(|| env.lock_pid("memory"));
    assert_eq!(ppid(pid), Some(served.pid()), "the manager on the config's port started the daemon");
}
