//! Team memory (issue 18, items 3 and 9): `memory-server serve --database` on a throwaway
//! PostgreSQL started for the run (`tests/support/postgres.rs`), side by side with the
//! SQLite daemon ("ours") and the Node original on the same graphs, by the same load
//! generator as the daemon workloads: open_nodes, search_nodes and create_entities at
//! C=1 and C=8; search_nodes on a graph ten times larger; and the total throughput of
//! 1, 2 and 3 daemons on the one database at C=24.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{self, Launch, SysKind, System, Workload};
use crate::load::{self, Gen, Kind};
use crate::postgres::TestPostgres;
use crate::report::{Agg, Info, agg, fmt_agg, fmt_num, mib};
use crate::sys::{self, Res};
use crate::{Ctx, Rec};

/// Concurrent clients of the several-daemons measurement, spread round-robin.
const MULTI_CLIENTS: usize = 24;
/// The most daemons run on the one database at once.
const MAX_DAEMONS: usize = 3;
/// The single-daemon workloads, as the daemon part names them.
const WORKLOADS: [(&str, Kind); 3] =
    [("open_nodes", Kind::OpenNodes), ("search_nodes", Kind::SearchNodes), ("create_entities", Kind::CreateEntities)];

/// The graphs of the part: the daemon workloads' main graph, and one ten times larger
/// for the search target (100,000 against 10,000 entities in a full run).
struct Sizes {
    main: usize,
    big: usize,
}

impl Sizes {
    fn of(ctx: &Ctx) -> Sizes {
        Sizes { main: ctx.s.n_main, big: ctx.s.n_main * 10 }
    }
}

/// Everything started, so that it is stopped whatever happened.
#[derive(Default)]
struct Live {
    systems: Vec<System>,
}

pub async fn run(ctx: &Ctx, rec: &mut Rec) -> Res<()> {
    eprintln!("bench: team: starting a throwaway PostgreSQL");
    let pg = start_postgres()?;
    let mut live = Live::default();
    let result = measure(ctx, rec, &pg, &mut live).await;
    // The daemons first, so none is left talking to a server that is gone; then the
    // server itself (its drop stops it and deletes its directory).
    for s in live.systems {
        s.proc.stop().await;
    }
    drop(pg);
    result
}

/// `TestPostgres::start` panics saying why it cannot start (its callers are tests): the
/// panic becomes this part's error. A server half set up is stopped and deleted by the
/// drop that runs while the panic unwinds.
fn start_postgres() -> Res<TestPostgres> {
    std::panic::catch_unwind(TestPostgres::start).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        format!("team: PostgreSQL could not be started: {why}")
    })
}

/// The server's version and the settings that decide what a write costs.
fn server_facts(pg: &TestPostgres) -> Res<Value> {
    let row = pg.try_psql(
        "SELECT current_setting('server_version'), current_setting('shared_buffers'), \
         current_setting('fsync'), current_setting('synchronous_commit'), current_setting('max_connections')",
    )?;
    let f: Vec<&str> = row.split('|').collect();
    if f.len() != 5 {
        return Err(format!("team: unexpected answer from psql: {row:?}"));
    }
    Ok(json!({"kind": "team_pg", "version": f[0], "shared_buffers": f[1], "fsync": f[2],
              "synchronous_commit": f[3], "max_connections": f[4]}))
}

fn rss_line(phase: &str, s: &System) -> Value {
    let (rss, hwm) = sys::rss_kib(s.proc.pid).unwrap_or((0, 0));
    json!({"kind": "team_rss", "phase": phase, "system": s.kind.label(), "rss_kib": rss, "hwm_kib": hwm})
}

async fn measure(ctx: &Ctx, rec: &mut Rec, pg: &TestPostgres, live: &mut Live) -> Res<()> {
    // Time every WAL flush (`pg_stat_wal.wal_sync_time`), so the report can say what
    // the writes wait for. A superuser setting: `psql_admin` panics when it fails, and
    // the report then shows no times rather than the part failing.
    let timed = std::panic::catch_unwind(|| {
        pg.psql_admin("ALTER SYSTEM SET track_wal_io_timing = on;\nSELECT pg_reload_conf();")
    })
    .is_ok();
    let mut facts = server_facts(pg)?;
    if let Some(o) = facts.as_object_mut() {
        o.insert("duration_ms".into(), (ctx.s.duration.as_millis() as u64).into());
        o.insert("warmup_ms".into(), (ctx.s.warmup.as_millis() as u64).into());
        o.insert("wal_timed".into(), timed.into());
    }
    eprintln!("bench: team: PostgreSQL {} on {}", facts["version"].as_str().unwrap_or("?"), pg.url());
    rec.push(facts);
    let sizes = Sizes::of(ctx);
    let graphs = [(daemon::project_for(ctx, sizes.main), sizes.main), (daemon::project_for(ctx, sizes.big), sizes.big)];
    let url = pg.url();
    // Every team daemon names the same projects: one set of directories for all of them.
    let team_projects = ctx.scratch.join("team-projects");

    // The main graph alone in the database first: the one-daemon workloads see the
    // database a team with one 10,000-entity project would have.
    let home = ctx.scratch.join("team-import");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    import_timed(ctx, rec, pg, &home, &team_projects, &graphs[0])?;

    let node_graphs = vec![graphs[0].clone()];
    let in_dir = |dir: &std::path::Path, list: &[(String, usize)]| -> Vec<(String, std::path::PathBuf, usize)> {
        list.iter().map(|(k, n)| (k.clone(), dir.join(k), *n)).collect()
    };
    let launches = [
        (SysKind::Node, ctx.scratch.join("team-node"), node_graphs.clone(), None),
        (SysKind::Ours, ctx.scratch.join("team-ours"), graphs.to_vec(), None),
        (SysKind::Team, ctx.scratch.join("team-1"), graphs.to_vec(), Some(url.as_str())),
    ];
    for (kind, dir, list, database) in launches {
        eprintln!("bench: team: starting the {} daemon", kind.label());
        let projects = if kind == SysKind::Team { in_dir(&team_projects, &list) } else { in_dir(&dir, &list) };
        // Ours imports its graphs (a file each); the team daemon's are imported here.
        let load = kind == SysKind::Ours;
        let s = daemon::start_with(ctx, Launch { kind, dir, projects, database, load }).await?;
        if kind == SysKind::Node {
            eprintln!("bench: team: seeding the Node daemon through its tools");
            daemon::seed_node(ctx, &s, &node_graphs).await?;
        }
        live.systems.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &live.systems {
        rec.push(rss_line("idle", s));
    }

    // One daemon: the three side by side, reads first.
    let all: Vec<&System> = live.systems.iter().collect();
    let sqlite_and_team: Vec<&System> = live.systems.iter().filter(|s| s.kind != SysKind::Node).collect();
    for (name, kind) in WORKLOADS.into_iter().filter(|(_, k)| !k.writes()) {
        let w = Workload { name, kind, n: sizes.main, clients: vec![1, 8] };
        daemon::run_workload(ctx, rec, &all, &w, "team_daemon", None).await;
    }
    // Search by graph size, before any write: the main graph alone in the database, then
    // beside the big one. Both projects share the database's indexes, so the main
    // graph's search is measured both ways.
    let w = Workload { name: "search_alone", kind: Kind::SearchNodes, n: sizes.main, clients: vec![1] };
    daemon::run_workload(ctx, rec, &sqlite_and_team, &w, "team_daemon", None).await;
    import_timed(ctx, rec, pg, &home, &team_projects, &graphs[1])?;
    for n in [sizes.main, sizes.big] {
        let w = Workload { name: "search_scaling", kind: Kind::SearchNodes, n, clients: vec![1] };
        daemon::run_workload(ctx, rec, &sqlite_and_team, &w, "team_daemon", None).await;
    }
    // The writes, one client count at a time with PostgreSQL's WAL counters around it
    // (only the team daemon writes to PostgreSQL).
    for (name, kind) in WORKLOADS.into_iter().filter(|(_, k)| k.writes()) {
        for c in [1, 8] {
            let before = Wal::read(ctx, pg).await;
            let w = Workload { name, kind, n: sizes.main, clients: vec![c] };
            daemon::run_workload(ctx, rec, &all, &w, "team_daemon", None).await;
            rec.push(Wal::line(before, Wal::read(ctx, pg).await, json!({"workload": name, "clients": c})));
        }
    }
    // The same search once the writes are in: PostgreSQL puts rows new to a GIN index in
    // its pending list, which every search reads through until a vacuum (or the list
    // reaching `gin_pending_list_limit`) merges it into the index.
    let w = Workload { name: "search_after_writes", kind: Kind::SearchNodes, n: sizes.main, clients: vec![1] };
    daemon::run_workload(ctx, rec, &sqlite_and_team, &w, "team_daemon", None).await;
    for s in &live.systems {
        rec.push(rss_line("end", s));
    }

    // Several daemons on the one database.
    let first = live.systems.iter().find(|s| s.kind == SysKind::Team).ok_or("no team daemon")?;
    let shared = first.projects.clone();
    for i in 2..=MAX_DAEMONS {
        eprintln!("bench: team: starting team daemon {i} on the same database");
        let projects = shared.iter().map(|(k, p)| (k.clone(), p.clone(), 0)).collect();
        let dir = ctx.scratch.join(format!("team-{i}"));
        let launch = Launch { kind: SysKind::Team, dir, projects, database: Some(&url), load: false };
        live.systems.push(daemon::start_with(ctx, launch).await?);
    }
    let postmaster = pg.postmaster_pid().ok_or("team: PostgreSQL has no postmaster pid")?;
    let project = shared.get(&graphs[0].0).ok_or("team: no main project")?.to_string_lossy().into_owned();
    let teams: Vec<&System> = live.systems.iter().filter(|s| s.kind == SysKind::Team).collect();
    let counter = std::cell::Cell::new(0);
    // Reads first, every round, then writes: the writes grow the graph the reads open.
    for kind in [Kind::OpenNodes, Kind::CreateEntities] {
        let wal_before = if kind.writes() { Wal::read(ctx, pg).await } else { None };
        for round in 0..ctx.s.repeats {
            for k in 0..MAX_DAEMONS {
                let daemons = (k + round) % MAX_DAEMONS + 1;
                let urls: Vec<&str> = teams.iter().take(daemons).map(|s| s.url.as_str()).collect();
                let pids: Vec<u32> = teams.iter().take(daemons).map(|s| s.proc.pid).collect();
                let tag = format!("multi{daemons}r{round}");
                let g = Gen { kind, n: sizes.main, tag: &tag, counter: &counter };
                let before = CpuSnapshot::take(postmaster, &pids);
                let t = Instant::now();
                let r = load::run(&ctx.client, &urls, &project, MULTI_CLIENTS, ctx.s.warmup, ctx.s.duration, &g).await;
                let cpu = before.cores_since(postmaster, &pids, t.elapsed());
                let op = if kind.writes() { "create_entities" } else { "open_nodes" };
                eprintln!(
                    "bench: team/multi     {op:<16} {daemons} daemon(s) C={MULTI_CLIENTS} round {round} {:>7.0} req/s  \
                     p50 {:.3} ms  p99 {:.3} ms  CPU: PostgreSQL {:.2}, daemons {:.2}, bench {:.2} cores{}",
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    cpu.postgres,
                    cpu.daemons,
                    cpu.bench,
                    if r.errors > 0 { format!("  {} errors", r.errors) } else { String::new() }
                );
                if let Some(e) = &r.first_error {
                    eprintln!("bench:   first error: {e}");
                }
                rec.push(json!({
                    "kind": "team_multi", "workload": op, "writes": kind.writes(), "daemons": daemons,
                    "clients": MULTI_CLIENTS, "round": round, "requests": r.requests, "errors": r.errors,
                    "secs": r.secs, "rps": r.rps, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
                    "max_ms": r.max_ms, "cpu_postgres": cpu.postgres, "cpu_daemons": cpu.daemons,
                    "cpu_bench": cpu.bench, "first_error": r.first_error,
                }));
            }
        }
        if kind.writes() {
            let extra = json!({"workload": "multi_create_entities", "clients": MULTI_CLIENTS});
            rec.push(Wal::line(wal_before, Wal::read(ctx, pg).await, extra));
        }
    }
    Ok(())
}

/// PostgreSQL's WAL counters (`pg_stat_wal`): flushes to the disk, the time they took
/// (with `track_wal_io_timing`), bytes written.
#[derive(Clone, Copy)]
struct Wal {
    syncs: f64,
    sync_ms: f64,
    bytes: f64,
}

impl Wal {
    /// The counters once the backends have reported theirs: a backend reports when idle,
    /// at most once a second, and otherwise 10 s later (a second suffices for `--quick`,
    /// whose figures are not judged).
    async fn read(ctx: &Ctx, pg: &TestPostgres) -> Option<Wal> {
        tokio::time::sleep(Duration::from_millis(if ctx.s.quick { 1_100 } else { 11_500 })).await;
        let row = pg.try_psql("SELECT wal_sync, wal_sync_time, wal_bytes FROM pg_stat_wal").ok()?;
        let f: Vec<f64> = row.split('|').filter_map(|v| v.trim().parse().ok()).collect();
        match f[..] {
            [syncs, sync_ms, bytes] => Some(Wal { syncs, sync_ms, bytes }),
            _ => None,
        }
    }

    /// A `team_wal` record of what happened between two readings, with `extra`'s fields.
    fn line(before: Option<Wal>, after: Option<Wal>, extra: Value) -> Value {
        let mut line = json!({"kind": "team_wal"});
        if let (Some(b), Some(a), Some(o)) = (before, after, line.as_object_mut()) {
            o.insert("syncs".into(), (a.syncs - b.syncs).into());
            o.insert("sync_ms".into(), (a.sync_ms - b.sync_ms).into());
            o.insert("bytes".into(), (a.bytes - b.bytes).into());
        }
        if let (Some(o), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        line
    }
}

/// Loads the generated graph `(key, entities)` into the team database the way a team
/// loads one (`memory-server import --database`), timed, then `VACUUM (ANALYZE)`s the
/// tables, as a team server's autovacuum does within a minute of such an import. Both
/// matter to the search: the statistics choose its plan, and the vacuum merges the rows
/// waiting in the GIN indexes' pending lists (up to 256 kB each, the schema's
/// `gin_pending_list_limit`, which every search reads through; a manual `ANALYZE` alone
/// leaves them, and searches took 6x as long).
fn import_timed(
    ctx: &Ctx,
    rec: &mut Rec,
    pg: &TestPostgres,
    home: &std::path::Path,
    projects: &std::path::Path,
    (key, n): &(String, usize),
) -> Res<()> {
    let dir = projects.join(key);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("bench: team: importing {n} entities into PostgreSQL");
    let t = Instant::now();
    daemon::import_team(ctx, home, &pg.url(), &dir, *n)?;
    let secs = t.elapsed().as_secs_f64();
    // The daemon's own tables only (the role may not analyze the system catalogs).
    pg.try_psql("VACUUM (ANALYZE) memory_projects, memory_entities, memory_observations, memory_relations")?;
    rec.push(json!({"kind": "team_import", "entities": n, "secs": secs}));
    Ok(())
}

/// CPU time (user + system, in clock ticks) of PostgreSQL's processes (the postmaster
/// and every backend under it), the daemons measured, and the bench itself.
struct CpuSnapshot {
    ticks: HashMap<u32, u64>,
}

/// Cores used by each group over a measurement.
struct CpuUse {
    postgres: f64,
    daemons: f64,
    bench: f64,
}

impl CpuSnapshot {
    fn groups(postmaster: u32, daemons: &[u32]) -> [Vec<u32>; 3] {
        [sys::process_tree(&sys::proc_table(), &[postmaster]), daemons.to_vec(), vec![std::process::id()]]
    }

    fn take(postmaster: u32, daemons: &[u32]) -> CpuSnapshot {
        let ticks =
            Self::groups(postmaster, daemons).iter().flatten().filter_map(|&p| Some((p, sys::cpu_ticks(p)?))).collect();
        CpuSnapshot { ticks }
    }

    /// Each group's ticks since the snapshot over `elapsed`, in cores. A backend started
    /// meanwhile counts from zero; one that ended meanwhile is lost (the pools keep theirs).
    fn cores_since(&self, postmaster: u32, daemons: &[u32], elapsed: Duration) -> CpuUse {
        let per_sec = sys::clock_ticks_per_sec() * elapsed.as_secs_f64().max(1e-9);
        let used = |pids: &[u32]| {
            pids.iter()
                .filter_map(|p| Some(sys::cpu_ticks(*p)?.saturating_sub(self.ticks.get(p).copied().unwrap_or(0))))
                .sum::<u64>() as f64
                / per_sec
        };
        let [pg, ds, me] = Self::groups(postmaster, daemons);
        CpuUse { postgres: used(&pg), daemons: used(&ds), bench: used(&me) }
    }
}

/// The RESULTS.md section, when the part ran.
pub fn report(lines: &[Value], info: &Info) -> Option<String> {
    let facts = lines.iter().find(|l| l["kind"] == "team_pg")?;
    let of = |kind: &'static str| lines.iter().filter(move |l| l["kind"] == kind);
    let single = |w: &str, n: u64, c: u64, sys: &str, field: &str| {
        agg(of("team_daemon")
            .filter(|l| {
                l["workload"] == w
                    && l["entities"].as_u64() == Some(n)
                    && l["clients"].as_u64() == Some(c)
                    && l["system"] == sys
            })
            .filter_map(|l| l[field].as_f64())
            .collect())
    };
    let main = of("team_daemon").find(|l| l["workload"] == "search_alone").and_then(|l| l["entities"].as_u64())?;
    let big = of("team_daemon")
        .filter(|l| l["workload"] == "search_scaling")
        .filter_map(|l| l["entities"].as_u64())
        .max()
        .unwrap_or(main);
    let imports: Vec<String> = of("team_import")
        .filter_map(|l| Some(format!("{} entities in {:.1} s", l["entities"].as_u64()?, l["secs"].as_f64()?)))
        .collect();
    let commit = info.versions.iter().find(|(k, _)| *k == "git commit").map_or("", |(_, v)| v.as_str());
    let fact = |k: &str| facts[k].as_str().unwrap_or("?").to_owned();
    let verdict = |met: Option<bool>| match (info.quick, met) {
        (true, _) => "not judged (quick)",
        (false, Some(true)) => "**met**",
        (false, Some(false)) => "**missed**",
        (false, None) => "no data",
    };
    let rounds = of("team_daemon").filter_map(|l| l["round"].as_u64()).max().map_or(0, |r| r + 1);

    let mut md = String::new();
    let _ = writeln!(md, "## Team memory (PostgreSQL, issue 18)\n");
    let _ = writeln!(
        md,
        "Measured by `{}` at commit {commit}, {}; PostgreSQL {}; load average {} → {}. The machine has {} \
         cores ({}), shared by the load generator, every daemon and every PostgreSQL backend.\n",
        info.command,
        info.date,
        fact("version"),
        info.load_start,
        info.load_end,
        info.machine.cores,
        info.machine.cpu,
    );
    let _ = writeln!(
        md,
        "**team** = `memory-server serve --database postgres://memory@127.0.0.1:PORT/memory` on a throwaway \
         PostgreSQL started for the run (`tests/support/postgres.rs`: its own cluster under `target/tmp/pg`, \
         loopback TCP, `shared_buffers` {}, `fsync` {}, `synchronous_commit` {}: every write transaction waits \
         for its WAL to reach the disk), the projects keyed by the `Mcp-Project-Path` value the load generator \
         sends and loaded with `memory-server import --database URL --project-id KEY` ({}), then `VACUUM (ANALYZE)` \
         (as autovacuum would within a minute of such an import); **ours** = `memory-server serve` on SQLite (WAL with \
         `synchronous=NORMAL`: a commit is not flushed to the disk by itself), seeded with `memory-server \
         import`; **node** = `{}` {}, seeded through its tools. The same graphs ({main} entities with 3 \
         observations each and {main} relations, and {big} for the search scaling), the same load generator \
         and method as the daemon workloads: C clients each sending one request at a time for {} ms after {} ms \
         of warm-up, {} round(s), the systems' order rotating per round; median (min–max) over rounds. `search_nodes` looks for a group tag \
         that 10 entities carry in an observation.\n",
        fact("shared_buffers"),
        fact("fsync"),
        fact("synchronous_commit"),
        if imports.is_empty() { "–".to_owned() } else { imports.join(", ") },
        sys::PEPK,
        sys::PEPK_VERSION,
        facts["duration_ms"],
        facts["warmup_ms"],
        rounds,
    );

    // The target: the big project's search against the main one's, alone in its database
    // (a team's database before another project grows in it) and beside the big one.
    let p50 = |w: &str, n: u64| single(w, n, 1, "team", "p50_ms");
    let growth = |base: Option<Agg>| {
        let big = p50("search_scaling", big)?;
        let base = base?;
        Some((big.med / base.med, big.med, base.med))
    };
    let shown = |g: Option<(f64, f64, f64)>| {
        g.map_or("–".into(), |(r, b, m)| format!("{}x ({} ms vs {} ms)", fmt_num(r), fmt_num(b), fmt_num(m)))
    };
    let alone = growth(p50("search_alone", main));
    let beside = growth(p50("search_scaling", main));
    let _ = writeln!(md, "| target | wanted | measured (medians) | |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| team search_nodes p50 at {big} vs at {main} entities (C=1), the {main}-entity project alone in its \
         database | ≤ 2x | {} | {} |",
        shown(alone),
        verdict(alone.map(|g| g.0 <= 2.0)),
    );
    let _ = writeln!(
        md,
        "| the same, both projects in the database (the {main}-entity one searched beside the {big}-entity one) \
         | ≤ 2x | {} | {} |\n",
        shown(beside),
        verdict(beside.map(|g| g.0 <= 2.0)),
    );

    // One daemon, three systems.
    let _ = writeln!(md, "### One daemon: team beside ours and Node ({main} entities)\n");
    let _ = writeln!(
        md,
        "Throughput in requests/s, latency in ms; *vs Node* and *vs ours* = team / that system (throughput).\n"
    );
    let _ = writeln!(md, "| workload | C | system | req/s | p50 | p99 | max | vs Node | vs ours | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (w, _) in WORKLOADS {
        for c in [1u64, 8] {
            for sys in ["node", "ours", "team"] {
                let rps = single(w, main, c, sys, "rps");
                let ratio = |other: &str| {
                    rps.zip(single(w, main, c, other, "rps"))
                        .map_or("–".into(), |(t, o)| format!("{}x", fmt_num(t.med / o.med)))
                };
                let (vs_node, vs_ours) =
                    if sys == "team" { (ratio("node"), ratio("ours")) } else { (String::new(), String::new()) };
                let errs = errors(lines, &|l: &Value| {
                    l["kind"] == "team_daemon"
                        && l["workload"] == w
                        && l["entities"].as_u64() == Some(main)
                        && l["clients"].as_u64() == Some(c)
                        && l["system"] == sys
                });
                let _ = writeln!(
                    md,
                    "| {w} | {c} | {sys} | {} | {} | {} | {} | {vs_node} | {vs_ours} | {errs} |",
                    fmt_agg(rps),
                    fmt_agg(single(w, main, c, sys, "p50_ms")),
                    fmt_agg(single(w, main, c, sys, "p99_ms")),
                    fmt_agg(single(w, main, c, sys, "max_ms")),
                );
            }
        }
    }

    let wal = |w: &str, c: u64| of("team_wal").find(|l| l["workload"] == w && l["clients"].as_u64() == Some(c));
    let wal_text = |l: Option<&Value>, writes: u64| -> String {
        let Some(l) = l else { return "–".into() };
        match (l["syncs"].as_f64(), l["sync_ms"].as_f64()) {
            (Some(n), Some(ms)) if n > 0.0 => format!(
                "{n:.0} flushes for {writes} writes measured, {} ms each on average{}",
                fmt_num(ms / n),
                if facts["wal_timed"] == true { "" } else { " (flush times not tracked)" }
            ),
            _ => "–".into(),
        }
    };
    let team_writes = |c: u64| -> u64 {
        of("team_daemon")
            .filter(|l| l["workload"] == "create_entities" && l["system"] == "team" && l["clients"].as_u64() == Some(c))
            .filter_map(|l| l["requests"].as_u64())
            .sum()
    };
    let _ = writeln!(
        md,
        "\nWhat the team daemon's writes waited for: PostgreSQL's WAL flushes to the disk (`pg_stat_wal`, warm-ups \
         included) during create_entities at C=1: {}; at C=8: {}.",
        wal_text(wal("create_entities", 1), team_writes(1)),
        wal_text(wal("create_entities", 8), team_writes(8)),
    );

    // Search by graph size.
    let created: u64 = of("team_daemon")
        .filter(|l| l["workload"] == "create_entities" && l["system"] == "team")
        .filter_map(|l| l["requests"].as_u64())
        .sum();
    let created = if created > 0 { format!("over {created}") } else { "–".to_owned() };
    let _ = writeln!(md, "\n### search_nodes by graph size (C=1, 10 hits per query)\n");
    let _ = writeln!(
        md,
        "First with only the {main}-entity project in the team database, then after importing the \
         {big}-entity project beside it (each import followed by `VACUUM (ANALYZE)`, which also merges the rows \
         waiting in the GIN indexes' pending lists into the indexes), before any write; the last row once the \
         create_entities workloads above have written {created} entities into the {main}-entity project, \
         without a vacuum since: PostgreSQL keeps rows new to a GIN index in its pending list (up to 256 kB, \
         `gin_pending_list_limit`) until a vacuum or a full list merges them, and every search reads the whole \
         list. Ours keeps each project in its own file, so its rows differ only by the moment they were \
         measured.\n"
    );
    let _ = writeln!(
        md,
        "| the team database holds | project searched | ours req/s | ours p50 | team req/s | team p50 | team p99 | team p50 / ours p50 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (w, holds, n) in [
        ("search_alone", format!("{main} entities"), main),
        ("search_scaling", format!("{main} + {big} entities"), main),
        ("search_scaling", format!("{main} + {big} entities"), big),
        ("search_after_writes", format!("{main} + {big} entities, after the create_entities runs"), main),
    ] {
        let (op, tp) = (single(w, n, 1, "ours", "p50_ms"), single(w, n, 1, "team", "p50_ms"));
        let _ = writeln!(
            md,
            "| {holds} | {n} entities | {} | {} | {} | {} | {} | {} |",
            fmt_agg(single(w, n, 1, "ours", "rps")),
            fmt_agg(op),
            fmt_agg(single(w, n, 1, "team", "rps")),
            fmt_agg(tp),
            fmt_agg(single(w, n, 1, "team", "p99_ms")),
            tp.zip(op).map_or("–".into(), |(t, o)| format!("{}x", fmt_num(t.med / o.med))),
        );
    }

    // Several daemons.
    let multi = |w: &str, d: u64, field: &str| {
        agg(of("team_multi")
            .filter(|l| l["workload"] == w && l["daemons"].as_u64() == Some(d))
            .filter_map(|l| l[field].as_f64())
            .collect())
    };
    let _ = writeln!(md, "\n### Several daemons on one PostgreSQL (C={MULTI_CLIENTS}, clients spread round-robin)\n");
    let _ = writeln!(
        md,
        "{MULTI_CLIENTS} clients, client *i* sending to daemon *i* mod *d*, each one request at a time, all on \
         the {main}-entity project: reads = `open_nodes` of 5 names, writes = `create_entities` of one small \
         entity (a transaction each, whose commit waits for a WAL flush that concurrent commits may share); every read round before the writes. *CPU* = cores \
         used over the measurement (warm-up included), from `/proc`: PostgreSQL's postmaster and backends, the \
         daemons measured, and the load generator. With {} cores in all, a second or third daemon brings no \
         CPU of its own, only more processes for the same cores: these figures show what the extra daemons cost \
         on one machine, not how daemons on separate machines would scale.\n",
        info.machine.cores
    );
    let _ = writeln!(
        md,
        "| operation | daemons | req/s (total) | vs 1 daemon | p50 | p99 | max | errors | CPU: PostgreSQL | CPU: daemons | CPU: load generator |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (w, label) in [("open_nodes", "reads (open_nodes)"), ("create_entities", "writes (create_entities)")] {
        let one = multi(w, 1, "rps");
        for d in 1..=MAX_DAEMONS as u64 {
            let rps = multi(w, d, "rps");
            let errs = errors(lines, &|l: &Value| {
                l["kind"] == "team_multi" && l["workload"] == w && l["daemons"].as_u64() == Some(d)
            });
            let cores = |f: &str| multi(w, d, f).map_or("–".into(), |a| format!("{:.2}", a.med));
            let _ = writeln!(
                md,
                "| {label} | {d} | {} | {} | {} | {} | {} | {errs} | {} | {} | {} |",
                fmt_agg(rps),
                rps.zip(one).map_or("–".into(), |(r, o)| format!("{}x", fmt_num(r.med / o.med))),
                fmt_agg(multi(w, d, "p50_ms")),
                fmt_agg(multi(w, d, "p99_ms")),
                fmt_agg(multi(w, d, "max_ms")),
                cores("cpu_postgres"),
                cores("cpu_daemons"),
                cores("cpu_bench"),
            );
        }
    }

    let multi_writes: u64 =
        of("team_multi").filter(|l| l["workload"] == "create_entities").filter_map(|l| l["requests"].as_u64()).sum();
    let _ = writeln!(
        md,
        "\nWAL flushes during all the several-daemon write rounds: {}.",
        wal_text(wal("multi_create_entities", MULTI_CLIENTS as u64), multi_writes)
    );

    // Memory.
    let rss = |phase: &str, sys: &str, field: &str| {
        of("team_rss").find(|l| l["phase"] == phase && l["system"] == sys).and_then(|l| l[field].as_f64())
    };
    let _ = writeln!(md, "\n| daemon (one-daemon workloads) | idle RSS | peak RSS |");
    let _ = writeln!(md, "|---|---|---|");
    for sys in ["node", "ours", "team"] {
        let _ = writeln!(md, "| {sys} | {} | {} |", mib(rss("idle", sys, "rss_kib")), mib(rss("end", sys, "hwm_kib")));
    }
    let _ = writeln!(md, "\nThe team daemon's RSS leaves out PostgreSQL's own processes.");
    Some(md)
}

/// Errors summed over the records `pred` picks.
fn errors(lines: &[Value], pred: &dyn Fn(&Value) -> bool) -> u64 {
    lines.iter().filter(|l| pred(l)).filter_map(|l| l["errors"].as_u64()).sum()
}
