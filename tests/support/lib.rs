//! Test harness for the end-to-end tests: isolated environments (temp HOME and runtime
//! dir), the real binaries started on ephemeral ports and always reaped, and a small
//! raw MCP-over-HTTP client for the checks that need to see statuses and headers.
//!
//! The binaries are found next to the test executable's `deps/` directory, where
//! `cargo test --workspace` builds them before running any test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod curl;
pub mod node;
pub mod postgres;
pub mod python;
pub mod rmcp_client;

/// Upper bound for anything a test waits on; tests never depend on speed, only on
/// things eventually happening within a generous bound.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a workspace binary built by cargo alongside the tests. Cargo builds a
/// package's binaries for `cargo test` only when that package is tested, so a binary
/// older than its sources means the suite was not run with `--workspace`: refuse it
/// rather than test stale code.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(name);
    let hint = "run the suite with `cargo test --workspace`";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is not built; {hint}", path.display()));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let crate_dir = match name {
        "memory-server" => "memory-server",
        "mcp-host" => "host",
        _ => "proxy",
    };
    let mut sources = vec![workspace.join(crate_dir).join("src")];
    if name == "mcp-host" {
        sources.push(workspace.join("proxy/src/config.rs")); // its config is the proxy's
    }
    if name == "memory-server" {
        sources.push(workspace.join("migrations")); // embedded at build time
    }
    // Cargo relinks a binary only when its own inputs change: another binary's
    // `src/bin/<other>.rs` does not make this one stale.
    let other_bin = |p: &Path| {
        p.parent().is_some_and(|d| d.ends_with("src/bin")) && p.file_stem() != Some(std::ffi::OsStr::new(name))
    };
    for sources in sources {
        if let Some(newest) = newest_mtime(&sources, &other_bin) {
            assert!(built >= newest, "{} is older than {}; {hint}", path.display(), sources.display());
        }
    }
    path
}

fn newest_mtime(dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if skip(&path) {
            continue;
        }
        let meta = entry.metadata().ok()?;
        let t = if meta.is_dir() { newest_mtime(&path, skip) } else { meta.modified().ok() };
        newest = newest.max(t);
    }
    newest
}

/// `target/tmp`, for things the tests install once and share (derived from the test
/// executable's location, so a custom `CARGO_TARGET_DIR` is honoured).
pub fn target_tmp() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe.parent().and_then(Path::parent).expect("target profile directory");
    profile.parent().unwrap_or(profile).join("tmp")
}

/// A fixture file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// An isolated user environment: a temp directory holding HOME and the runtime dir.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("mcp-e2e-").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("runtime")).unwrap();
        TestEnv { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    /// The global DB the daemon uses when no project header is sent.
    pub fn global_db(&self) -> PathBuf {
        self.home().join(".claude").join("memory.db")
    }

    /// Creates and returns a project directory `name` inside the environment.
    pub fn project(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("projects").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `memory-server stdio --project PROJECT` with piped stdin/stdout (stderr dropped).
    pub fn memory_server_stdio(&self, project: &Path) -> Child {
        self.command(&bin("memory-server"))
            .args(["stdio", "--project"])
            .arg(project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start memory-server stdio")
    }

    /// A command with the environment's HOME and runtime dir and nothing of the user's.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.home())
            .env("MCP_SESSION_MANAGER_HOME", self.runtime())
            .env_remove("MEMORY_DB_PATH")
            .env_remove("MEMORY_SERVER_TOKEN")
            .env_remove("CLAUDE_PROJECT_DIR")
            .env("RUST_LOG", "info");
        cmd
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A free loopback port (bound then released; callers retry on the rare collision).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `memory-server serve`, killed and reaped on drop.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `memory-server serve` on a free port with `extra` arguments and waits
    /// until `/health` answers.
    pub fn start(env: &TestEnv, extra: &[&str]) -> Daemon {
        Self::start_with(env, extra, |_| {})
    }

    pub fn start_with(env: &TestEnv, extra: &[&str], tweak: impl Fn(&mut Command)) -> Daemon {
        Self::launch(env, extra, tweak, None)
    }

    /// Starts `memory-server serve --token TOKEN` with `extra` arguments; readiness is
    /// polled with the bearer token (without it `/health` answers 401).
    pub fn start_with_token(env: &TestEnv, token: &str, extra: &[&str], tweak: impl Fn(&mut Command)) -> Daemon {
        let mut args = vec!["--token", token];
        args.extend_from_slice(extra);
        Self::launch(env, &args, tweak, Some(token))
    }

    fn launch(env: &TestEnv, extra: &[&str], tweak: impl Fn(&mut Command), token: Option<&str>) -> Daemon {
        for _ in 0..5 {
            let port = free_port();
            let log = env.dir.path().join(format!("daemon-{port}.log"));
            let mut cmd = env.command(&bin("memory-server"));
            cmd.arg("serve").arg("--port").arg(port.to_string()).args(extra);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
            tweak(&mut cmd);
            let child = cmd.spawn().expect("spawn memory-server");
            let mut daemon = Daemon { child, port, log };
            if daemon.wait_healthy(token) {
                return daemon;
            }
            let log_text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
            if !log_text.contains("already in use") {
                panic!("memory-server did not become healthy; log:\n{log_text}");
            }
        }
        panic!("could not find a free port for memory-server");
    }

    /// Polls `/health` until it answers, the process exits, or PATIENCE passes.
    fn wait_healthy(&mut self, token: Option<&str>) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && raw_get(self.port, "/health", token).is_some()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// `GET /health` as JSON.
    pub async fn health(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
        client.get(url).send().await.expect("GET /health").json().await.expect("/health is JSON")
    }

    /// Polls `/health` until its `key` equals `want` (bounded by PATIENCE).
    pub async fn wait_health(&self, key: &str, want: impl Into<Value>) {
        let want = want.into();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let h = self.health().await;
            if h[key] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{key} never became {want}: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP GET over a raw socket, for readiness checks.
fn raw_get(port: u16, path: &str, token: Option<&str>) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// Percent-encodes a project path for the `Mcp-Project-Path` header.
pub fn encode_project(path: &Path) -> String {
    percent_encoding::utf8_percent_encode(path.to_str().expect("UTF-8 path"), percent_encoding::NON_ALPHANUMERIC)
        .to_string()
}

/// A raw MCP-over-HTTP client: every call returns status, headers and body.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub url: String,
    pub project: Option<PathBuf>,
    pub session: Option<String>,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Http {
    pub fn new(url: String) -> Self {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Http { client, url, project: None, session: None, token: None }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn with_project(mut self, project: &Path) -> Self {
        self.project = Some(project.to_owned());
        self
    }

    /// POSTs a raw body with the usual MCP headers plus `extra`.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, extra: &[(&str, &str)]) -> Reply {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(p) = &self.project {
            req = req.header("mcp-project-path", encode_project(p));
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.expect("POST /mcp");
        Reply::read(resp).await
    }

    pub async fn post(&self, message: &Value) -> Reply {
        self.post_raw(message.to_string(), &[]).await
    }

    /// Sends `initialize` and keeps the session id.
    pub async fn initialize(&mut self, version: &str) -> Reply {
        let reply = self
            .post(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion": version, "capabilities": {}, "clientInfo": {"name":"e2e","version":"1"}}}))
            .await;
        self.session = reply.headers.get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
        reply
    }

    /// Calls a tool and returns the `result` object (panics on a JSON-RPC error).
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Value {
        let reply = self
            .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":arguments}}))
            .await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
        reply.body.get("result").cloned().unwrap_or_else(|| panic!("{name}: no result in {}", reply.text))
    }

    /// `read_graph`'s structured content.
    pub async fn read_graph(&self) -> Value {
        self.call_tool("read_graph", json!({})).await["structuredContent"].clone()
    }
}

impl Reply {
    async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }
}

/// The entity names of a `read_graph` structured result, in order.
pub fn entity_names(graph: &Value) -> Vec<String> {
    graph["entities"]
        .as_array()
        .map(|a| a.iter().map(|e| e["name"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}
