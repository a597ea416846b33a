//! The daemon workloads: Node daemon, memory-server and the floor, each on a fresh
//! scratch HOME, the graph chosen by `Mcp-Project-Path`. The team part (`team.rs`)
//! starts its systems and runs its workloads through the same functions.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::load::{self, Gen, Kind};
use crate::sys::{self, Proc, Res};
use crate::{Ctx, Rec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysKind {
    Node,
    Ours,
    Floor,
    /// memory-server with `--database`: team memory in PostgreSQL.
    Team,
}

impl SysKind {
    pub fn label(self) -> &'static str {
        match self {
            SysKind::Node => "node",
            SysKind::Ours => "ours",
            SysKind::Floor => "floor",
            SysKind::Team => "team",
        }
    }
}

pub struct System {
    pub kind: SysKind,
    pub proc: Proc,
    pub url: String,
    pub base: String,
    /// Project key → directory.
    pub projects: BTreeMap<String, PathBuf>,
    pub counter: Cell<u64>,
}

pub fn project_keys(ctx: &Ctx) -> Vec<(String, usize)> {
    let mut keys = vec![("main".to_owned(), ctx.s.n_main), ("small".to_owned(), ctx.s.n_small)];
    for &n in &ctx.s.scale {
        if n != ctx.s.n_main && n != ctx.s.n_small {
            keys.push((format!("scale-{n}"), n));
        }
    }
    keys
}

pub fn project_for(ctx: &Ctx, n: usize) -> String {
    if n == ctx.s.n_main {
        "main".into()
    } else if n == ctx.s.n_small {
        "small".into()
    } else {
        format!("scale-{n}")
    }
}

/// How to start one system.
pub struct Launch<'a> {
    pub kind: SysKind,
    /// Its HOME and log go here.
    pub dir: PathBuf,
    /// The graphs it serves: key, project directory (what `Mcp-Project-Path` names) and
    /// entities. The directories are created; ours and the team daemon import the graphs
    /// when `load` is set (Node is seeded through its tools by the caller).
    pub projects: Vec<(String, PathBuf, usize)>,
    /// `--database` of the team daemon.
    pub database: Option<&'a str>,
    /// Import the graphs (false for a second team daemon on an already loaded database).
    pub load: bool,
}

impl Launch<'_> {
    /// The daemon part's systems: every graph of `project_keys`, in the system's own directory.
    fn own(ctx: &Ctx, kind: SysKind) -> Launch<'static> {
        let dir = ctx.scratch.join(kind.label());
        let projects = project_keys(ctx).into_iter().map(|(key, n)| (key.clone(), dir.join(&key), n)).collect();
        Launch { kind, dir, projects, database: None, load: true }
    }
}

async fn start(ctx: &Ctx, kind: SysKind) -> Res<System> {
    start_with(ctx, Launch::own(ctx, kind)).await
}

/// Starts the system `l` describes on a free port, its graphs loaded, and waits until it answers.
pub async fn start_with(ctx: &Ctx, l: Launch<'_>) -> Res<System> {
    let kind = l.kind;
    let dir = l.dir;
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let mut projects = BTreeMap::new();
    for (key, p, n) in l.projects {
        std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
        match (kind, l.database) {
            (SysKind::Ours, _) if l.load => import(ctx, &home, &p, n)?,
            (SysKind::Team, Some(db)) if l.load => import_team(ctx, &home, db, &p, n)?,
            _ => {}
        }
        projects.insert(key, p);
    }
    let port = sys::free_port()?;
    let (mut cmd, health) = match kind {
        SysKind::Ours | SysKind::Team => {
            let mut c = Command::new(&ctx.memory_server);
            c.arg("serve").arg("--port").arg(port.to_string());
            if kind == SysKind::Team {
                c.arg("--database").arg(l.database.ok_or("the team daemon needs a database")?);
            }
            (c, "/health")
        }
        SysKind::Node => {
            let mut c = Command::new(sys::NODE);
            c.arg(ctx.npm.join("node_modules/@pepk/mcp-memory-sqlite/dist/index.js")).args([
                "--transport",
                "http",
                "--port",
                &port.to_string(),
            ]);
            (c, "/ping")
        }
        SysKind::Floor => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.arg("--floor-server").arg(port.to_string());
            (c, "/health")
        }
    };
    // A user's own setting would turn "ours" into a team daemon.
    cmd.env("HOME", &home).env_remove("MEMORY_DATABASE_URL").current_dir(&dir);
    let mut proc = Proc::spawn(kind.label(), cmd, &dir.join("daemon.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    sys::wait_http(&ctx.client, &format!("{base}{health}"), Duration::from_secs(30), &mut proc).await?;
    Ok(System { kind, proc, url: format!("{base}/mcp"), base, projects, counter: Cell::new(0) })
}

/// Seeds the Node daemon's projects (key, entities) through its tools, in batches its
/// 100 kB body limit takes.
pub async fn seed_node(ctx: &Ctx, sys: &System, projects: &[(String, usize)]) -> Res<()> {
    for (key, n) in projects {
        let n = *n;
        let project = sys.projects.get(key).ok_or_else(|| format!("node serves no project {key}"))?;
        let project = project.to_string_lossy().into_owned();
        let mut id = 0u64;
        let mut call = async |name: &str, args: Value| -> Res<()> {
            id += 1;
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}});
            let b = load::post(&ctx.client, &sys.url, &project, body.to_string()).await?;
            load::answer_ok(&b).map_err(|e| format!("seeding {name}: {e}"))
        };
        for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
            let entities: Vec<Value> = chunk.iter().map(|&i| load::entity(i)).collect();
            call("create_entities", json!({ "entities": entities })).await?;
        }
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let relations: Vec<Value> = chunk.iter().map(|&i| load::relation(i, n)).collect();
            call("create_relations", json!({ "relations": relations })).await?;
        }
    }
    Ok(())
}

/// The `result` of one real answer of ours, for the floor to repeat.
async fn sample_result(ctx: &Ctx, ours: &System, key: &str, gen_: &Gen<'_>) -> Res<Vec<u8>> {
    let project = ours.projects.get(key).ok_or_else(|| format!("ours serves no project {key}"))?;
    let project = project.to_string_lossy().into_owned();
    let b = load::post(&ctx.client, &ours.url, &project, gen_.body(1, &mut load::Rng::new(7))).await?;
    let v: Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
    Ok(v["result"].to_string().into_bytes())
}

/// The daemon workloads' names, as `--only` takes them.
pub const WORKLOADS: &[&str] =
    &["open_nodes", "search_nodes", "read_graph", "ping", "search_scaling", "create_entities", "add_observations"];

pub struct Workload {
    pub name: &'static str,
    pub kind: Kind,
    pub n: usize,
    pub clients: Vec<usize>,
}

fn rss_line(phase: &str, s: &System) -> Value {
    let (rss, hwm) = sys::rss_kib(s.proc.pid).unwrap_or((0, 0));
    json!({"kind": "rss", "phase": phase, "system": s.kind.label(), "rss_kib": rss, "hwm_kib": hwm})
}

pub async fn run(ctx: &Ctx, rec: &mut Rec) -> Res<()> {
    let mut systems = Vec::new();
    for kind in [SysKind::Node, SysKind::Ours, SysKind::Floor] {
        eprintln!("bench: starting {} daemon", kind.label());
        let s = start(ctx, kind).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        rec.push(rss_line("idle", &s));
        if kind == SysKind::Node {
            let t = std::time::Instant::now();
            eprintln!("bench: seeding the Node daemon through its tools");
            seed_node(ctx, &s, &project_keys(ctx)).await?;
            rec.push(json!({"kind": "seed", "system": "node", "secs": t.elapsed().as_secs_f64()}));
        }
        systems.push(s);
    }
    let result = measure(ctx, rec, &systems).await;
    for s in &systems {
        rec.push(rss_line("end", s));
    }
    for s in systems {
        s.proc.stop().await;
    }
    result
}

async fn measure(ctx: &Ctx, rec: &mut Rec, systems: &[System]) -> Res<()> {
    let s = &ctx.s;
    let cs = vec![1, 8];
    let mut workloads = vec![
        Workload { name: "open_nodes", kind: Kind::OpenNodes, n: s.n_main, clients: cs.clone() },
        Workload { name: "search_nodes", kind: Kind::SearchNodes, n: s.n_main, clients: cs.clone() },
        Workload { name: "read_graph", kind: Kind::ReadGraph, n: s.n_main, clients: cs.clone() },
        Workload { name: "read_graph", kind: Kind::ReadGraph, n: s.n_small, clients: cs.clone() },
        Workload { name: "ping", kind: Kind::Ping, n: s.n_main, clients: cs.clone() },
    ];
    for &n in &s.scale {
        workloads.push(Workload { name: "search_scaling", kind: Kind::SearchNodes, n, clients: vec![1] });
    }
    workloads.push(Workload { name: "create_entities", kind: Kind::CreateEntities, n: s.n_main, clients: cs.clone() });
    workloads.push(Workload { name: "add_observations", kind: Kind::AddObservations, n: s.n_main, clients: cs });
    workloads.retain(|w| s.runs(w.name));
    let ours = systems.iter().find(|x| x.kind == SysKind::Ours).ok_or("no ours")?;
    let floor = systems.iter().find(|x| x.kind == SysKind::Floor).ok_or("no floor")?;
    for w in &workloads {
        let key = project_for(ctx, w.n);
        let sample_counter = Cell::new(1 << 50);
        let sample =
            sample_result(ctx, ours, &key, &Gen { kind: w.kind, n: w.n, tag: "sample", counter: &sample_counter })
                .await?;
        let r = ctx.client.put(format!("{}/answer", floor.base)).body(sample.clone()).send().await;
        r.map_err(|e| format!("floor: {e}"))?;
        let all: Vec<&System> = systems.iter().collect();
        run_workload(ctx, rec, &all, w, "daemon", Some(sample.len())).await;
    }
    Ok(())
}

/// Runs `w` on every system at each of its client counts, `repeats` rounds, the systems'
/// order rotating per round (so none always runs first, or right after a write); one
/// record of kind `record` per measurement. `floor_answer_bytes`: the floor's answer
/// size, recorded with the daemon workloads.
pub async fn run_workload(
    ctx: &Ctx,
    rec: &mut Rec,
    systems: &[&System],
    w: &Workload,
    record: &str,
    floor_answer_bytes: Option<usize>,
) {
    let s = &ctx.s;
    let key = project_for(ctx, w.n);
    let shown = if record == "daemon" { w.name.to_owned() } else { format!("{record}/{}", w.name) };
    for &c in &w.clients {
        for round in 0..s.repeats {
            for k in 0..systems.len() {
                let sy = systems[(k + round) % systems.len()];
                let Some(project) = sy.projects.get(&key) else {
                    eprintln!("bench: {} serves no project {key}; {} skipped there", sy.kind.label(), w.name);
                    continue;
                };
                let project = project.to_string_lossy().into_owned();
                let tag = format!("{}{round}", sy.kind.label());
                let g = Gen { kind: w.kind, n: w.n, tag: &tag, counter: &sy.counter };
                let r = load::run(&ctx.client, &[sy.url.as_str()], &project, c, s.warmup, s.duration, &g).await;
                eprintln!(
                    "bench: {:<16} n={:<6} C={c} round {round} {:<5} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms{}",
                    shown,
                    w.n,
                    sy.kind.label(),
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    if r.errors > 0 { format!("  {} errors", r.errors) } else { String::new() }
                );
                if let Some(e) = &r.first_error {
                    eprintln!("bench:   first error: {e}");
                }
                let mut line = json!({
                    "kind": record, "workload": w.name, "entities": w.n, "writes": w.kind.writes(),
                    "system": sy.kind.label(), "clients": c, "round": round,
                    "requests": r.requests, "errors": r.errors, "secs": r.secs, "rps": r.rps,
                    "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                    "answer_bytes": r.answer_bytes,
                });
                if let (Some(b), Some(o)) = (floor_answer_bytes, line.as_object_mut()) {
                    o.insert("floor_answer_bytes".into(), b.into());
                }
                if let Some(o) = line.as_object_mut() {
                    o.insert("first_error".into(), r.first_error.into());
                }
                rec.push(line);
            }
        }
    }
}

pub fn import(ctx: &Ctx, home: &Path, project: &Path, n: usize) -> Res<()> {
    import_jsonl(ctx, home, project, &load::graph_jsonl(n))
}

/// Fills `project`'s graph with the official JSONL `lines` through `memory-server import`.
pub fn import_jsonl(ctx: &Ctx, home: &Path, project: &Path, lines: &str) -> Res<()> {
    let file = project.with_extension("jsonl");
    std::fs::write(&file, lines).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&ctx.memory_server)
        .env("HOME", home)
        .arg("import")
        .arg("--project")
        .arg(project)
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("import failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Fills the team daemon's project that `project`'s `Mcp-Project-Path` names with the
/// generated graph of `n` entities, through `memory-server import --database URL
/// --project-id KEY`.
pub fn import_team(ctx: &Ctx, home: &Path, database: &str, project: &Path, n: usize) -> Res<()> {
    let file = project.with_extension("jsonl");
    std::fs::write(&file, load::graph_jsonl(n)).map_err(|e| e.to_string())?;
    let key = header_key(&project.to_string_lossy())?;
    let out = std::process::Command::new(&ctx.memory_server)
        .env("HOME", home)
        .env_remove("MEMORY_DATABASE_URL")
        .arg("import")
        .arg(&file)
        .args(["--database", database, "--project-id", &key])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("import into {database} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// The project key a team daemon makes of an `Mcp-Project-Path` value: the value as
/// sent, percent-decoded when it holds a `%XX` escape (the daemon's own rule, SPEC 2.12).
pub fn header_key(value: &str) -> Res<String> {
    let raw = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let escape_at =
        |i: usize| match (raw.get(i), raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
            (Some(b'%'), Some(h), Some(l)) => Some(h * 16 + l),
            _ => None,
        };
    if !(0..raw.len()).any(|i| escape_at(i).is_some()) {
        return Ok(value.to_owned());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match escape_at(i) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8 once percent-decoded"))
}

/// `--load-url`: one workload against an already running daemon (see `Args::load_url`).
pub async fn load_only(args: &crate::Args, url: &str) -> Res<()> {
    let name = args.only.first().map(String::as_str).unwrap_or("open_nodes");
    let kind = match name {
        "open_nodes" => Kind::OpenNodes,
        "search_nodes" | "search_scaling" => Kind::SearchNodes,
        "read_graph" => Kind::ReadGraph,
        "ping" => Kind::Ping,
        "create_entities" => Kind::CreateEntities,
        "add_observations" => Kind::AddObservations,
        other => return Err(format!("unknown workload {other}")),
    };
    let client = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().map_err(|e| e.to_string())?;
    let project = args.load_project.clone().unwrap_or_default();
    let counter = Cell::new(std::process::id() as u64 * 1_000_000);
    let tag = format!("load{}", std::process::id());
    let g = Gen { kind, n: args.load_entities, tag: &tag, counter: &counter };
    let warmup = Duration::from_millis(args.warmup_ms.unwrap_or(300));
    let duration = Duration::from_millis(args.duration_ms.unwrap_or(3000));
    let r = load::run(&client, &[url], &project, args.load_clients, warmup, duration, &g).await;
    println!(
        "{name} C={}: {:.0} req/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  errors {}  {}",
        args.load_clients,
        r.rps,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.errors,
        r.first_error.unwrap_or_default()
    );
    Ok(())
}
