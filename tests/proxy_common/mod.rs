//! Shared by the `mcp-proxy` end-to-end tests (`tests/proxy_*.rs`): an isolated runtime
//! directory with its own `config.toml`, `mcp-proxy` children driven with raw
//! newline-delimited JSON-RPC, process inspection through `/proc`, and a guard that kills
//! every process started under the environment (proxies and the daemons they spawned
//! detached) when the test ends, however it ends.
#![allow(dead_code)]

pub mod bridge;
pub mod fake;
pub mod tls;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{PATIENCE, TestEnv, bin, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// The protocol version the raw clients ask for.
pub const VERSION: &str = "2025-06-18";

/// An isolated environment for proxies: temp HOME, runtime dir, a config naming free ports.
pub struct ProxyEnv {
    pub env: TestEnv,
    /// The port `memory` is configured on (nothing listens there until a proxy starts it).
    pub port: u16,
    /// A port nothing listens on, passed as `--manager-port` so that no mcp-manager that
    /// happens to run on this machine is ever asked to start anything.
    pub manager_port: u16,
}

impl ProxyEnv {
    /// `memory` on a free port, with the default command (the memory-server next to mcp-proxy).
    pub fn new() -> Self {
        let pe = Self::bare();
        pe.write_config(&format!("[daemons.memory]\nport = {}\n", pe.port));
        pe
    }

    /// No config file yet.
    pub fn bare() -> Self {
        // Fail early (with the harness's hint) when the binaries are missing or stale.
        bin("memory-server");
        bin("mcp-proxy");
        ProxyEnv { env: TestEnv::new(), port: free_port(), manager_port: free_port() }
    }

    pub fn runtime(&self) -> PathBuf {
        self.env.runtime()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.runtime().join("config.toml"), text).unwrap();
    }

    pub fn project(&self, name: &str) -> PathBuf {
        self.env.project(name)
    }

    /// `memory.lock`, parsed.
    pub fn lock(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.runtime().join("memory.lock")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn lock_pid(&self) -> Option<i32> {
        self.lock().and_then(|l| l["pid"].as_i64()).map(|p| p as i32)
    }

    /// `memory.log`: the spawned daemon's stdout and stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.runtime().join("memory.log")).unwrap_or_default()
    }

    /// `mcp-proxy --target TARGET --manager-port M [extra]` in `cwd`, with the environment's
    /// HOME and runtime dir, in a process group of its own (so a test can signal the
    /// proxy's whole group without signalling itself).
    pub fn command(&self, target: &str, cwd: &Path, extra: &[&str]) -> tokio::process::Command {
        let mut std_cmd = self.env.command(&bin("mcp-proxy"));
        std_cmd.arg("--target").arg(target).arg("--manager-port").arg(self.manager_port.to_string()).args(extra);
        std_cmd.current_dir(cwd);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.process_group(0).kill_on_drop(true);
        cmd
    }

    /// Starts `mcp-proxy --target memory` in `cwd` as the stdio transport of the official
    /// Rust SDK's client. Returns the transport, the proxy's pid and its stderr as it
    /// accumulates.
    pub fn spawn_rmcp(&self, cwd: &Path) -> (rmcp::transport::TokioChildProcess, i32, Arc<Mutex<String>>) {
        let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(self.command("memory", cwd, &[]))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcp-proxy");
        let pid = transport.id().expect("pid") as i32;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr.expect("stderr")).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        (transport, pid, log)
    }

    /// Starts `mcp-proxy --target memory` in `cwd`.
    pub fn spawn(&self, cwd: &Path) -> Proxy {
        Proxy::spawn(self.command("memory", cwd, &[]), "memory")
    }

    /// Processes started under this environment (their environment names our runtime
    /// dir): proxies, daemons, whatever a daemon command started. Zombies excluded.
    pub fn processes(&self) -> Vec<Proc> {
        let marker = format!("MCP_SESSION_MANAGER_HOME={}", self.runtime().display());
        let me = std::process::id() as i32;
        let mut found = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else { return found };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
            if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                continue;
            }
            if let Some(p) = Proc::read(pid)
                && p.state != 'Z'
            {
                found.push(p);
            }
        }
        found
    }

    /// Live `memory-server` processes of this environment serving our port.
    pub fn daemons(&self) -> Vec<Proc> {
        let port = self.port.to_string();
        self.processes()
            .into_iter()
            .filter(|p| p.cmdline.first().is_some_and(|c| c.ends_with("memory-server")) && p.cmdline.contains(&port))
            .collect()
    }

    /// Waits (bounded) until the lock file names a live daemon that answers `/health`;
    /// returns its pid.
    pub async fn wait_daemon(&self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pid) = self.lock_pid()
                && alive(pid)
                && self.try_health().await.is_some()
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no daemon came up; memory.log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /health` of the configured port.
    pub async fn try_health(&self) -> Option<Value> {
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().ok()?;
        let resp = client.get(format!("http://127.0.0.1:{}/health", self.port)).send().await.ok()?;
        resp.json().await.ok()
    }

    pub async fn health(&self) -> Value {
        self.try_health().await.unwrap_or_else(|| panic!("/health did not answer; memory.log:\n{}", self.log_text()))
    }

    /// Waits (bounded) until `/health` reports `n` live sessions.
    pub async fn wait_live_sessions(&self, n: u64) {
        self.wait_health("live_sessions", n).await;
    }

    /// Waits (bounded) until `/health` reports `want` under `key`.
    pub async fn wait_health(&self, key: &str, want: impl Into<Value>) {
        let want = want.into();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let health = self.health().await;
            if health[key] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{key} never became {want}: {health}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills every process of this environment and waits (bounded) until they are gone.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let procs = self.processes();
            if procs.is_empty() || Instant::now() >= deadline {
                return;
            }
            for p in procs {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of ours.
                unsafe {
                    libc::kill(p.pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyEnv {
    fn drop(&mut self) {
        if let Some(pid) = self.lock_pid()
            && self.processes().iter().any(|p| p.pid == pid)
        {
            // SAFETY: as in kill_all; the lock file's pid is a process of this environment.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.kill_all();
    }
}

/// A process as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub cmdline: Vec<String>,
}

impl Proc {
    pub fn read(pid: i32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain spaces: parse after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Proc { pid, ppid, state, cmdline })
    }
}

/// Whether any thread of `pid` still runs. Not just the main thread's state: after
/// SIGKILL the thread-group leader can show as a zombie while other threads are still
/// exiting, and until the last one has, the process's sockets stay open (a dying
/// daemon's listening socket still completes TCP handshakes).
pub fn alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()))
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// Waits (bounded) until every thread of `pid` has exited (it may remain a zombie).
pub async fn wait_dead(pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not die");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs a daemon and waits (bounded) until it is gone and its port refuses
/// connections: from then on, what answers on the port is a new daemon.
pub async fn kill_daemon(pid: i32, port: u16) {
    signal(pid, libc::SIGKILL);
    wait_dead(pid).await;
    let what = format!("port {port} closed");
    eventually(&what, || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()).await;
}

/// Signals `pid`, or with a negative `pid` the process group `-pid` (never 0 or -1,
/// which would reach the test itself or everything it may signal).
pub fn signal(pid: i32, sig: i32) {
    assert!(pid.abs() > 1, "refusing kill({pid})");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// Waits (bounded) until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `initialize` request the raw clients send.
pub fn initialize_request(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name":"e2e-proxy","version":"1"}}})
}

/// A running `mcp-proxy` with piped stdio. Every stdout line and stderr line is kept
/// (for the protocol-only checks); killed and reaped on drop.
pub struct Proxy {
    pub child: Child,
    pub pid: i32,
    pub target: String,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pending: VecDeque<Value>,
}

impl Proxy {
    pub fn spawn(mut cmd: tokio::process::Command, target: &str) -> Proxy {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mcp-proxy");
        let pid = child.id().expect("pid") as i32;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let seen = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                seen.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let seen = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                seen.lock().unwrap().push(line);
            }
        });
        Proxy { child, pid, target: target.to_owned(), stdin, lines, stdout, stderr, pending: VecDeque::new() }
    }

    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to the proxy's stdin");
        stdin.flush().await.unwrap();
    }

    pub async fn send(&mut self, message: &Value) {
        self.send_line(&message.to_string()).await;
    }

    /// The next stdout message (first any set aside by [`response`](Self::response)).
    pub async fn next_message(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.read_message().await
    }

    async fn read_message(&mut self) -> Value {
        match tokio::time::timeout(PATIENCE, self.lines.recv()).await {
            Ok(Some(line)) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
            }
            Ok(None) => panic!("the proxy closed its stdout; stderr:\n{}", self.stderr_text()),
            Err(_) => panic!("no message from the proxy within {PATIENCE:?}; stderr:\n{}", self.stderr_text()),
        }
    }

    /// The response with this id (other messages are set aside for `next_message`).
    pub async fn response(&mut self, id: u64) -> Value {
        let is_it = |v: &Value| v.get("id") == Some(&json!(id)) && v.get("method").is_none();
        if let Some(i) = self.pending.iter().position(is_it) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let v = self.read_message().await;
            if is_it(&v) {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    pub async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})).await;
        self.response(id).await
    }

    /// Sends a whole request and returns the response with its (numeric) id.
    pub async fn request_message(&mut self, message: Value) -> Value {
        let id = message["id"].as_u64().expect("a numeric id");
        self.send(&message).await;
        self.response(id).await
    }

    /// Sends a message and returns the next message on stdout (e.g. a stream's first).
    pub async fn first_after(&mut self, message: Value) -> Value {
        self.send(&message).await;
        self.next_message().await
    }

    /// `initialize` (id 0) and `notifications/initialized`; returns the initialize result.
    pub async fn initialize(&mut self) -> Value {
        self.send(&initialize_request(0)).await;
        let reply = self.response(0).await;
        let result = reply.get("result").cloned().unwrap_or_else(|| panic!("initialize failed: {reply}"));
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
        result
    }

    /// A successful `tools/call`'s result.
    pub async fn call_tool(&mut self, id: u64, name: &str, arguments: Value) -> Value {
        let reply = self.request(id, "tools/call", json!({"name":name,"arguments":arguments})).await;
        let result = reply
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{name} failed: {reply}\nproxy stderr:\n{}", self.stderr_text()));
        assert_ne!(result["isError"], json!(true), "{name} failed: {reply}");
        result
    }

    /// Creates one entity named `name`.
    pub async fn create_entity(&mut self, id: u64, name: &str) {
        self.call_tool(
            id,
            "create_entities",
            json!({"entities":[{"name":name,"entityType":"test","observations":[]}]}),
        )
        .await;
    }

    /// The entity names `read_graph` returns.
    pub async fn entity_names(&mut self, id: u64) -> Vec<String> {
        let result = self.call_tool(id, "read_graph", json!({})).await;
        e2e::entity_names(&result["structuredContent"])
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("wait for mcp-proxy"),
            Err(_) => panic!("the proxy did not exit within {PATIENCE:?}; stderr:\n{}", self.stderr_text()),
        }
    }

    /// Signals the proxy alone.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Signals the proxy's whole process group (the proxy leads its own group).
    pub fn signal_group(&self, sig: i32) {
        signal(-self.pid, sig);
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) until a stderr line contains `needle`.
    pub async fn wait_stderr(&self, needle: &str) {
        let what = format!("{needle:?} on the proxy's stderr");
        eventually(&what, || self.stderr_lines().iter().any(|l| l.contains(needle))).await;
    }

    pub fn stderr_count(&self, needle: &str) -> usize {
        self.stderr_lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Item 10: every stdout line so far is one JSON-RPC 2.0 message, and every stderr
    /// line carries the `[mcp-proxy:<target>]` prefix.
    pub fn assert_protocol_only(&self) {
        for line in self.stdout_lines() {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {line:?}"));
            assert_eq!(v["jsonrpc"], "2.0", "stdout line is not JSON-RPC 2.0: {line}");
            let is_response = v.get("id").is_some() && (v.get("result").is_some() != v.get("error").is_some());
            let is_request_or_notification = v.get("method").is_some_and(Value::is_string);
            assert!(is_response || is_request_or_notification, "stdout line is not a JSON-RPC message: {line}");
        }
        let prefix = format!("[mcp-proxy:{}] ", self.target);
        for line in self.stderr_lines() {
            assert!(line.starts_with(&prefix), "stderr line without the {prefix:?} prefix: {line:?}");
        }
    }
}
