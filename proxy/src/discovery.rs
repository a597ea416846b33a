//! Finding or starting a daemon (SPEC 3.3), in order: ping the configured port; read
//! `<name>.lock` and ping its port; ask a listening manager (`POST /ensure`); start it
//! ourselves under an exclusive OS lock on `<name>.spawn.lock`, so that however many
//! proxies start at once, exactly one daemon is spawned.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{DaemonSpec, Launch, Target};
use crate::runtime::{LockInfo, RuntimeDir, now_rfc3339, pid_alive};

pub const DEFAULT_MANAGER_PORT: u16 = 3199;
const PING_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "daemon `{daemon}` is not running and has no command to start it; start it yourself on port {port} \
         or add `command` to its config"
    )]
    NoCommand { daemon: String, port: u16 },
    #[error("daemon `{daemon}`: `{command}` exited ({status}) before answering; see {log}")]
    ExitedUnbound { daemon: String, command: String, status: String, log: String },
    #[error("daemon `{daemon}`: `{command}` did not answer within {secs:.1} s (stopped it); see {log}")]
    TimeoutUnbound { daemon: String, command: String, secs: f64, log: String },
    #[error("daemon `{daemon}`: could not start `{command}`: {source}; see {log}")]
    Spawn { daemon: String, command: String, log: String, source: std::io::Error },
    #[error("daemon `{daemon}`: `{command}` exited ({status}) before answering on port {port}; see {log}")]
    Exited { daemon: String, command: String, port: u16, status: String, log: String },
    #[error("daemon `{daemon}`: `{command}` did not answer on port {port} within {secs:.1} s (stopped it); see {log}")]
    Timeout { daemon: String, command: String, port: u16, secs: f64, log: String },
    #[error("daemon `{daemon}`: {message}")]
    Io { daemon: String, message: String },
    #[error("daemon `{daemon}` is misconfigured: {message}")]
    Misconfigured { daemon: String, message: String },
}

/// Where a daemon answers, once found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub port: Option<u16>,
    /// Whether this call started the daemon.
    pub spawned: bool,
}

/// Whether something accepts TCP connections on the loopback port.
pub async fn ping(port: u16) -> bool {
    matches!(tokio::time::timeout(PING_TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port))).await, Ok(Ok(_)))
}

/// Finds the daemon or starts it. Remote (`url`) daemons are never started.
pub async fn find_or_start(
    spec: &DaemonSpec,
    runtime: &RuntimeDir,
    manager_port: u16,
) -> Result<Found, DiscoveryError> {
    find_or_start_via(spec, runtime, Some(manager_port)).await
}

/// [`find_or_start`] without step (3): for the manager itself, which must not ask itself.
pub async fn find_or_start_direct(spec: &DaemonSpec, runtime: &RuntimeDir) -> Result<Found, DiscoveryError> {
    find_or_start_via(spec, runtime, None).await
}

async fn find_or_start_via(
    spec: &DaemonSpec,
    runtime: &RuntimeDir,
    manager_port: Option<u16>,
) -> Result<Found, DiscoveryError> {
    if let Some(message) = &spec.misconfigured {
        return Err(DiscoveryError::Misconfigured { daemon: spec.name.clone(), message: message.clone() });
    }
    let (port, launch) = match &spec.target {
        Target::Remote { .. } => return Ok(Found { port: None, spawned: false }),
        Target::Local { port, launch } => (*port, launch.clone()),
    };
    // (1) The configured port (a host on an ephemeral port has none).
    if let Some(port) = port
        && ping(port).await
    {
        return Ok(Found { port: Some(port), spawned: false });
    }
    // (2) The lock file of whoever started it (possibly on another port).
    if let Some(found) = from_lock(spec, runtime).await {
        return Ok(found);
    }
    // (3) A manager, if one listens.
    if let Some(manager_port) = manager_port
        && ask_manager(manager_port, &spec.name).await
    {
        match port {
            Some(port) if ping(port).await => return Ok(Found { port: Some(port), spawned: false }),
            Some(_) => {}
            None => {
                if let Some(found) = from_lock(spec, runtime).await {
                    return Ok(found);
                }
            }
        }
    }
    // (4) Start it ourselves.
    let Some(launch) = launch else {
        return Err(DiscoveryError::NoCommand { daemon: spec.name.clone(), port: port.unwrap_or(0) });
    };
    let daemon = spec.name.clone();
    let spec = spec.clone();
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || spawn_locked(&spec, &runtime, port, &launch))
        .await
        .map_err(|e| DiscoveryError::Io { daemon, message: e.to_string() })?
}

/// The port of `<name>.lock`, when its pid lives and its port answers.
async fn from_lock(spec: &DaemonSpec, runtime: &RuntimeDir) -> Option<Found> {
    let lock = runtime.read_lock(&spec.name)?;
    (pid_alive(lock.pid) && ping(lock.port).await).then_some(Found { port: Some(lock.port), spawned: false })
}

/// `POST /ensure {"name"}` to a manager on loopback; false when none answers.
async fn ask_manager(port: u16, name: &str) -> bool {
    if !ping(port).await {
        return false;
    }
    // Plain HTTP on loopback: no TLS roots (reading the system's would only cost time).
    let client = reqwest::Client::builder().no_proxy().tls_certs_only([]).timeout(Duration::from_secs(30)).build();
    let Ok(client) = client else { return false };
    let body = serde_json::json!({ "name": name }).to_string();
    match client
        .post(format!("http://127.0.0.1:{port}/ensure"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    }
}

/// Step 4, on a blocking thread: take the spawn lock, re-check, spawn, wait for the port.
/// Without a configured port (mcp-host on an ephemeral one) the spawned process writes
/// `<name>.lock` itself once it listens, and that is what is waited for.
fn spawn_locked(
    spec: &DaemonSpec,
    runtime: &RuntimeDir,
    port: Option<u16>,
    launch: &Launch,
) -> Result<Found, DiscoveryError> {
    let io = |message: String| DiscoveryError::Io { daemon: spec.name.clone(), message };
    runtime.ensure().map_err(|e| io(e.to_string()))?;
    let lock_path = runtime.spawn_lock_file(&spec.name);
    let lock =
        crate::runtime::private_file(&lock_path, true).map_err(|e| io(format!("{}: {e}", lock_path.display())))?;
    lock.lock().map_err(|e| io(format!("locking {}: {e}", lock_path.display())))?;
    // Whoever held the lock before us may have started it meanwhile.
    if let Some(port) = port
        && blocking_ping(port)
    {
        return Ok(Found { port: Some(port), spawned: false });
    }
    if let Some(lock) = runtime.read_lock(&spec.name)
        && pid_alive(lock.pid)
        && blocking_ping(lock.port)
    {
        return Ok(Found { port: Some(lock.port), spawned: false });
    }
    runtime.remove_lock(&spec.name); // stale: its pid is dead or its port silent
    let log_path = runtime.log_file(&spec.name);
    let log = runtime.open_log(&spec.name).map_err(|e| io(format!("{}: {e}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|e| io(e.to_string()))?;
    let shown = command_line(launch);
    let log_name = log_path.display().to_string();

    let mut cmd = Command::new(&launch.command);
    cmd.args(&launch.args).envs(&launch.env).stdin(Stdio::null()).stdout(log).stderr(log_err);
    if let Some(cwd) = &launch.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: setsid puts the
    // daemon in its own session (so the client's signals to our group never reach
    // it), and SIGINT goes back to its default (we ignore it; children inherit that).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| DiscoveryError::Spawn {
        daemon: spec.name.clone(),
        command: shown.clone(),
        log: log_name.clone(),
        source,
    })?;
    if let Some(port) = port {
        let info = LockInfo {
            pid: child.id(),
            port,
            transport: spec.transport.as_str().to_owned(),
            started_at: now_rfc3339(),
        };
        runtime.write_lock(&spec.name, &info).map_err(|e| io(format!("writing the lock file: {e}")))?;
    }

    let deadline = Instant::now() + spec.startup_timeout;
    let bound = loop {
        let answering = match port {
            Some(port) => blocking_ping(port).then_some(port),
            None => {
                runtime.read_lock(&spec.name).filter(|l| l.pid == child.id() && blocking_ping(l.port)).map(|l| l.port)
            }
        };
        if let Some(port) = answering {
            break port;
        }
        if let Ok(Some(status)) = child.try_wait() {
            runtime.remove_lock(&spec.name);
            let (daemon, status) = (spec.name.clone(), status.to_string());
            return Err(match port {
                Some(port) => DiscoveryError::Exited { daemon, command: shown, port, status, log: log_name },
                None => DiscoveryError::ExitedUnbound { daemon, command: shown, status, log: log_name },
            });
        }
        if Instant::now() >= deadline {
            // Ours and silent: stop it, or every later attempt would start another
            // copy next to it (and a late one would take the port from under them).
            let _ = child.kill();
            let _ = child.wait();
            runtime.remove_lock(&spec.name);
            let (daemon, secs) = (spec.name.clone(), spec.startup_timeout.as_secs_f64());
            return Err(match port {
                Some(port) => DiscoveryError::Timeout { daemon, command: shown, port, secs, log: log_name },
                None => DiscoveryError::TimeoutUnbound { daemon, command: shown, secs, log: log_name },
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Reap the daemon if it dies while we live, so its pid never lingers as a zombie
    // that looks alive to other proxies.
    std::thread::spawn(move || child.wait());
    drop(lock);
    Ok(Found { port: Some(bound), spawned: true })
}

fn blocking_ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, PING_TIMEOUT).is_ok()
}

fn command_line(launch: &Launch) -> String {
    std::iter::once(launch.command.display().to_string())
        .chain(launch.args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}
