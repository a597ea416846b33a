//! Operations on one daemon that both the CLI and the API use: a status snapshot, stopping
//! (SIGTERM, then SIGKILL after a timeout, then the lock file goes), and the tail of its log.
//! Starting is [`crate::discovery`]'s job.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{DaemonSpec, Launch, Target};
use crate::discovery::ping;
use crate::runtime::{RuntimeDir, parse_rfc3339, pid_alive};

/// How long a daemon gets to exit after SIGTERM before SIGKILL (memory-server drains
/// in-flight requests for up to 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(12);

/// What `/status` and `status --json` report per daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    Stopped,
    Starting,
    CrashLoop,
    /// Its entry uses a `${VAR}` that is not set: it cannot be started or reached.
    Misconfigured,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::CrashLoop => "crash-loop",
            State::Misconfigured => "misconfigured",
        }
    }
}

/// One daemon as seen now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub name: String,
    /// The port it answers on (the lock file's, else the configured one); null for `url` daemons.
    pub port: Option<u16>,
    pub transport: String,
    /// From the lock file, when that process is alive.
    pub pid: Option<u32>,
    /// Whether it accepts connections (on its port, or at its URL's host and port).
    pub alive: bool,
    pub uptime_secs: Option<u64>,
    pub log_file: Option<String>,
    /// Restarts by the manager's health check since the manager started.
    pub restarts: u32,
    pub state: State,
    /// For `url` daemons: where they are reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// While in a crash loop: the current delay before the next restart attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_secs: Option<u64>,
    /// The last start failure the manager saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// For a stdio server (`transport = "stdio"`): the children its mcp-host runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<HostedChild>>,
}

/// One child of an mcp-host, as its `GET /status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedChild {
    /// The project directory or session id it serves (`*`: every session).
    pub share_key: String,
    pub pid: Option<u32>,
    /// Resident memory of its whole process group.
    pub rss_bytes: Option<u64>,
    /// Sessions attached to it now.
    pub sessions: u64,
    pub restarts: u32,
    /// `running`, `stopped` or `crash-loop`.
    pub state: String,
}

/// Looks at a daemon: its lock file, whether that pid lives, whether its port answers.
/// The manager-only fields (`restarts`, backoff) are left empty for the caller to fill.
pub async fn snapshot(spec: &DaemonSpec, runtime: &RuntimeDir) -> DaemonStatus {
    let mut status = look(spec, runtime).await;
    if let Some(problem) = &spec.misconfigured
        && !status.alive
    {
        status.state = State::Misconfigured;
        status.last_error = Some(problem.clone());
    }
    if spec.hosted.is_some()
        && status.alive
        && let Some(port) = status.port
    {
        status.children = Some(host_children(port).await.unwrap_or_default());
    }
    status
}

/// The children an mcp-host on `port` runs (its `GET /status`).
async fn host_children(port: u16) -> Option<Vec<HostedChild>> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().ok()?;
    let resp = client.get(format!("http://127.0.0.1:{port}/status")).send().await.ok()?;
    let mut body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
    serde_json::from_value(body.get_mut("children")?.take()).ok()
}

async fn look(spec: &DaemonSpec, runtime: &RuntimeDir) -> DaemonStatus {
    let transport = spec.transport.as_str().to_owned();
    let port = match &spec.target {
        Target::Remote { url } => {
            // A misconfigured url daemon is not probed: whatever answers there cannot be
            // used until its variable is set (and its url may be the placeholder).
            let alive = match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) if spec.misconfigured.is_none() => probe(host, port).await,
                _ => false,
            };
            return DaemonStatus {
                name: spec.name.clone(),
                port: None,
                transport,
                pid: None,
                alive,
                uptime_secs: None,
                log_file: None,
                restarts: 0,
                state: if alive { State::Running } else { State::Stopped },
                url: Some(url.to_string()),
                backoff_secs: None,
                last_error: None,
                children: None,
            };
        }
        Target::Local { port, .. } => *port,
    };
    let lock = runtime.read_lock(&spec.name).filter(|l| pid_alive(l.pid));
    let port = lock.as_ref().map(|l| l.port).or(port);
    let alive = match port {
        Some(port) => ping(port).await,
        None => false,
    };
    let uptime_secs = lock
        .as_ref()
        .and_then(|l| parse_rfc3339(&l.started_at))
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs());
    let state = match (alive, &lock) {
        (true, _) => State::Running,
        // A live process that does not answer yet: coming up (or hung).
        (false, Some(_)) => State::Starting,
        (false, None) => State::Stopped,
    };
    DaemonStatus {
        name: spec.name.clone(),
        port,
        transport,
        pid: lock.as_ref().map(|l| l.pid),
        alive,
        uptime_secs,
        log_file: Some(runtime.log_file(&spec.name).display().to_string()),
        restarts: 0,
        state,
        url: None,
        backoff_secs: None,
        last_error: None,
        children: None,
    }
}

async fn probe(host: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(tokio::time::timeout(Duration::from_secs(2), connect).await, Ok(Ok(_)))
}

/// What [`stop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (a stale lock file, if any, was removed).
    NotRunning,
    /// It exited after SIGTERM (`killed` false) or had to be SIGKILLed.
    Stopped { pid: u32, killed: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("daemon `{daemon}` is reached by url and was not started by us; stop it where it runs")]
    Remote { daemon: String },
    #[error(
        "daemon `{daemon}` answers on port {port} but has no lock file in {dir} (it was not started by \
         mcp-proxy or mcp-manager); stop it yourself (find it with `ss -ltnp 'sport = :{port}'`)"
    )]
    Foreign { daemon: String, port: u16, dir: String },
    #[error("daemon `{daemon}`: pid {pid} did not exit even after SIGKILL; check it with `ps -p {pid}`")]
    Stuck { daemon: String, pid: u32 },
    #[error("daemon `{daemon}`: cannot signal pid {pid}: {source}")]
    Signal { daemon: String, pid: u32, source: std::io::Error },
}

/// Stops a daemon: SIGTERM to the pid in its lock file, SIGKILL when it has not exited
/// after `timeout`, then removes the lock file (unless someone already replaced it).
/// Blocking; run it on a blocking thread from async code.
pub fn stop(spec: &DaemonSpec, runtime: &RuntimeDir, timeout: Duration) -> Result<Stopped, StopError> {
    let (port, launch) = match &spec.target {
        Target::Remote { .. } => return Err(StopError::Remote { daemon: spec.name.clone() }),
        Target::Local { port, launch } => (*port, launch.as_ref()),
    };
    // Nothing of ours runs: fine, unless something we did not start holds the port.
    let not_running = || {
        if let Some(port) = port
            && blocking_ping(port)
        {
            return Err(StopError::Foreign {
                daemon: spec.name.clone(),
                port,
                dir: runtime.root().display().to_string(),
            });
        }
        Ok(Stopped::NotRunning)
    };
    let Some(lock) = runtime.read_lock(&spec.name) else {
        return not_running();
    };
    let remove_lock = || {
        // Only our lock: a proxy may have started a new daemon in the meantime.
        if runtime.read_lock(&spec.name).is_some_and(|l| l.pid == lock.pid) {
            runtime.remove_lock(&spec.name);
        }
    };
    // A pid from a stale lock file may since belong to an unrelated process: signal it only
    // when the daemon answers on the lock's port or the process is the configured command.
    if !pid_alive(lock.pid) || !(blocking_ping(lock.port) || runs_command(lock.pid, launch)) {
        remove_lock();
        return not_running();
    }
    let pid = lock.pid;
    signal(pid, libc::SIGTERM).map_err(|source| StopError::Signal { daemon: spec.name.clone(), pid, source })?;
    let mut killed = false;
    if !wait_exit(pid, timeout) {
        killed = true;
        signal(pid, libc::SIGKILL).map_err(|source| StopError::Signal { daemon: spec.name.clone(), pid, source })?;
        if !wait_exit(pid, Duration::from_secs(5)) {
            return Err(StopError::Stuck { daemon: spec.name.clone(), pid });
        }
    }
    remove_lock();
    Ok(Stopped::Stopped { pid, killed })
}

fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(e) }
}

/// Polls until the pid is gone (reaped by its parent, or re-parented and reaped by init).
fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_alive(pid) || is_zombie(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A zombie has exited; only its parent's `wait` is missing. Linux only (`/proc`).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Whether the process runs the daemon's configured command (Linux `/proc`; false
/// where that cannot be read).
fn runs_command(pid: u32, launch: Option<&Launch>) -> bool {
    let (Some(launch), Ok(cmdline)) = (launch, std::fs::read(format!("/proc/{pid}/cmdline"))) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = std::path::Path::new(std::str::from_utf8(argv0).unwrap_or_default());
    argv0.file_name().is_some() && argv0.file_name() == launch.command.file_name()
}

fn blocking_ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The last `lines` lines of the daemon's log, reaching into `<name>.log.1` when the
/// current file (just rotated) is shorter. None when there is no log at all.
pub fn tail_log(runtime: &RuntimeDir, name: &str, lines: usize) -> Option<String> {
    let current = runtime.log_file(name);
    let previous = runtime.root().join(format!("{name}.log.1"));
    let mut text = read_tail(&current, lines)?;
    let have = text.lines().count();
    if have < lines
        && let Some(older) = read_tail(&previous, lines - have)
    {
        text = older + &text;
    }
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Some(out)
}

/// Reads enough of the end of a file for `lines` lines (a bounded read, however big
/// the file).
fn read_tail(path: &std::path::Path, lines: usize) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::new();
        f.by_ref().take(window).read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let text = if start > 0 {
            // Drop the partial first line.
            text.split_once('\n').map_or(String::new(), |(_, rest)| rest.to_owned())
        } else {
            text
        };
        if start == 0 || text.lines().count() > lines || window >= 8 * 1024 * 1024 {
            return Some(text);
        }
        window *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_reach_into_the_rotated_log() {
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::at(dir.path().to_owned());
        assert_eq!(tail_log(&rt, "x", 5), None);
        std::fs::write(dir.path().join("x.log.1"), "a\nb\nc\n").unwrap();
        std::fs::write(rt.log_file("x"), "d\ne\n").unwrap();
        assert_eq!(tail_log(&rt, "x", 3).unwrap(), "c\nd\ne\n");
        assert_eq!(tail_log(&rt, "x", 1).unwrap(), "e\n");
        assert_eq!(tail_log(&rt, "x", 10).unwrap(), "a\nb\nc\nd\ne\n");
    }

    #[test]
    fn tails_of_big_files_are_bounded_reads() {
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::at(dir.path().to_owned());
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(rt.log_file("x"), &text).unwrap();
        assert_eq!(tail_log(&rt, "x", 2).unwrap(), "line 99998\nline 99999\n");
        assert_eq!(tail_log(&rt, "x", 20_000).unwrap().lines().next(), Some("line 80000"));
    }

    #[test]
    fn states_are_kebab_case() {
        assert_eq!(serde_json::to_value(State::CrashLoop).unwrap(), "crash-loop");
        assert_eq!(State::CrashLoop.as_str(), "crash-loop");
    }
}
