//! `mcp-manager`: the operator's side. [`Manager`] holds the configuration, the runtime
//! directory and the health-check bookkeeping; the HTTP API ([`api`]) and the command
//! line ([`cli`]) both call its operations, which in turn are the shared ones:
//! starting is [`discovery::find_or_start_direct`] (the proxy's own spawn path, under the
//! same spawn lock), stopping and status are [`control`].

pub mod api;
pub mod cli;
pub mod client_config;
pub mod control;
pub mod health;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, DaemonSpec, Target};
use crate::discovery::{self, DiscoveryError};
use crate::runtime::RuntimeDir;
use control::{DaemonStatus, State, StopError, Stopped};
use health::{Action, Policy, Watch};

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// Logs one line to stderr, prefixed `[mcp-manager]`.
pub fn log(message: &str) {
    eprintln!("[mcp-manager] {message}");
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("unknown daemon `{name}`; configured daemons ({file}): {names}")]
    Unknown { name: String, file: String, names: String },
    #[error("daemon `{name}` is reached by url ({url}) and never started by mcp-manager; start it where it runs")]
    Remote { name: String, url: String },
    #[error(transparent)]
    Start(#[from] DiscoveryError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error("daemon `{name}`: {message}")]
    Internal { name: String, message: String },
}

/// The answer to a start or ensure (API and CLI alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartReply {
    pub name: String,
    pub running: bool,
    pub port: Option<u16>,
    pub transport: String,
    pub pid: Option<u32>,
    /// Whether this call spawned it.
    pub started: bool,
}

/// The answer to a stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopReply {
    pub name: String,
    /// Whether it was running (and so was stopped by this call).
    pub stopped: bool,
    pub pid: Option<u32>,
    /// Whether SIGTERM was not enough.
    pub killed: bool,
}

/// One daemon's outcome in `start-all`, `stop-all` or `ensure-all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub name: String,
    pub ok: bool,
    /// What happened, or the error.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllReply {
    pub ok: bool,
    pub results: Vec<ItemResult>,
}

impl AllReply {
    pub fn from_results(results: Vec<ItemResult>) -> AllReply {
        AllReply { ok: results.iter().all(|r| r.ok), results }
    }
}

impl StartReply {
    /// `memory: started on port 3100 (pid 42)`.
    pub fn describe(&self) -> String {
        let what = match (self.running, self.started) {
            (true, true) => "started",
            (true, false) => "already running",
            (false, _) => "not answering",
        };
        let mut text = format!("{}: {what}", self.name);
        if let Some(port) = self.port {
            text.push_str(&format!(" on port {port}"));
        }
        if let Some(pid) = self.pid {
            text.push_str(&format!(" (pid {pid})"));
        }
        text
    }
}

impl StopReply {
    pub fn describe(&self) -> String {
        match (self.stopped, self.pid, self.killed) {
            (true, Some(pid), false) => format!("{}: stopped (pid {pid})", self.name),
            (true, Some(pid), true) => format!("{}: killed (pid {pid} ignored SIGTERM)", self.name),
            _ => format!("{}: not running", self.name),
        }
    }
}

pub struct Manager {
    pub config: Config,
    pub runtime: RuntimeDir,
    pub policy: Policy,
    watches: Mutex<BTreeMap<String, Watch>>,
    /// One operation per daemon at a time (start, stop, health restart).
    ops: BTreeMap<String, tokio::sync::Mutex<()>>,
    pub started: Instant,
}

impl Manager {
    pub fn new(config: Config, runtime: RuntimeDir, health_interval: Duration) -> Arc<Manager> {
        let ops = config.daemons.keys().map(|n| (n.clone(), tokio::sync::Mutex::new(()))).collect();
        Arc::new(Manager {
            config,
            runtime,
            policy: Policy::for_interval(health_interval),
            watches: Mutex::new(BTreeMap::new()),
            ops,
            started: Instant::now(),
        })
    }

    pub fn spec(&self, name: &str) -> Result<&DaemonSpec, OpError> {
        self.config.daemons.get(name).ok_or_else(|| OpError::Unknown {
            name: name.to_owned(),
            file: self.config.source.clone(),
            names: self.config.names().join(", "),
        })
    }

    fn watch<R>(&self, name: &str, f: impl FnOnce(&mut Watch) -> R) -> R {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        f(watches.entry(name.to_owned()).or_default())
    }

    async fn op_lock(&self, name: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.ops.get(name) {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// Every configured daemon, as seen now, with the health check's view folded in.
    pub async fn status(&self) -> Vec<DaemonStatus> {
        let snapshots = self.config.daemons.values().map(|spec| control::snapshot(spec, &self.runtime));
        let mut all = futures_util::future::join_all(snapshots).await;
        for s in &mut all {
            self.watch(&s.name, |w| {
                s.restarts = w.restarts;
                if s.state != State::Misconfigured {
                    s.last_error = w.last_error.clone();
                }
                s.backoff_secs = w.backoff(&self.policy).map(|d| d.as_secs());
                if !s.alive && s.state != State::Misconfigured {
                    if w.starting {
                        s.state = State::Starting;
                    } else if w.crash_loop() && w.wanted {
                        s.state = State::CrashLoop;
                    }
                }
            });
        }
        all
    }

    /// Starts a daemon unless it runs (`start` and `ensure` are the same operation; a
    /// user's start also clears a crash loop's backoff).
    pub async fn start(&self, name: &str) -> Result<StartReply, OpError> {
        let spec = self.spec(name)?.clone();
        if let Target::Remote { url } = &spec.target {
            let s = control::snapshot(&spec, &self.runtime).await;
            if s.alive {
                return Ok(reply_for(&spec, &s, false));
            }
            return Err(OpError::Remote { name: spec.name.clone(), url: url.to_string() });
        }
        let _op = self.op_lock(name).await;
        self.watch(name, |w| {
            w.wanted_by_user();
            w.begin_start(Instant::now());
        });
        let result = discovery::find_or_start_direct(&spec, &self.runtime).await;
        self.watch(name, |w| {
            w.end_start(result.as_ref().map(|_| ()).map_err(|e| e.to_string()), Instant::now(), &self.policy);
        });
        let found = result?;
        let s = control::snapshot(&spec, &self.runtime).await;
        Ok(reply_for(&spec, &s, found.spawned))
    }

    /// Stops a daemon (SIGKILL when it has not exited `timeout` after SIGTERM) and
    /// un-wants it, so the health check leaves it down.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<StopReply, OpError> {
        let spec = self.spec(name)?.clone();
        let _op = self.op_lock(name).await;
        self.watch(name, Watch::stopped_by_user);
        let runtime = self.runtime.clone();
        let outcome = tokio::task::spawn_blocking(move || control::stop(&spec, &runtime, timeout))
            .await
            .map_err(|e| OpError::Internal { name: name.to_owned(), message: e.to_string() })??;
        Ok(match outcome {
            Stopped::NotRunning => StopReply { name: name.to_owned(), stopped: false, pid: None, killed: false },
            Stopped::Stopped { pid, killed } => {
                StopReply { name: name.to_owned(), stopped: true, pid: Some(pid), killed }
            }
        })
    }

    /// Starts every daemon that can be started (not `url` ones), all at once.
    pub async fn start_all(&self) -> AllReply {
        let names = self.config.local_names();
        let runs = names.iter().map(|n| async move {
            match self.start(n).await {
                Ok(r) => ItemResult { name: n.clone(), ok: r.running, message: r.describe() },
                Err(e) => ItemResult { name: n.clone(), ok: false, message: e.to_string() },
            }
        });
        AllReply::from_results(futures_util::future::join_all(runs).await)
    }

    pub async fn stop_all(&self, timeout: Duration) -> AllReply {
        let names = self.config.local_names();
        let runs = names.iter().map(|n| async move {
            match self.stop(n, timeout).await {
                Ok(r) => ItemResult { name: n.clone(), ok: true, message: r.describe() },
                Err(e) => ItemResult { name: n.clone(), ok: false, message: e.to_string() },
            }
        });
        AllReply::from_results(futures_util::future::join_all(runs).await)
    }

    /// One health check: restarts wanted daemons that died (subject to backoff) and
    /// rotates the logs of running ones that grew too big.
    pub async fn health_tick(self: &Arc<Self>) {
        for spec in self.config.daemons.values() {
            let Target::Local { launch, .. } = &spec.target else { continue };
            if let Err(e) = self.runtime.rotate_live_log(&spec.name) {
                log(&format!("{}: cannot rotate {}: {e}", spec.name, self.runtime.log_file(&spec.name).display()));
            }
            // Nothing to start: not ours, or not startable until its variable is set.
            if launch.is_none() || spec.misconfigured.is_some() {
                continue;
            }
            let Some(op) = self.ops.get(&spec.name) else { continue };
            let Ok(guard) = op.try_lock() else { continue }; // a start or stop is under way
            let s = control::snapshot(spec, &self.runtime).await;
            let now = Instant::now();
            let coming_up = s.state == State::Starting;
            if self.watch(&spec.name, |w| w.on_tick(s.alive, coming_up, now, &self.policy)) != Action::Restart {
                continue;
            }
            drop(guard);
            let manager = self.clone();
            let spec = spec.clone();
            tokio::spawn(async move { manager.restart(&spec).await });
        }
    }

    async fn restart(&self, spec: &DaemonSpec) {
        let name = &spec.name;
        let Some(_op) = self.op_lock(name).await else { return };
        if !self.watch(name, |w| w.wanted) {
            return; // stopped meanwhile
        }
        let count = self.watch(name, |w| {
            w.begin_restart(Instant::now());
            w.restarts
        });
        log(&format!("{name}: not running; restarting (restart {count})"));
        let result = discovery::find_or_start_direct(spec, &self.runtime).await;
        let (message, failures) = self.watch(name, |w| {
            w.end_start(result.as_ref().map(|_| ()).map_err(|e| e.to_string()), Instant::now(), &self.policy);
            (result.as_ref().err().map(ToString::to_string), w.failures)
        });
        match message {
            None => log(&format!("{name}: restarted")),
            Some(e) => log(&format!(
                "{name}: restart failed ({failures} in a row; next attempt in {} s): {e}",
                self.policy.backoff(failures).as_secs()
            )),
        }
    }

    /// Runs [`Manager::health_tick`] every interval until the process ends.
    pub fn spawn_health_loop(self: &Arc<Self>) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(manager.policy.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                manager.health_tick().await;
            }
        });
    }
}

fn reply_for(spec: &DaemonSpec, s: &DaemonStatus, started: bool) -> StartReply {
    StartReply {
        name: spec.name.clone(),
        running: s.alive,
        port: s.port,
        transport: spec.transport.as_str().to_owned(),
        pid: s.pid,
        started,
    }
}
