//! The proxies: cold starts, peak RSS over many calls and the latency they add over
//! direct HTTP, for `mcp-proxy --target memory` and the Node `mcp-session-manager` proxy,
//! both against one already running memory-server; and mcp-proxy's cold start when it
//! has to spawn memory-server itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::load::{self, Rng};
use crate::sys::{self, Proc, Res};
use crate::{Ctx, Rec};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A stdio MCP server (a proxy, or a stdio server itself) we started, talked to line by line.
pub(crate) struct StdioProc {
    child: Child,
    pub pid: u32,
    /// The program, for messages.
    name: String,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
}

impl StdioProc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Res<StdioProc> {
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(log)).kill_on_drop(true);
        let name = Path::new(cmd.as_std().get_program())
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id().ok_or("no pid")?;
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(StdioProc { child, pid, name, stdin, out })
    }

    pub async fn send(&mut self, msg: &Value) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        let mut line = msg.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.map_err(|e| format!("{} stdin: {e}", self.name))?;
        stdin.flush().await.map_err(|e| e.to_string())
    }

    /// Reads lines until the answer to `id`.
    pub async fn recv(&mut self, id: u64) -> Res<Value> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.out.next_line())
                .await
                .map_err(|_| format!("no answer to id {id} within {ANSWER_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} closed stdout before answering id {id}", self.name))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if v["id"] == json!(id) {
                if v.get("error").is_some() {
                    return Err(format!("{} answered an error: {line}", self.name));
                }
                return Ok(v);
            }
        }
        Err("too many lines without the answer".into())
    }

    pub async fn call(&mut self, msg: Value) -> Res<Value> {
        let id = msg["id"].as_u64().ok_or("no id")?;
        self.send(&msg).await?;
        self.recv(id).await
    }

    /// Closes stdin, waits a little for the exit, then kills.
    pub async fn close(mut self) {
        self.stdin.take();
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await;
        }
    }
}

pub(crate) fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"}}})
}

pub(crate) fn initialized() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

pub(crate) fn tools_list(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Ours,
    Node,
}

impl Which {
    fn label(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::Node => "node",
        }
    }
}

struct Env {
    dir: PathBuf,
    project: PathBuf,
    daemon_port: u16,
    daemon_pid: u32,
}

/// The proxy's command, with an isolated HOME / MCP_SESSION_MANAGER_HOME per start.
fn proxy_cmd(ctx: &Ctx, env: &Env, which: Which, k: usize) -> Res<Command> {
    let home = env.dir.join(format!("{}-home-{k}", which.label()));
    let manager_port = sys::free_port()?.to_string();
    match which {
        Which::Ours => {
            let msm = home.join(".mcp-session-manager");
            std::fs::create_dir_all(&msm).map_err(|e| e.to_string())?;
            std::fs::write(msm.join("config.toml"), format!("[daemons.memory]\nport = {}\n", env.daemon_port))
                .map_err(|e| e.to_string())?;
            let mut c = Command::new(&ctx.mcp_proxy);
            c.args(["--target", "memory", "--manager-port", &manager_port])
                .arg("--project")
                .arg(&env.project)
                .env("HOME", &home)
                .env("MCP_SESSION_MANAGER_HOME", &msm)
                .env_remove("CLAUDE_PROJECT_DIR")
                .current_dir(&env.project);
            Ok(c)
        }
        Which::Node => {
            // Its config is built in (memory on port 3100); with nothing there it reads
            // $HOME/.mcp-session-manager/memory.lock, which points it at our daemon.
            let msm = home.join(".mcp-session-manager");
            std::fs::create_dir_all(&msm).map_err(|e| e.to_string())?;
            let lock =
                json!({"pid": env.daemon_pid, "port": env.daemon_port, "startedAt": 0, "transport": "streamable-http"});
            std::fs::write(msm.join("memory.lock"), lock.to_string()).map_err(|e| e.to_string())?;
            let mut c = Command::new(sys::NODE);
            c.arg(ctx.npm.join("node_modules/mcp-session-manager/dist/proxy/index.js"))
                .args(["--target", "memory", "--manager-port", &manager_port])
                .env("HOME", &home)
                .env_remove("MCP_SESSION_MANAGER_HOME")
                .current_dir(&env.project);
            Ok(c)
        }
    }
}

/// Spawn → `initialize` answer → first `tools/list` answer, in ms.
pub(crate) async fn cold_start(cmd: Command, log: &Path) -> Res<(f64, f64, StdioProc)> {
    let t0 = Instant::now();
    let mut p = StdioProc::spawn(cmd, log)?;
    p.call(initialize(1)).await?;
    let t_init = t0.elapsed().as_secs_f64() * 1e3;
    p.send(&initialized()).await?;
    p.call(tools_list(2)).await?;
    let t_list = t0.elapsed().as_secs_f64() * 1e3;
    Ok((t_init, t_list, p))
}

fn open_nodes(id: u64, rng: &mut Rng, n: usize) -> Value {
    let names: Vec<String> = (0..5).map(|_| load::entity_name(rng.below(n))).collect();
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "open_nodes", "arguments": {"names": names}}})
}

pub async fn run(ctx: &Ctx, rec: &mut Rec) -> Res<()> {
    let dir = ctx.scratch.join("proxy");
    let home = dir.join("daemon-home");
    let project = dir.join("project");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&project).map_err(|e| e.to_string())?;
    crate::daemon::import(ctx, &home, &project, ctx.s.n_small)?;
    let port = sys::free_port()?;
    let mut cmd = Command::new(&ctx.memory_server);
    cmd.args(["serve", "--port", &port.to_string()]).env("HOME", &home);
    let mut daemon = Proc::spawn("memory-server (for the proxies)", cmd, &dir.join("daemon.log"))?;
    let r =
        sys::wait_http(&ctx.client, &format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30), &mut daemon)
            .await;
    let env = Env { dir: dir.clone(), project, daemon_port: port, daemon_pid: daemon.pid };
    let result = match r {
        Ok(()) => against_daemon(ctx, rec, &env).await,
        Err(e) => Err(e),
    };
    daemon.stop().await;
    result?;
    spawn_cold_starts(ctx, rec, &dir).await
}

async fn against_daemon(ctx: &Ctx, rec: &mut Rec, env: &Env) -> Res<()> {
    let mut whiches = vec![Which::Ours];
    if sys::port_taken(3100) {
        eprintln!("bench: port 3100 is in use: the Node proxy would talk to that; skipping it");
        rec.push(json!({"kind": "note", "text": "Node proxy skipped: port 3100 was in use on this machine"}));
    } else {
        whiches.push(Which::Node);
    }
    let url = format!("http://127.0.0.1:{}/mcp", env.daemon_port);
    let project = env.project.to_string_lossy().into_owned();
    // Cold starts, alternating the two proxies.
    for k in 0..ctx.s.cold_starts {
        for &w in &whiches {
            let cmd = proxy_cmd(ctx, env, w, k)?;
            let (t_init, t_list, p) = cold_start(cmd, &env.dir.join(format!("{}-cold-{k}.log", w.label()))).await?;
            p.close().await;
            rec.push(json!({"kind": "proxy_cold", "system": w.label(), "round": k, "init_ms": t_init, "tools_list_ms": t_list}));
        }
    }
    eprintln!("bench: proxy cold starts done");
    // Peak RSS over N calls, and the latency added: the same calls through the proxy and direct.
    for round in 0..ctx.s.repeats {
        for &w in &whiches {
            calls(ctx, rec, env, w, round, &url, &project).await?;
        }
    }
    Ok(())
}

async fn calls(ctx: &Ctx, rec: &mut Rec, env: &Env, w: Which, round: usize, url: &str, project: &str) -> Res<()> {
    {
        let cmd = proxy_cmd(ctx, env, w, 1000 + round)?;
        let (_, _, mut p) = cold_start(cmd, &env.dir.join(format!("{}-calls.log", w.label()))).await?;
        let mut rng = Rng::new(11);
        let (mut via, mut direct) = (Vec::new(), Vec::new());
        for i in 0..ctx.s.proxy_calls as u64 {
            let msg = open_nodes(100 + i, &mut rng, ctx.s.n_small);
            let t = Instant::now();
            let a = p.call(msg.clone()).await?;
            via.push(t.elapsed().as_nanos() as u64);
            if a["result"]["isError"] == json!(true) {
                return Err(format!("proxy call failed: {a}"));
            }
            // Both timings end with the answer parsed, as `call` parses the proxy's line.
            let t = Instant::now();
            let b = load::post(&ctx.client, url, project, msg.to_string()).await?;
            let parsed: Value = serde_json::from_slice(&b).map_err(|e| format!("direct answer: {e}"))?;
            direct.push(t.elapsed().as_nanos() as u64);
            drop(parsed);
            load::answer_ok(&b)?;
        }
        let (rss, hwm) = sys::rss_kib(p.pid).unwrap_or((0, 0));
        p.close().await;
        via.sort_unstable();
        direct.sort_unstable();
        let (pv, pd) = (load::percentile(&via, 50.0), load::percentile(&direct, 50.0));
        rec.push(json!({"kind": "proxy_calls", "system": w.label(), "round": round, "calls": ctx.s.proxy_calls,
            "rss_kib": rss, "hwm_kib": hwm, "p50_via_ms": pv, "p50_direct_ms": pd, "added_p50_ms": pv - pd,
            "p99_via_ms": load::percentile(&via, 99.0), "p99_direct_ms": load::percentile(&direct, 99.0)}));
        eprintln!(
            "bench: proxy {} over {} calls: peak RSS {hwm} KiB, p50 added {:.3} ms",
            w.label(),
            ctx.s.proxy_calls,
            pv - pd
        );
    }
    Ok(())
}

/// mcp-proxy finds nothing on its port and spawns memory-server itself.
async fn spawn_cold_starts(ctx: &Ctx, rec: &mut Rec, dir: &Path) -> Res<()> {
    for k in 0..ctx.s.spawn_starts {
        let home = dir.join(format!("spawn-home-{k}"));
        let msm = home.join(".mcp-session-manager");
        let project = home.join("project");
        std::fs::create_dir_all(&msm).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&project).map_err(|e| e.to_string())?;
        let port = sys::free_port()?;
        std::fs::write(msm.join("config.toml"), format!("[daemons.memory]\nport = {port}\n"))
            .map_err(|e| e.to_string())?;
        let mut c = Command::new(&ctx.mcp_proxy);
        c.args(["--target", "memory", "--manager-port", &sys::free_port()?.to_string()])
            .arg("--project")
            .arg(&project)
            .env("HOME", &home)
            .env("MCP_SESSION_MANAGER_HOME", &msm)
            .env_remove("CLAUDE_PROJECT_DIR");
        let r = cold_start(c, &dir.join(format!("spawn-{k}.log"))).await;
        let outcome = match r {
            Ok((t_init, t_list, p)) => {
                p.close().await;
                rec.push(json!({"kind": "proxy_spawn", "system": "ours", "round": k, "init_ms": t_init, "tools_list_ms": t_list}));
                Ok(())
            }
            Err(e) => Err(e),
        };
        stop_spawned_daemon(&msm, port).await;
        outcome?;
    }
    Ok(())
}

/// Stops the memory-server a proxy spawned (its pid is in the lock file), SIGTERM then SIGKILL.
async fn stop_spawned_daemon(msm: &Path, port: u16) {
    let pid = std::fs::read_to_string(msm.join("memory.lock"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["pid"].as_u64());
    let Some(pid) = pid else { return };
    let pid = pid.to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if !sys::port_taken(port) && !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
}
