//! Helpers shared by the `manager_*` tests (included with `#[path]`): an isolated
//! environment whose `config.toml` points `memory` at a free port, bounded runs of
//! `mcp-manager`, a served manager that is always reaped, a raw HTTP client, and a Drop
//! guard that kills every daemon the test started, by the pid in its lock file.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{PATIENCE, TestEnv, bin, free_port};
use serde_json::Value;

pub struct ManagerEnv {
    pub env: TestEnv,
    pub memory_port: u16,
    /// The port every `mcp-manager` of this test is told about (`--port`).
    pub manager_port: u16,
}

impl ManagerEnv {
    /// `config.toml` with just `memory` (our memory-server, next to the binaries).
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// `memory` plus `extra` TOML.
    pub fn with_config(extra: &str) -> Self {
        let env = TestEnv::new();
        let me = ManagerEnv { env, memory_port: free_port(), manager_port: free_port() };
        me.write_config(&format!("[daemons.memory]\nport = {}\n{extra}", me.memory_port));
        me
    }

    pub fn runtime(&self) -> PathBuf {
        self.env.runtime()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.runtime().join("config.toml"), text).unwrap();
    }

    /// `mcp-manager --port <manager_port>`, with the environment's HOME and runtime dir.
    pub fn manager_command(&self) -> Command {
        let mut cmd = self.env.command(&bin("mcp-manager"));
        cmd.arg("--port").arg(self.manager_port.to_string());
        cmd
    }

    /// Runs `mcp-manager --port P args...` to completion (bounded).
    pub fn manager(&self, args: &[&str]) -> Run {
        let mut cmd = self.manager_command();
        cmd.args(args);
        Run::bounded(cmd)
    }

    /// `mcp-manager --port P serve extra...`, ready once `/ping` answers.
    pub fn serve(&self, extra: &[&str]) -> Served {
        let log = self.env.dir.path().join(format!("manager-{}.log", self.manager_port));
        let mut cmd = self.manager_command();
        cmd.arg("serve").args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawn mcp-manager serve");
        let mut served = Served { child, port: self.manager_port, log };
        let ready = poll(|| {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("mcp-manager serve exited ({status}): {}", served.log_text());
            }
            try_http(served.port, "GET", "/ping", &[], None).filter(|(s, _)| *s == 200)
        });
        assert_eq!(ready.1["service"], "mcp-manager");
        served
    }

    pub fn lock(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.runtime().join(format!("{name}.lock"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn lock_pid(&self, name: &str) -> Option<i32> {
        self.lock(name).and_then(|l| l["pid"].as_i64()).map(|p| p as i32)
    }

    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.runtime().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Whether the memory daemon answers `/health`.
    pub fn memory_up(&self) -> bool {
        try_http(self.memory_port, "GET", "/health", &[], None).is_some_and(|(s, _)| s == 200)
    }
}

impl Drop for ManagerEnv {
    /// Kills every daemon with a lock file in the runtime dir (the daemons run in their
    /// own sessions, so nothing else would).
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.runtime()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(daemon) = name.strip_suffix(".lock").filter(|n| !n.ends_with(".spawn"))
                && let Some(pid) = self.lock_pid(daemon)
                && pid > 0
            {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether the process exists and has not exited (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent pid, from `/proc/<pid>/stat`.
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A running `mcp-manager serve`, killed and reaped on drop.
pub struct Served {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Served {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(self.port, "GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        http(self.port, "POST", path, &[], Some(body))
    }

    /// The `/status` entry of one daemon.
    pub fn status_of(&self, name: &str) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        body["daemons"].as_array().unwrap().iter().find(|d| d["name"] == name).cloned().unwrap_or_else(|| {
            panic!("no {name} in {body}");
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished command.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` with piped output; panics if it takes longer than twice PATIENCE.
    pub fn bounded(mut cmd: Command) -> Run {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + PATIENCE * 2;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("command did not finish: {cmd:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run { code: status.code(), stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts a non-zero exit with exactly one line on stderr, and returns that line.
    pub fn one_line_error(&self) -> &str {
        assert!(matches!(self.code, Some(c) if c != 0), "exit {:?}; stdout: {}", self.code, self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr: {}", self.stderr);
        assert!(lines[0].starts_with("mcp-manager: "), "{}", lines[0]);
        lines[0]
    }
}

/// Polls `f` (every 50 ms) until it gives a value; panics after PATIENCE.
pub fn poll<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 request over a raw socket (so tests can send any Host header); `Host`
/// defaults to `127.0.0.1:<port>`. Returns status and JSON body (Null when not JSON).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, Value) {
    try_http(port, method, path, headers, body).unwrap_or_else(|| panic!("{method} {path}: no answer on {port}"))
}

pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, Value)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(PATIENCE * 2)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Some((status, serde_json::from_str(&payload).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
