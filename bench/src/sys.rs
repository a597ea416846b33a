//! Processes, ports, memory and machine facts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub type Res<T> = Result<T, String>;

/// A loopback port nobody listens on right now.
pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Whether something accepts connections on 127.0.0.1 or [::1] at `port`.
pub fn port_taken(port: u16) -> bool {
    let t = Duration::from_millis(200);
    ["127.0.0.1", "[::1]"].iter().any(|h| {
        format!("{h}:{port}").parse().ok().is_some_and(|a| std::net::TcpStream::connect_timeout(&a, t).is_ok())
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A child process we started; killed (and reaped) on `stop` or drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Res<Proc> {
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log)).kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id().ok_or("no pid")?;
        Ok(Proc { name: name.to_owned(), child, pid })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Polls `url` (GET) until it answers 200, for at most `limit`.
pub async fn wait_http(client: &reqwest::Client, url: &str, limit: Duration, proc: &mut Proc) -> Res<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("{} exited ({status}) before answering", proc.name));
        }
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{} did not answer {url} within {limit:?}", proc.name))
}

/// Output of a short command, trimmed; empty on failure.
pub fn cmd_out(prog: &str, args: &[&str]) -> String {
    std::process::Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).trim().to_owned())
        .unwrap_or_default()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem: String,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu,
        mem,
        kernel: cmd_out("uname", &["-sr"]),
    }
}

/// The workspace root (the bench crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Builds the release binaries of memory-server, mcp-proxy and mcp-host (a no-op when fresh).
pub fn build_release(root: &Path) -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "memory-server", "-p", "proxy", "-p", "host", "--bins"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed ({status})"));
    }
    Ok(())
}

pub const NODE: &str = "/usr/bin/node";
pub const PEPK: &str = "@pepk/mcp-memory-sqlite";
pub const PEPK_VERSION: &str = "1.1.1";
pub const SDK_VERSION: &str = "1.24.0";
pub const MSM: &str = "mcp-session-manager";
pub const MSM_VERSION: &str = "1.0.1";

fn installed_version(dir: &Path, pkg: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

/// Installs the pinned Node originals under `target/bench-npm` unless they are there.
pub fn ensure_node_originals(root: &Path) -> Res<PathBuf> {
    let dir = root.join("target").join("bench-npm");
    let want = [(PEPK, PEPK_VERSION), ("@modelcontextprotocol/sdk", SDK_VERSION), (MSM, MSM_VERSION)];
    let ok = |d: &Path| want.iter().all(|(p, v)| installed_version(d, p).as_deref() == Some(*v));
    if ok(&dir) && dir.join("node_modules/better-sqlite3/build/Release/better_sqlite3.node").exists() {
        return Ok(dir);
    }
    let pkg = serde_json::json!({
        "name": "bench-originals", "private": true, "version": "0.0.0",
        "dependencies": { PEPK: PEPK_VERSION, "@modelcontextprotocol/sdk": SDK_VERSION, MSM: MSM_VERSION },
        "overrides": { "@modelcontextprotocol/sdk": SDK_VERSION },
    });
    npm_install(&dir, &pkg, "the Node originals")?;
    if !ok(&dir) {
        return Err(format!("npm install in {} did not install the pinned versions", dir.display()));
    }
    Ok(dir)
}

pub const EVERYTHING: &str = "@modelcontextprotocol/server-everything";
pub const EVERYTHING_VERSION: &str = "2026.8.31";

/// Installs the pinned official `server-everything` under `target/bench-npm-everything`
/// unless it is there, and returns its entry point (`dist/index.js`). A directory of its
/// own: it needs a newer `@modelcontextprotocol/sdk` than the 1.24.0 the originals are
/// pinned to.
pub fn ensure_everything(root: &Path) -> Res<PathBuf> {
    let dir = root.join("target").join("bench-npm-everything");
    let entry = dir.join("node_modules").join(EVERYTHING).join("dist").join("index.js");
    let ok = |d: &Path| installed_version(d, EVERYTHING).as_deref() == Some(EVERYTHING_VERSION) && entry.exists();
    if ok(&dir) {
        return Ok(entry);
    }
    let pkg = serde_json::json!({
        "name": "bench-everything", "private": true, "version": "0.0.0",
        "dependencies": { EVERYTHING: EVERYTHING_VERSION },
    });
    npm_install(&dir, &pkg, EVERYTHING)?;
    if !ok(&dir) {
        return Err(format!("npm install in {} did not install {EVERYTHING} {EVERYTHING_VERSION}", dir.display()));
    }
    Ok(entry)
}

/// `npm install` of `package_json` in `dir` (bounded to 15 minutes).
fn npm_install(dir: &Path, package_json: &serde_json::Value, what: &str) -> Res<()> {
    if !Path::new(NODE).exists() {
        return Err(format!("{NODE} is missing (the Node servers run on the system node)"));
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("package.json"), serde_json::to_string_pretty(package_json).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    eprintln!("bench: installing {what} into {}", dir.display());
    let status = std::process::Command::new("timeout")
        .args(["900", "npm", "install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm install in {} failed ({status})", dir.display()));
    }
    Ok(())
}

/// One process as `/proc` shows it.
#[derive(Clone, Copy)]
pub struct ProcEntry {
    pub ppid: u32,
    pub pgid: u32,
    /// A zombie: exited, not yet reaped (no memory left).
    pub zombie: bool,
}

/// Every process on the machine, by pid, at one moment.
pub fn proc_table() -> std::collections::HashMap<u32, ProcEntry> {
    let mut table = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return table };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's closing parenthesis: state, ppid, pgrp, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
        if let (Some(state), Some(ppid), Some(pgid)) = (f.first(), num(1), num(2)) {
            table.insert(pid, ProcEntry { ppid, pgid, zombie: *state == "Z" || *state == "X" });
        }
    }
    table
}

/// The live processes of `roots` and all their descendants, plus every member of a
/// process group led by one of them (what a child started in its own group may have
/// left behind when its parent went).
pub fn process_tree(table: &std::collections::HashMap<u32, ProcEntry>, roots: &[u32]) -> Vec<u32> {
    let mut set: std::collections::BTreeSet<u32> = roots.iter().copied().filter(|p| table.contains_key(p)).collect();
    // Descendants: grow until nothing is added (bounded by the table's size).
    for _ in 0..table.len() {
        let before = set.len();
        let more: Vec<u32> = table.iter().filter(|(_, e)| set.contains(&e.ppid)).map(|(p, _)| *p).collect();
        set.extend(more);
        if set.len() == before {
            break;
        }
    }
    let leaders = set.clone();
    set.extend(table.iter().filter(|(_, e)| leaders.contains(&e.pgid)).map(|(p, _)| *p));
    set.into_iter().filter(|p| table.get(p).is_some_and(|e| !e.zombie)).collect()
}

/// `Pss` of a process (its share of every page it maps), in KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Whether `pid` still runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z" && st != "X")))
        .unwrap_or(false)
}

/// CPU time a process has used (user + system), in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state (field 3), ... utime (14), stime (15).
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot say).
pub fn clock_ticks_per_sec() -> f64 {
    cmd_out("getconf", &["CLK_TCK"]).parse::<f64>().ok().filter(|t| *t > 0.0).unwrap_or(100.0)
}
