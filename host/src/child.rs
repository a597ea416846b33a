//! One running copy of the stdio server: the process (its own process group, stdin and
//! stdout piped, stderr into the host's log), the handshake done once for every session,
//! and its lifecycle: started on first use, restarted with backoff when it dies while
//! sessions are attached (re-initialized, re-subscribed, its log level set again), and
//! stopped on request (stdin closed, then SIGTERM, then SIGKILL to its group).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mcp_proxy::config::Launch;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::mux::{Mux, Outgoing};
use crate::pool::ShareKey;

/// A child that lived at least this long before dying was not crash-looping.
const STABLE: Duration = Duration::from_secs(10);
/// Backoff between restarts of a crash-looping child: 1 s, doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After stdin closes, how long a child gets before SIGTERM, and then before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChildError {
    #[error("mcp-host: cannot start server `{name}` (`{command}`): {message}; see {log}")]
    Spawn { name: String, command: String, message: String, log: String },
    #[error("mcp-host: server `{name}` did not complete initialize: {message}; see {log}")]
    Handshake { name: String, message: String, log: String },
    #[error(
        "mcp-host: server `{name}` keeps exiting ({crashes} times in a row); next start in {wait_secs} s; see {log}"
    )]
    Backoff { name: String, crashes: u32, wait_secs: u64, log: String },
    #[error("mcp-host: server `{name}` is stopping")]
    Stopping { name: String },
}

/// What the child is doing.
enum Phase {
    Stopped,
    Running(Running),
    /// Died too often too fast: no start before `until`.
    Backoff {
        until: Instant,
    },
    /// Stopped for good (idle, session ended, shutdown).
    Retired,
}

struct Running {
    pid: u32,
    stdin: mpsc::UnboundedSender<String>,
    /// The child's `initialize` result, given to every session.
    init: Arc<Value>,
    started: Instant,
    /// Ends when the process has exited and been reaped.
    exited: tokio::sync::watch::Receiver<bool>,
}

struct Life {
    phase: Phase,
    generation: u64,
    restarts: u32,
    /// Deaths in a row of a child that had not lived [`STABLE`].
    crashes: u32,
    /// Since when no session is attached.
    idle_since: Option<Instant>,
}

pub struct Child {
    pub key: ShareKey,
    name: String,
    launch: Launch,
    startup_timeout: Duration,
    log: String,
    pub mux: Mutex<Mux>,
    life: Mutex<Life>,
    /// One start at a time.
    starting: tokio::sync::Mutex<()>,
}

/// What `/status` shows of a child.
pub struct ChildStatus {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: &'static str,
    pub sessions: usize,
    pub in_flight: usize,
}

impl Child {
    /// `project`: the directory of the session that makes it (a project's own, or a
    /// session's); a child for every session has none.
    pub fn new(
        key: ShareKey,
        project: Option<&Path>,
        name: &str,
        mut launch: Launch,
        startup_timeout: Duration,
        log: String,
    ) -> Arc<Child> {
        let fallback_roots = project.map(|dir| {
            json!([{
                "uri": file_uri(dir),
                "name": dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
            }])
        });
        match project {
            // It works in its project, unless the config says where, and sees it as
            // Claude Code shows a server its project (unless the config says otherwise).
            Some(dir) => {
                if launch.cwd.is_none() {
                    launch.cwd = Some(dir.to_path_buf());
                }
                launch.env.entry("CLAUDE_PROJECT_DIR".into()).or_insert_with(|| dir.display().to_string());
            }
            // Shared by every project: the home directory, rather than whichever
            // directory the proxy that happened to start the host was in.
            None => {
                if launch.cwd.is_none() {
                    launch.cwd = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(std::path::PathBuf::from);
                }
            }
        }
        Arc::new(Child {
            key,
            name: name.to_owned(),
            launch,
            startup_timeout,
            log,
            mux: Mutex::new(Mux::new(name, fallback_roots)),
            life: Mutex::new(Life { phase: Phase::Stopped, generation: 0, restarts: 0, crashes: 0, idle_since: None }),
            starting: tokio::sync::Mutex::new(()),
        })
    }

    pub fn mux(&self) -> MutexGuard<'_, Mux> {
        self.mux.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_idle(&self, idle: bool) {
        let mut life = self.life();
        life.idle_since = if idle { Some(life.idle_since.unwrap_or_else(Instant::now)) } else { None };
    }

    pub fn idle_for(&self) -> Option<Duration> {
        self.life().idle_since.map(|t| t.elapsed())
    }

    pub fn status(&self) -> ChildStatus {
        let (pid, state, restarts) = {
            let life = self.life();
            let (pid, state) = match &life.phase {
                Phase::Running(r) => (Some(r.pid), "running"),
                Phase::Stopped => (None, "stopped"),
                Phase::Backoff { .. } => (None, "crash-loop"),
                Phase::Retired => (None, "stopped"),
            };
            (pid, state, life.restarts)
        };
        let mux = self.mux();
        ChildStatus { pid, restarts, state, sessions: mux.members(), in_flight: mux.in_flight() }
    }

    /// The child's `initialize` result, starting the child first when it is not running.
    pub async fn ensure_running(self: &Arc<Self>) -> Result<Arc<Value>, ChildError> {
        if let Some(init) = self.running_init()? {
            return Ok(init);
        }
        let _one = self.starting.lock().await;
        if let Some(init) = self.running_init()? {
            return Ok(init);
        }
        self.start().await
    }

    fn running_init(&self) -> Result<Option<Arc<Value>>, ChildError> {
        let life = self.life();
        match &life.phase {
            Phase::Running(r) => Ok(Some(r.init.clone())),
            Phase::Backoff { until } if *until > Instant::now() => Err(ChildError::Backoff {
                name: self.name.clone(),
                crashes: life.crashes,
                wait_secs: until.saturating_duration_since(Instant::now()).as_secs().max(1),
                log: self.log.clone(),
            }),
            Phase::Retired => Err(ChildError::Stopping { name: self.name.clone() }),
            _ => Ok(None),
        }
    }

    /// Writes one message to the child (dropped when it is not running: whoever waits
    /// for an answer has been failed already, or will be when the death is noticed).
    pub fn send(&self, message: &Value) {
        self.send_line(message.to_string());
    }

    /// [`Child::send`] for a message that is JSON text on one line already.
    pub fn send_line(&self, line: String) {
        if let Phase::Running(r) = &self.life().phase {
            let _ = r.stdin.send(line);
        }
    }

    /// Sends a request of the host's own and waits for its answer (bounded).
    pub async fn ask(&self, method: &str, params: Value) -> Result<Value, String> {
        let (message, rx) = self.mux().host_request(method, params);
        self.send(&message);
        match tokio::time::timeout(self.startup_timeout, rx).await {
            Ok(Ok(answer)) => match answer.get("error") {
                Some(e) => Err(e.get("message").and_then(Value::as_str).unwrap_or("error").to_owned()),
                None => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
            },
            Ok(Err(_)) => Err("the server exited".into()),
            Err(_) => Err(format!("no answer within {:?}", self.startup_timeout)),
        }
    }

    async fn start(self: &Arc<Self>) -> Result<Arc<Value>, ChildError> {
        let shown = std::iter::once(self.launch.command.display().to_string())
            .chain(self.launch.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_error = |message: String| ChildError::Spawn {
            name: self.name.clone(),
            command: shown.clone(),
            message,
            log: self.log.clone(),
        };
        let mut cmd = tokio::process::Command::new(&self.launch.command);
        cmd.args(&self.launch.args)
            .envs(&self.launch.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so stopping it reaches what it starts (npx starts node).
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &self.launch.cwd {
            cmd.current_dir(cwd);
        }
        let mut process = cmd.spawn().map_err(|e| spawn_error(e.to_string()))?;
        let pid = process.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (process.stdin.take(), process.stdout.take(), process.stderr.take())
        else {
            let _ = process.start_kill();
            return Err(spawn_error("its pipes could not be opened".into()));
        };
        let generation = {
            let mut life = self.life();
            life.generation += 1;
            life.generation
        };
        crate::log(&self.name, &format!("started `{shown}` for {} (pid {pid})", self.key));

        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_lines(stdin, stdin_rx));
        let label = format!("{} {} pid {pid}", self.name, self.key);
        tokio::spawn(copy_stderr(stderr, label));
        let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);
        // The handshake's answer is routed by the reader like any other.
        let (init_msg, init_rx) = self.mux().host_request(
            "initialize",
            json!({
                "protocolVersion": mcp_wire::V2025_11_25,
                // Every capability a session may bring: a server request that no
                // attached session can answer gets an error from the mux instead.
                "capabilities": {
                    "roots": {"listChanged": true},
                    "sampling": {},
                    "elicitation": {"form": {}, "url": {}},
                },
                "clientInfo": {"name": "mcp-host", "version": env!("CARGO_PKG_VERSION")},
            }),
        );
        let _ = stdin_tx.send(init_msg.to_string());
        tokio::spawn(self.clone().read(stdout, process, generation, exited_tx));

        let answer = match tokio::time::timeout(self.startup_timeout, init_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(self.handshake_failed(pid, "it exited before answering".into())),
            Err(_) => {
                let message = format!("no answer within {:.1} s", self.startup_timeout.as_secs_f64());
                return Err(self.handshake_failed(pid, message));
            }
        };
        let init = match (answer.get("result"), answer.get("error")) {
            (Some(result), None) => Arc::new(result.clone()),
            (_, Some(e)) => {
                let message = e.get("message").and_then(Value::as_str).unwrap_or("error").to_owned();
                return Err(self.handshake_failed(pid, message));
            }
            _ => return Err(self.handshake_failed(pid, "it exited before answering".into())),
        };
        let _ = stdin_tx.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        {
            let mut life = self.life();
            if life.generation != generation || matches!(life.phase, Phase::Retired) {
                return Err(ChildError::Stopping { name: self.name.clone() });
            }
            life.phase = Phase::Running(Running {
                pid,
                stdin: stdin_tx,
                init: init.clone(),
                started: Instant::now(),
                exited: exited_rx,
            });
        }
        // What sessions had asked of the previous copy.
        let (uris, level) = {
            let mux = self.mux();
            (mux.subscribed(), mux.child_level())
        };
        let me = self.clone();
        tokio::spawn(async move {
            for uri in uris {
                if let Err(e) = me.ask("resources/subscribe", json!({"uri": uri})).await {
                    crate::log(&me.name, &format!("re-subscribing {uri}: {e}"));
                }
            }
            if let Some(level) = level {
                let _ = me.ask("logging/setLevel", json!({"level": level.as_str()})).await;
            }
        });
        Ok(init)
    }

    /// A child that did not complete the handshake is of no use: it goes (the reader
    /// reaps it and counts the failure towards the crash-loop backoff).
    fn handshake_failed(&self, pid: u32, message: String) -> ChildError {
        signal_group(pid, libc::SIGKILL);
        ChildError::Handshake { name: self.name.clone(), message, log: self.log.clone() }
    }

    /// Reads the child's stdout until it closes, routing each message; then reaps it and
    /// decides what follows (restart, backoff, or nothing).
    async fn read(
        self: Arc<Self>,
        stdout: tokio::process::ChildStdout,
        mut process: tokio::process::Child,
        generation: u64,
        exited: tokio::sync::watch::Sender<bool>,
    ) {
        let pid = process.id().unwrap_or(0);
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    crate::log(&self.name, &format!("reading from pid {pid}: {e}"));
                    break;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            // The common line, a session's answer, goes back as it came, its id put back.
            if let Some((child_id, id)) = crate::wire::answer(&line) {
                let answered = self.mux().answer_line(child_id, &line, id);
                if let Some((sink, text)) = answered {
                    let _ = sink.send(Outgoing::Answer(text));
                    continue;
                }
            }
            let message: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    crate::log(&self.name, &format!("pid {pid} wrote a line that is not JSON ({e}): {}", clip(&line)));
                    continue;
                }
            };
            let routed = self.mux().route(message);
            if let Some(answer) = routed.to_child {
                self.send(&answer);
            }
            for (sink, message) in routed.deliver {
                let _ = sink.send(message.into());
            }
        }
        // Its stdout is closed: it is exiting (or wants to). Give it a moment, then make sure.
        let status = match tokio::time::timeout(STOP_GRACE, process.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                signal_group(pid, libc::SIGKILL);
                process.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
            }
        };
        // What it started may outlive it in its group.
        signal_group(pid, libc::SIGTERM);
        let _ = exited.send(true);

        let (retired, lived) = {
            let mut life = self.life();
            if life.generation != generation {
                return;
            }
            let lived = match &life.phase {
                Phase::Running(r) => Some(r.started.elapsed()),
                _ => None,
            };
            let retired = matches!(life.phase, Phase::Retired);
            if !retired {
                life.phase = Phase::Stopped;
            }
            (retired, lived)
        };
        let why =
            format!("mcp-host: server `{}` exited ({status}) while this request ran; see {}", self.name, self.log);
        let failed = self.mux().fail_all(&why, &format!("it exited ({status})"));
        for (sink, message) in failed {
            let _ = sink.send(message.into());
        }
        if retired {
            crate::log(&self.name, &format!("pid {pid} for {} stopped ({status})", self.key));
            return;
        }
        crate::log(&self.name, &format!("pid {pid} for {} exited ({status}); see above for its stderr", self.key));
        // Restart while sessions are attached, so their subscriptions keep working;
        // without sessions the next one starts it.
        let wait = {
            let mut life = self.life();
            life.crashes = if lived.is_some_and(|d| d >= STABLE) { 0 } else { life.crashes + 1 };
            life.restarts += 1;
            let wait = match life.crashes {
                0 | 1 => Duration::ZERO,
                n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_BACKOFF),
            };
            if !wait.is_zero() {
                life.phase = Phase::Backoff { until: Instant::now() + wait };
            }
            wait
        };
        // A child that never completed its handshake is not restarted here: whoever was
        // starting it reports the failure, and the next request tries again (after the
        // backoff, when it keeps failing).
        if self.mux().members() == 0 || lived.is_none() {
            return;
        }
        tokio::time::sleep(wait).await;
        {
            let mut life = self.life();
            if life.generation != generation {
                return; // someone started it meanwhile
            }
            if let Phase::Backoff { .. } = life.phase {
                life.phase = Phase::Stopped;
            }
        }
        self.restart().await;
    }

    /// Starts it again. Boxed: starting spawns the reader, whose end calls this, and the
    /// compiler cannot see through that cycle that the futures are `Send`.
    fn restart(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.ensure_running().await {
                crate::log(&self.name, &format!("restart for {}: {e}", self.key));
            }
        })
    }

    /// Stops the child for good (idle, its session ended, shutdown) and waits until it
    /// has exited: stdin closed, SIGTERM to its group after a grace period, SIGKILL after
    /// another.
    pub async fn retire(&self) {
        let running = {
            let mut life = self.life();
            match std::mem::replace(&mut life.phase, Phase::Retired) {
                Phase::Running(r) => Some(r),
                _ => None,
            }
        };
        let Some(Running { pid, stdin, mut exited, .. }) = running else { return };
        drop(stdin); // the writer ends and closes the pipe: most servers exit on EOF
        for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
            if let Some(signal) = signal {
                signal_group(pid, signal);
            }
            if tokio::time::timeout(STOP_GRACE, exited.wait_for(|done| *done)).await.is_ok() {
                return;
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid` (ours: the child was made its leader).
fn signal_group(pid: u32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}

async fn write_lines(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        if stdin.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        // Flush only when nothing else waits, so bursts go out in few writes.
        if rx.is_empty() && stdin.flush().await.is_err() {
            return;
        }
    }
}

/// The child's stderr, line by line, into the host's log with its name and pid.
async fn copy_stderr(stderr: tokio::process::ChildStderr, label: String) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{label}] {line}");
    }
}

fn clip(line: &str) -> String {
    line.chars().take(200).collect()
}

/// `file://` URI of a directory, percent-encoding what a URI path cannot hold.
fn file_uri(dir: &std::path::Path) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?');
    format!("file://{}", utf8_percent_encode(&dir.to_string_lossy(), PATH))
}
