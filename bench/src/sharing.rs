//! One stdio server shared (issue 16): 8 sessions of the official
//! `@modelcontextprotocol/server-everything` through `mcp-proxy` → `mcp-host` with
//! `share = "global"` (one child for all of them), against 8 sessions that each start
//! the server themselves over stdio (what Claude Code does today), side by side in one
//! run: server processes, total memory, a joining session's time to its first
//! `tools/list`, and the latency the host path adds to a call.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::proxy::{self, StdioProc};
use crate::report::{Info, agg, fmt_agg, fmt_num, mib};
use crate::sys::{self, Res};
use crate::{Ctx, Rec};

/// Sessions on each side.
const SESSIONS: usize = 8;
/// The daemon's name in the scratch config.toml.
const NAME: &str = "everything";
/// The argument every `echo` call sends (and expects back as `Echo: bench`).
const MESSAGE: &str = "bench";
/// How long the host gets to stop itself and its children after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The scratch runtime directory, project and commands of one run.
struct Setup {
    dir: PathBuf,
    home: PathBuf,
    msm: PathBuf,
    project: PathBuf,
    /// `dist/index.js` of the installed server-everything.
    entry: PathBuf,
    /// A port nobody listens on, so no real manager is asked.
    manager_port: u16,
}

impl Setup {
    fn new(ctx: &Ctx, entry: PathBuf) -> Res<Setup> {
        let dir = ctx.scratch.join("sharing");
        let (home, project) = (dir.join("home"), dir.join("project"));
        let msm = home.join(".mcp-session-manager");
        for d in [&msm, &project] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        // No port: the host takes an ephemeral one and records it in <name>.lock.
        let config = format!(
            "[daemons.{NAME}]\ntransport = \"stdio\"\ncommand = {}\nargs = [{}, \"stdio\"]\nshare = \"global\"\n\
             startup_timeout_ms = 30000\n",
            Value::from(sys::NODE),
            Value::from(entry.to_string_lossy().into_owned()),
        );
        std::fs::write(msm.join("config.toml"), config).map_err(|e| e.to_string())?;
        Ok(Setup { dir, home, msm, project, entry, manager_port: sys::free_port()? })
    }

    /// `mcp-proxy --target everything`, found or started through the scratch runtime directory.
    fn proxy(&self, ctx: &Ctx) -> Command {
        let mut c = Command::new(&ctx.mcp_proxy);
        c.args(["--target", NAME, "--manager-port", &self.manager_port.to_string()])
            .arg("--project")
            .arg(&self.project)
            .env("HOME", &self.home)
            .env("MCP_SESSION_MANAGER_HOME", &self.msm)
            .env_remove("CLAUDE_PROJECT_DIR")
            .current_dir(&self.project);
        c
    }

    /// The server started directly, as a client that runs `node dist/index.js stdio` does.
    fn direct(&self) -> Command {
        let mut c = Command::new(sys::NODE);
        c.arg(&self.entry)
            .arg("stdio")
            .env("HOME", &self.home)
            .env_remove("CLAUDE_PROJECT_DIR")
            .current_dir(&self.project);
        c
    }

    /// The host's pid and port, from `<name>.lock`.
    fn lock(&self) -> Option<(u32, u16)> {
        let text = std::fs::read_to_string(self.msm.join(format!("{NAME}.lock"))).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((u32::try_from(v["pid"].as_u64()?).ok()?, u16::try_from(v["port"].as_u64()?).ok()?))
    }
}

/// Everything started, so that it is stopped whatever happened.
#[derive(Default)]
struct Live {
    proxies: Vec<StdioProc>,
    direct: Vec<StdioProc>,
    host_pid: Option<u32>,
    /// The bench's own HTTP session on the host (url, session id).
    http: Option<(String, String)>,
}

pub async fn run(ctx: &Ctx, rec: &mut Rec) -> Res<()> {
    let host_bin = ctx.mcp_proxy.with_file_name("mcp-host");
    if !host_bin.exists() {
        return Err(format!("{} is missing (cargo build --release -p host)", host_bin.display()));
    }
    let entry = sys::ensure_everything(&sys::workspace_root())?;
    let setup = Setup::new(ctx, entry)?;
    let mut live = Live::default();
    let result = measure(ctx, rec, &setup, &mut live).await;
    let stopped = teardown(ctx, &setup, live).await;
    result?;
    stopped
}

fn echo(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"message": MESSAGE}}})
}

fn echo_ok(answer: &Value) -> Res<()> {
    if answer["result"]["content"][0]["text"] == json!(format!("Echo: {MESSAGE}")) {
        Ok(())
    } else {
        Err(format!("unexpected echo answer: {answer}"))
    }
}

async fn measure(ctx: &Ctx, rec: &mut Rec, s: &Setup, live: &mut Live) -> Res<()> {
    // The first session starts mcp-host, which starts the one child.
    let (init, list, p) = proxy::cold_start(s.proxy(ctx), &s.dir.join("proxy-0.log")).await?;
    live.proxies.push(p);
    let (host_pid, port) = s.lock().ok_or("the first proxy left no everything.lock (did mcp-host start?)")?;
    live.host_pid = Some(host_pid);
    rec.push(json!({"kind": "sharing_first", "init_ms": init, "tools_list_ms": list}));
    // The other seven join the running child.
    for k in 1..SESSIONS {
        let (init, list, p) = proxy::cold_start(s.proxy(ctx), &s.dir.join(format!("proxy-{k}.log"))).await?;
        live.proxies.push(p);
        rec.push(json!({"kind": "sharing_join", "phase": "setup", "init_ms": init, "tools_list_ms": list}));
    }
    // Eight sessions with a server each.
    for k in 0..SESSIONS {
        let (init, list, p) = proxy::cold_start(s.direct(), &s.dir.join(format!("direct-{k}.log"))).await?;
        live.direct.push(p);
        rec.push(json!({"kind": "sharing_direct_start", "init_ms": init, "tools_list_ms": list}));
    }
    eprintln!("bench: sharing: {SESSIONS} sessions through mcp-host and {SESSIONS} direct servers are up");
    // The bench's own session on the host, for the latency without the proxy.
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (sid, version) = http_open(&ctx.client, &url).await?;
    live.http = Some((url.clone(), sid.clone()));
    let http = HttpSession { client: &ctx.client, url, sid, version };
    // Every session makes a call, as a session in use would.
    let mut id = 100;
    for p in live.proxies.iter_mut().chain(live.direct.iter_mut()) {
        id += 1;
        echo_ok(&p.call(echo(id)).await?)?;
    }
    for round in 0..ctx.s.repeats {
        calls_round(ctx, rec, live, &http, round, &mut id).await?;
    }
    memory(rec, live)?;
    // More joining sessions, one at a time, each closed again.
    for k in 0..ctx.s.sharing_joins {
        let (init, list, p) = proxy::cold_start(s.proxy(ctx), &s.dir.join(format!("join-{k}.log"))).await?;
        p.close().await;
        rec.push(json!({"kind": "sharing_join", "phase": "extra", "init_ms": init, "tools_list_ms": list}));
    }
    Ok(())
}

/// One round of `echo` calls, the three ways in turn: through mcp-proxy → mcp-host → the
/// shared child, over HTTP straight to mcp-host, and over stdio to a private server; plus
/// a `ping` over HTTP that mcp-host answers itself (the HTTP exchange without the child).
/// The order rotates per call; timings end with the answer parsed, every answer checked.
async fn calls_round(
    ctx: &Ctx,
    rec: &mut Rec,
    live: &mut Live,
    http: &HttpSession<'_>,
    round: usize,
    id: &mut u64,
) -> Res<()> {
    let warmup = if ctx.s.quick { 10 } else { 50 };
    let n = ctx.s.proxy_calls;
    let mut t: [Vec<u64>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
    if live.proxies.is_empty() || live.direct.is_empty() {
        return Err("no session to call through".into());
    }
    for i in 0..warmup + n {
        for k in 0..4 {
            let which = (i + k) % 4;
            *id += 1;
            let start = Instant::now();
            let answer = match which {
                0 => live.proxies[0].call(echo(*id)).await?,
                1 => http.call(&echo(*id)).await?,
                2 => live.direct[0].call(echo(*id)).await?,
                _ => http.call(&json!({"jsonrpc": "2.0", "id": *id, "method": "ping"})).await?,
            };
            let ns = start.elapsed().as_nanos() as u64;
            if which == 3 {
                answer.get("result").ok_or_else(|| format!("mcp-host answered ping with {answer}"))?;
            } else {
                echo_ok(&answer)?;
            }
            if i >= warmup {
                t[which].push(ns);
            }
        }
    }
    for v in &mut t {
        v.sort_unstable();
    }
    let p = |v: &[u64], q: f64| crate::load::percentile(v, q);
    let (via50, via99) = (p(&t[0], 50.0), p(&t[0], 99.0));
    let (http50, http99) = (p(&t[1], 50.0), p(&t[1], 99.0));
    let (dir50, dir99) = (p(&t[2], 50.0), p(&t[2], 99.0));
    let (ping50, ping99) = (p(&t[3], 50.0), p(&t[3], 99.0));
    rec.push(json!({"kind": "sharing_calls", "round": round, "calls": n,
        "p50_via_ms": via50, "p99_via_ms": via99,
        "p50_host_http_ms": http50, "p99_host_http_ms": http99,
        "p50_direct_ms": dir50, "p99_direct_ms": dir99,
        "p50_host_ping_ms": ping50, "p99_host_ping_ms": ping99,
        "added_p50_ms": via50 - dir50, "added_p99_ms": via99 - dir99}));
    eprintln!(
        "bench: sharing: round {round}: echo p50 via proxy→host {via50:.3} ms, HTTP to host {http50:.3} ms, \
         direct stdio {dir50:.3} ms"
    );
    Ok(())
}

/// Processes and memory of both sides, read from `/proc` at one moment.
fn memory(rec: &mut Rec, live: &Live) -> Res<()> {
    let host = live.host_pid.ok_or("no host pid")?;
    let table = sys::proc_table();
    let rss = |pids: &[u32]| pids.iter().map(|p| sys::rss_kib(*p).map_or(0, |r| r.0)).sum::<u64>();
    let pss = |pids: &[u32]| pids.iter().map(|p| sys::pss_kib(*p).unwrap_or(0)).sum::<u64>();
    let proxies: Vec<u32> = live.proxies.iter().map(|p| p.pid).collect();
    let mut roots = proxies.clone();
    roots.push(host);
    let shared = sys::process_tree(&table, &roots);
    let servers: Vec<u32> = sys::process_tree(&table, &[host]).into_iter().filter(|p| *p != host).collect();
    let others: Vec<u32> = shared.iter().copied().filter(|p| *p != host && !proxies.contains(p)).collect();
    if others.len() != servers.len() {
        return Err(format!("processes under the proxies that are not mcp-host's: {others:?} vs {servers:?}"));
    }
    rec.push(json!({"kind": "sharing_mem", "system": "shared", "server_processes": servers.len(),
        "processes": shared.len(), "rss_kib": rss(&shared), "pss_kib": pss(&shared),
        "proxies_rss_kib": rss(&proxies), "host_rss_kib": rss(&[host]), "servers_rss_kib": rss(&servers)}));
    let direct_roots: Vec<u32> = live.direct.iter().map(|p| p.pid).collect();
    let direct = sys::process_tree(&table, &direct_roots);
    rec.push(json!({"kind": "sharing_mem", "system": "direct", "server_processes": direct.len(),
        "processes": direct.len(), "rss_kib": rss(&direct), "pss_kib": pss(&direct), "servers_rss_kib": rss(&direct)}));
    eprintln!(
        "bench: sharing: {} server process(es), {} KiB RSS in all, vs {} processes, {} KiB RSS direct",
        servers.len(),
        rss(&shared),
        direct.len(),
        rss(&direct)
    );
    Ok(())
}

/// The bench's own streamable-HTTP session on mcp-host.
struct HttpSession<'a> {
    client: &'a reqwest::Client,
    url: String,
    sid: String,
    version: String,
}

impl HttpSession<'_> {
    async fn call(&self, msg: &Value) -> Res<Value> {
        let r = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Mcp-Session-Id", &self.sid)
            .header("MCP-Protocol-Version", &self.version)
            .body(msg.to_string())
            .send()
            .await
            .map_err(|e| format!("mcp-host: {e}"))?;
        answer_of(r, &msg["id"]).await
    }
}

/// `initialize` + `notifications/initialized` over HTTP: the session id and the revision.
async fn http_open(client: &reqwest::Client, url: &str) -> Res<(String, String)> {
    let init = proxy::initialize(1);
    let r = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .map_err(|e| format!("mcp-host: {e}"))?;
    let sid = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("mcp-host answered initialize without Mcp-Session-Id")?;
    let answer = answer_of(r, &json!(1)).await?;
    let version = answer["result"]["protocolVersion"].as_str().unwrap_or("2025-06-18").to_owned();
    let r = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", &sid)
        .header("MCP-Protocol-Version", &version)
        .body(proxy::initialized().to_string())
        .send()
        .await
        .map_err(|e| format!("mcp-host: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("mcp-host refused notifications/initialized: HTTP {}", r.status()));
    }
    Ok((sid, version))
}

/// The answer to `id` in a reply that is plain JSON or an SSE stream.
async fn answer_of(r: reqwest::Response, id: &Value) -> Res<Value> {
    let status = r.status();
    let sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let body = r.text().await.map_err(|e| format!("mcp-host: {e}"))?;
    if !status.is_success() {
        return Err(format!("mcp-host: HTTP {status}: {}", body.chars().take(300).collect::<String>()));
    }
    let found = if sse {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id") == Some(id))
    } else {
        serde_json::from_str::<Value>(&body).ok()
    };
    match found {
        Some(v) if v.get("error").is_none() => Ok(v),
        _ => Err(format!("mcp-host: no answer to id {id}: {}", body.chars().take(300).collect::<String>())),
    }
}

/// Stops everything: the bench's HTTP session, the proxies (their sessions end), the
/// host (SIGTERM to the pid of its lock file; it stops its children), then the direct
/// servers; SIGKILL for whatever is still there after [`STOP_WAIT`].
async fn teardown(ctx: &Ctx, s: &Setup, live: Live) -> Res<()> {
    if let Some((url, sid)) = &live.http {
        let _ = ctx.client.delete(url).header("Mcp-Session-Id", sid).send().await;
    }
    futures_util::future::join_all(live.proxies.into_iter().map(StdioProc::close)).await;
    let host = live.host_pid.or_else(|| s.lock().map(|(pid, _)| pid));
    let mut left = Vec::new();
    if let Some(host) = host {
        let tree = sys::process_tree(&sys::proc_table(), &[host]);
        let _ = std::process::Command::new("kill").args(["-TERM", &host.to_string()]).status();
        let deadline = Instant::now() + STOP_WAIT;
        while tree.iter().any(|p| sys::alive(*p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        left = tree.into_iter().filter(|p| sys::alive(*p)).collect();
        for p in &left {
            let _ = std::process::Command::new("kill").args(["-KILL", &p.to_string()]).status();
        }
    }
    futures_util::future::join_all(live.direct.into_iter().map(StdioProc::close)).await;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("mcp-host (pid {host:?}) left {left:?} running {STOP_WAIT:?} after SIGTERM (killed)"))
    }
}

/// The RESULTS.md section, when the workload ran.
pub fn report(lines: &[Value], info: &Info) -> Option<String> {
    let mem: HashMap<&str, &Value> =
        lines.iter().filter(|l| l["kind"] == "sharing_mem").filter_map(|l| Some((l["system"].as_str()?, l))).collect();
    let (shared, direct) = (*mem.get("shared")?, *mem.get("direct")?);
    let vals = |kind: &str, field: &str| -> Vec<f64> {
        lines.iter().filter(|l| l["kind"] == kind).filter_map(|l| l[field].as_f64()).collect()
    };
    let joins = vals("sharing_join", "tools_list_ms");
    let (join50, join90) = (pct(&joins, 50.0), pct(&joins, 90.0));
    let calls = |field: &str| agg(vals("sharing_calls", field));
    let added50 = calls("added_p50_ms");
    let n_calls = lines.iter().find(|l| l["kind"] == "sharing_calls").and_then(|l| l["calls"].as_u64()).unwrap_or(0);
    let rounds = vals("sharing_calls", "round").len();
    let num = |v: &Value, k: &str| v[k].as_f64();
    let (rss_s, rss_d) = (num(shared, "rss_kib"), num(direct, "rss_kib"));
    let rss_ratio = rss_s.zip(rss_d).map(|(s, d)| d / s);
    let (srv_s, srv_d) = (shared["server_processes"].as_u64(), direct["server_processes"].as_u64());
    let commit = info.versions.iter().find(|(k, _)| *k == "git commit").map_or("", |(_, v)| v.as_str());

    let mut md = String::new();
    let _ = writeln!(md, "## Sharing one stdio server (issue 16)\n");
    let _ = writeln!(
        md,
        "Measured by `{}` at commit {commit}, {}; load average {} → {}.\n",
        info.command, info.date, info.load_start, info.load_end
    );
    let _ = writeln!(
        md,
        "{SESSIONS} sessions of the official `{}` {} (`node dist/index.js stdio`) side by side in one run: \
         **shared** = {SESSIONS} `mcp-proxy --target {NAME}` processes, the config saying `transport = \"stdio\"`, \
         `share = \"global\"` (the first proxy starts `mcp-host`, which starts the one child; the other seven join \
         it); **direct** = {SESSIONS} `node dist/index.js stdio` processes, each initialized over its own stdio \
         (what Claude Code does today). Each session initializes, lists the tools and calls `echo` once before \
         memory is read. Memory: VmRSS summed over every live process of each side, read from `/proc` (shared: \
         the proxies, mcp-host, and the host's descendants and their process groups; direct: the servers and \
         theirs), with 8 sessions open and after the calls; PSS (each shared page divided among the processes \
         that map it) alongside, as RSS counts node's shared pages once per process. A joining session: spawn of \
         a proxy → `initialize` → first `tools/list` answer, with the child already running ({} samples: the \
         seven that join at the start and {} more later, each closed again). Calls: `echo` {n_calls} times per \
         round, {rounds} round(s), each call made three ways in turn (through mcp-proxy → mcp-host → the shared \
         child; over HTTP straight to mcp-host with the bench's own session; over stdio to a private server, \
         one of the direct ones), and with them a `ping` over HTTP that mcp-host answers itself (what the HTTP \
         exchange alone costs), the order rotating per call; *added* = the proxy path's percentile − the \
         private server's (p50 and p99 each), median (min–max) over rounds.\n",
        sys::EVERYTHING,
        sys::EVERYTHING_VERSION,
        joins.len(),
        lines.iter().filter(|l| l["kind"] == "sharing_join" && l["phase"] == "extra").count(),
    );
    let verdict = |met: Option<bool>| match (info.quick, met) {
        (true, _) => "not judged (quick)",
        (false, Some(true)) => "**met**",
        (false, Some(false)) => "**missed**",
        (false, None) => "no data",
    };
    let _ = writeln!(md, "| target | wanted | measured | |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| server processes for {SESSIONS} sessions | 1 child instead of {SESSIONS} | {} vs {} | {} |",
        srv_s.map_or("–".into(), |v| v.to_string()),
        srv_d.map_or("–".into(), |v| v.to_string()),
        verdict(srv_s.zip(srv_d).map(|(s, d)| s == 1 && d == SESSIONS as u64)),
    );
    let _ = writeln!(
        md,
        "| total RSS, {SESSIONS} sessions | ≤ 1/3 of direct | {} vs {} (1/{}) | {} |",
        mib(rss_s),
        mib(rss_d),
        rss_ratio.map_or("–".into(), fmt_num),
        verdict(rss_ratio.map(|r| r >= 3.0)),
    );
    let _ = writeln!(
        md,
        "| a joining session's first tools/list | < 20 ms (p50) | p50 {} ms, p90 {} ms | {} |",
        fmt_num(join50),
        fmt_num(join90),
        verdict(join50.is_finite().then_some(join50 < 20.0)),
    );
    let _ = writeln!(
        md,
        "| latency the host path adds per call, p50 | < 0.2 ms | {} ms (p99: {} ms) | {} |\n",
        fmt_agg(added50),
        fmt_agg(calls("added_p99_ms")),
        verdict(added50.map(|a| a.med < 0.2)),
    );

    let _ = writeln!(
        md,
        "| {SESSIONS} sessions | server processes | processes | total RSS | proxies | mcp-host | server(s) | total PSS |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let kib = |v: &Value, k: &str| mib(num(v, k));
    let _ = writeln!(
        md,
        "| shared (mcp-proxy → mcp-host, `share = \"global\"`) | {} | {} | {} | {} | {} | {} | {} |",
        shared["server_processes"],
        shared["processes"],
        kib(shared, "rss_kib"),
        kib(shared, "proxies_rss_kib"),
        kib(shared, "host_rss_kib"),
        kib(shared, "servers_rss_kib"),
        kib(shared, "pss_kib"),
    );
    let _ = writeln!(
        md,
        "| direct ({SESSIONS} × `node dist/index.js stdio`) | {} | {} | {} | – | – | {} | {} |\n",
        direct["server_processes"],
        direct["processes"],
        kib(direct, "rss_kib"),
        kib(direct, "servers_rss_kib"),
        kib(direct, "pss_kib"),
    );

    let _ = writeln!(md, "| start of a session | samples | p50 (ms) | p90 (ms) | max (ms) |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut start_row = |what: &str, v: Vec<f64>| {
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} |",
            v.len(),
            fmt_num(pct(&v, 50.0)),
            fmt_num(pct(&v, 90.0)),
            fmt_num(pct(&v, 100.0))
        );
    };
    start_row("joining the running child: spawn → `initialize` answer", vals("sharing_join", "init_ms"));
    start_row("joining the running child: spawn → first `tools/list` answer", joins.clone());
    start_row(
        "the first, which starts mcp-host and the child: spawn → first `tools/list`",
        vals("sharing_first", "tools_list_ms"),
    );
    start_row("direct: spawn of its own server → first `tools/list`", vals("sharing_direct_start", "tools_list_ms"));
    let _ = writeln!(md);

    let _ = writeln!(md, "| call | p50 (ms) | p99 (ms) |");
    let _ = writeln!(md, "|---|---|---|");
    for (what, a, b) in [
        ("`echo` over stdio to a private server (direct)", "p50_direct_ms", "p99_direct_ms"),
        ("`echo` over HTTP straight to mcp-host (no proxy)", "p50_host_http_ms", "p99_host_http_ms"),
        ("`echo` through mcp-proxy → mcp-host → the shared child", "p50_via_ms", "p99_via_ms"),
        ("`ping` over HTTP, answered by mcp-host itself", "p50_host_ping_ms", "p99_host_ping_ms"),
        ("**added by the host path** (proxy path − direct)", "added_p50_ms", "added_p99_ms"),
    ] {
        let _ = writeln!(md, "| {what} | {} | {} |", fmt_agg(calls(a)), fmt_agg(calls(b)));
    }
    // Where the added time goes: the proxy's hop (stdio → HTTP) and the host's (HTTP → stdio).
    let diff = |a: &str, b: &str| {
        agg(lines
            .iter()
            .filter(|l| l["kind"] == "sharing_calls")
            .filter_map(|l| Some(l[a].as_f64()? - l[b].as_f64()?))
            .collect())
    };
    for (what, (a50, b50), (a99, b99)) in [
        (
            "of it, mcp-proxy's hop (proxy path − HTTP to mcp-host)",
            ("p50_via_ms", "p50_host_http_ms"),
            ("p99_via_ms", "p99_host_http_ms"),
        ),
        (
            "of it, mcp-host's hop (HTTP to mcp-host − direct)",
            ("p50_host_http_ms", "p50_direct_ms"),
            ("p99_host_http_ms", "p99_direct_ms"),
        ),
    ] {
        let _ = writeln!(md, "| {what} | {} | {} |", fmt_agg(diff(a50, b50)), fmt_agg(diff(a99, b99)));
    }
    let _ = writeln!(
        md,
        "\nThe differences are of percentiles, each taken over its own calls (median over rounds): a p99 \
         difference is the tails' difference, and on a busy machine it can come out negative. The HTTP `ping` \
         is what one loopback HTTP exchange with mcp-host costs, for scale against the hops."
    );
    let proxy_added = agg(lines
        .iter()
        .filter(|l| l["kind"] == "proxy_calls" && l["system"] == "ours")
        .filter_map(|l| l["added_p50_ms"].as_f64())
        .collect());
    let _ = match proxy_added {
        Some(a) => writeln!(
            md,
            "\nFor comparison, in this run mcp-proxy adds {} ms (p50) to an `open_nodes` call to memory-server \
             over direct HTTP (Proxies above): the proxy's hop alone, where the host path has two.",
            fmt_agg(Some(a))
        ),
        None => writeln!(
            md,
            "\nmcp-proxy → memory-server's added latency (the proxy's hop alone) is in the Proxies section, from \
             its own run; the row *mcp-proxy's hop* above is the same hop measured in this run."
        ),
    };
    Some(md)
}

/// Nearest-rank percentile of unsorted figures (NaN when there are none).
fn pct(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}
