//! Shared by the `mcp-host` end-to-end tests (`tests/host_*.rs`): a `ProxyEnv` (temp HOME,
//! runtime dir, the guard that kills every process started under it: proxies, the hosts
//! they spawned detached, and the hosts' node and python children, which all inherit the
//! environment's `MCP_SESSION_MANAGER_HOME`) with stdio daemons in its config; the host's
//! lock file and `/status`; process groups from `/proc`; the stdio servers under test
//! (the official `@modelcontextprotocol/server-everything` from npm and a FastMCP fixture
//! from the official Python SDK); and the Python SDK client driver.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::{PATIENCE, bin, fixture};
use serde_json::{Value, json};

use crate::common::{Proc, Proxy, ProxyEnv, alive, eventually};

/// The official reference server, the version the issue names.
pub const EVERYTHING: (&str, &str) = ("@modelcontextprotocol/server-everything", "2026.8.31");

/// The Python SDK the tests install: the same venv and requirement as
/// tests/proxy_upstreams.rs, so one venv serves both.
const PYTHON_MCP: &str = "mcp==1.30.0";

/// The whole run of the Python client driver, however long its scenario.
const DRIVER_PATIENCE: Duration = Duration::from_secs(180);

/// The venv's python with the SDK installed (`E2E_PYTHON_MCP` overrides the version, as
/// in tests/proxy_upstreams.rs).
pub fn python() -> PathBuf {
    let requirement = std::env::var("E2E_PYTHON_MCP").unwrap_or_else(|_| PYTHON_MCP.to_owned());
    e2e::python::python_with("e2e-venv", &requirement)
}

/// `node <server-everything>/dist/index.js stdio` as a command and its arguments.
pub fn everything_command() -> (PathBuf, Vec<String>) {
    let package = e2e::node::npm_package(EVERYTHING.0, EVERYTHING.1);
    let script = package.join("dist").join("index.js");
    (e2e::node::node(), vec![script.display().to_string(), "stdio".into()])
}

/// A TOML literal string (our paths hold no `'`).
pub fn lit(s: &str) -> String {
    assert!(!s.contains('\''), "{s:?} cannot be a TOML literal string");
    format!("'{s}'")
}

/// A `[daemons.NAME]` table for a stdio server: `command`, `args`, then `extra` lines
/// (`share = ...`, `env = ...`, `cwd = ...`, `idle_stop_secs = ...`, `port = ...`).
pub fn stdio_daemon(name: &str, command: &Path, args: &[String], extra: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| lit(a)).collect();
    let mut table = format!(
        "[daemons.{name}]\ntransport = \"stdio\"\ncommand = {}\nargs = [{}]\n",
        lit(&command.display().to_string()),
        args.join(", ")
    );
    for line in extra {
        table.push_str(line);
        table.push('\n');
    }
    table.push('\n');
    table
}

/// The FastMCP fixture as daemon `name`; its server calls itself `<name>-server` and
/// sees `FIXTURE_TAG=tag-<name>` (unless `extra` sets `env`).
pub fn fixture_daemon(name: &str, extra: &[&str]) -> String {
    let args = [fixture("host/stdio_server.py").display().to_string(), "--name".into(), format!("{name}-server")];
    let mut lines = extra.to_vec();
    let env = format!("env = {{ FIXTURE_TAG = \"tag-{name}\" }}");
    if !extra.iter().any(|l| l.starts_with("env")) {
        lines.push(&env);
    }
    stdio_daemon(name, &python(), &args, &lines)
}

/// server-everything as daemon `name`.
pub fn everything_daemon(name: &str, extra: &[&str]) -> String {
    let (node, args) = everything_command();
    stdio_daemon(name, &node, &args, extra)
}

pub struct HostEnv {
    pub pe: ProxyEnv,
}

impl HostEnv {
    /// An environment whose config.toml is `config`.
    pub fn new(config: &str) -> HostEnv {
        bin("mcp-host"); // fail early, with the harness's hint, when it is missing or stale
        let pe = ProxyEnv::bare();
        pe.write_config(config);
        HostEnv { pe }
    }

    pub fn project(&self, name: &str) -> PathBuf {
        self.pe.project(name).canonicalize().unwrap()
    }

    /// `mcp-proxy --target NAME` in `cwd` with `extra` arguments, driven with raw JSON lines.
    pub fn proxy(&self, target: &str, cwd: &Path, extra: &[&str]) -> Proxy {
        Proxy::spawn(self.pe.command(target, cwd, extra), target)
    }

    /// As [`proxy`](Self::proxy) with extra environment variables.
    pub fn proxy_env(&self, target: &str, cwd: &Path, vars: &[(&str, &Path)]) -> Proxy {
        let mut cmd = self.pe.command(target, cwd, &[]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Proxy::spawn(cmd, target)
    }

    /// `<name>.lock`, parsed.
    pub fn lock(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.pe.runtime().join(format!("{name}.lock"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `<name>.log`: the host's stderr, its children's stderr in it.
    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_file(name)).unwrap_or_default()
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.pe.runtime().join(format!("{name}.log"))
    }

    /// The host's pid and port from its lock file, once it names a live host.
    pub async fn host(&self, name: &str) -> (i32, u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(lock) = self.lock(name)
                && let (Some(pid), Some(port)) = (lock["pid"].as_i64(), lock["port"].as_u64())
                && alive(pid as i32)
            {
                return (pid as i32, port as u16);
            }
            assert!(Instant::now() < deadline, "no host for {name}; {name}.log:\n{}", self.log_text(name));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Live `mcp-host --target NAME` processes of this environment.
    pub fn hosts(&self, name: &str) -> Vec<Proc> {
        self.pe
            .processes()
            .into_iter()
            .filter(|p| {
                p.cmdline.first().is_some_and(|c| c.ends_with("mcp-host"))
                    && p.cmdline.windows(2).any(|w| w[0] == "--target" && w[1] == name)
            })
            .collect()
    }

    /// The host's `GET /status`.
    pub async fn status(&self, name: &str) -> Value {
        let (_, port) = self.host(name).await;
        get_json(port, "/status").await
    }

    /// The children of `/status`.
    pub async fn children(&self, name: &str) -> Vec<Value> {
        self.status(name).await["children"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (bounded) until `/status` satisfies `cond`; returns it.
    pub async fn wait_status(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.status(name).await;
            if cond(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; /status: {status}\n{name}.log:\n{}",
                self.log_text(name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the Python SDK client driver (`tests/fixtures/host/client.py`): `scenario` with
    /// one session per `(name, cwd)`, each through `mcp-proxy --target TARGET`. Returns
    /// the JSON it prints.
    pub async fn python_client(&self, scenario: &str, target: &str, sessions: &[(&str, &Path)]) -> Value {
        let manager_port = self.pe.manager_port.to_string();
        let proxy = bin("mcp-proxy").display().to_string();
        let command = [proxy.as_str(), "--target", target, "--manager-port", manager_port.as_str()];
        self.python_driver(scenario, sessions, &command).await
    }

    /// The driver with any server command (e.g. the server itself, for comparison).
    pub async fn python_driver(&self, scenario: &str, sessions: &[(&str, &Path)], command: &[&str]) -> Value {
        let mut cmd = self.pe.env.command(&python());
        cmd.arg(fixture("host/client.py")).arg(scenario);
        for (name, cwd) in sessions {
            cmd.arg("--session").arg(format!("{name}={}", cwd.display()));
        }
        cmd.arg("--").args(command);
        let stderr = self.pe.env.dir.path().join(format!("client-{scenario}-{}.stderr", e2e::free_port()));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).unwrap());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn().expect("spawn the Python client driver");
        let out = match tokio::time::timeout(DRIVER_PATIENCE, child.wait_with_output()).await {
            Ok(out) => out.expect("wait for the Python client driver"),
            Err(_) => panic!(
                "the Python client driver ran over {DRIVER_PATIENCE:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            ),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the Python client driver failed ({}): {text}\nits stderr:\n{}",
            out.status,
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("the driver printed no JSON ({e}): {text}"))
    }
}

/// `GET path` on a loopback port, as JSON.
pub async fn get_json(port: u16, path: &str) -> Value {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let resp = client.get(format!("http://127.0.0.1:{port}{path}")).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    resp.json().await.unwrap_or_else(|e| panic!("GET {path} on port {port} is not JSON: {e}"))
}

/// The pids of a `/status` document's children.
pub fn child_pids(status: &Value) -> Vec<i32> {
    status["children"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["pid"].as_i64()).map(|p| p as i32).collect())
        .unwrap_or_default()
}

/// Live (not zombie) processes whose process group is `pgid`.
pub fn group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until no process of group `pgid` lives.
pub async fn wait_group_gone(pgid: i32) {
    let what = format!("process group {pgid} gone");
    eventually(&what, || group(pgid).is_empty()).await;
}

/// The parent pid of a live process.
pub fn parent(pid: i32) -> Option<i32> {
    Proc::read(pid).map(|p| p.ppid)
}

/// `initialize` declaring `capabilities`.
pub fn initialize_with(id: u64, capabilities: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion": crate::common::VERSION, "capabilities": capabilities,
        "clientInfo": {"name":"e2e-host","version":"1"}}})
}

/// `tools/call` of `name` with `arguments` under `id`.
pub fn call(id: u64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":arguments}})
}

/// The text of a `tools/call` result (its text contents, joined).
pub fn text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Calls a tool through a raw proxy and returns its text (panics on any error).
pub async fn tool_text(proxy: &mut Proxy, id: u64, name: &str, arguments: Value) -> String {
    text(&proxy.call_tool(id, name, arguments).await)
}

/// `whoami` of the fixture: pid, cwd, tag.
pub async fn whoami(proxy: &mut Proxy, id: u64) -> Value {
    let t = tool_text(proxy, id, "whoami", json!({})).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("whoami is not JSON ({e}): {t}"))
}

/// `seen` of the fixture: what its process was asked to subscribe to and its levels.
pub async fn seen(proxy: &mut Proxy, id: u64) -> Value {
    let t = tool_text(proxy, id, "seen", json!({})).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("seen is not JSON ({e}): {t}"))
}

/// Whether `message` is a notification with this method.
pub fn is_notification(message: &Value, method: &str) -> bool {
    message.get("id").is_none() && message["method"] == method
}
