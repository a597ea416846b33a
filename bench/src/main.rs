//! `cargo run --release -p bench -- [--quick] [--out DIR]`: memory-server and mcp-proxy
//! measured side by side with the Node originals (`@pepk/mcp-memory-sqlite` 1.1.1,
//! `mcp-session-manager` 1.0.1) and a fixed-answer floor server, in one run on one
//! machine; and one stdio server (the official `server-everything`) shared by 8 sessions
//! through `mcp-host`, against 8 copies of it; and team memory, memory-server on a
//! throwaway PostgreSQL. Writes `RESULTS.md`, `results.jsonl` and `ratios.svg` into the
//! output directory.

mod daemon;
mod floor;
mod load;
// The e2e tests' throwaway PostgreSQL server (std only, written to be included here).
#[path = "../../tests/support/postgres.rs"]
mod postgres;
mod proxy;
mod report;
mod sharing;
mod soak;
mod sys;
mod team;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(name = "bench", about = "memory-server and mcp-proxy side by side with the Node originals")]
pub struct Args {
    /// One short run of everything with tiny durations and small graphs (a smoke test; no figure judged).
    #[arg(long)]
    pub quick: bool,
    /// Where RESULTS.md, results.jsonl and ratios.svg go (default: bench/, or a temp dir with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rounds of every measurement (default 3; 1 with --quick).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Measured time per workload, system and concurrency, in ms (default 2000; 150 with --quick).
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Warm-up before each measurement, in ms (default 500; 50 with --quick).
    #[arg(long)]
    pub warmup_ms: Option<u64>,
    /// Run only these parts, comma-separated: daemon workload names (open_nodes, search_nodes,
    /// read_graph, ping, search_scaling, create_entities, add_observations), `proxy`,
    /// `sharing` (8 sessions of one stdio server through mcp-host against 8 copies of it),
    /// `team` (memory-server on a throwaway PostgreSQL beside ours and Node, and 1 to 3
    /// daemons on one database) and/or `soak` (one daemon for --soak-secs under a mixed
    /// load over 500 projects).
    /// For profiling one workload; the report then shows only what ran.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Length of the soak run (`--only soak`) in seconds (default 600; 3 with --quick).
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// Measure the memory-server, mcp-proxy and mcp-host in this directory instead of
    /// building this tree's: the same harness on another build, e.g. before and after a
    /// change (`git worktree add` the old commit, build it, point here at its
    /// `target/release`). The report names the directory.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Profiling aid: instead of the suite, drive the daemon at this `/mcp` URL with the
    /// first `--only` workload for `--duration-ms` (with `--load-project`, `--load-entities`,
    /// `--load-clients`) and print the figures; e.g. while `perf record` watches it.
    #[arg(long, hide = true)]
    pub load_url: Option<String>,
    #[arg(long, hide = true)]
    pub load_project: Option<String>,
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub load_entities: usize,
    #[arg(long, hide = true, default_value_t = 1)]
    pub load_clients: usize,
    /// Internal: run the fixed-answer floor server on this port.
    #[arg(long, hide = true)]
    pub floor_server: Option<u16>,
}

pub struct Settings {
    pub quick: bool,
    pub n_main: usize,
    pub n_small: usize,
    pub scale: Vec<usize>,
    pub repeats: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub cold_starts: usize,
    pub proxy_calls: usize,
    pub spawn_starts: usize,
    /// Sessions that join the shared stdio server after the first 8 (each closed again).
    pub sharing_joins: usize,
    /// `--only`: the parts to run (empty: all).
    pub only: Vec<String>,
    pub soak: soak::SoakSettings,
}

impl Settings {
    /// Whether `--only` lets the part named `name` run.
    pub fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

pub struct Ctx {
    pub s: Settings,
    pub scratch: PathBuf,
    pub npm: PathBuf,
    pub memory_server: PathBuf,
    pub mcp_proxy: PathBuf,
    pub client: reqwest::Client,
}

/// The raw results, one JSON object per measurement.
pub struct Rec {
    pub lines: Vec<Value>,
}

impl Rec {
    pub fn push(&mut self, v: Value) {
        self.lines.push(v);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(port) = args.floor_server {
        return match floor::serve(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(url) = &args.load_url {
        return daemon::load_only(&args, url).await;
    }
    let quick = args.quick;
    let s = Settings {
        quick,
        n_main: if quick { 300 } else { 10_000 },
        n_small: if quick { 100 } else { 1_000 },
        scale: if quick { vec![100, 300, 1_000] } else { vec![1_000, 10_000, 100_000] },
        repeats: args.repeats.unwrap_or(if quick { 1 } else { 3 }).clamp(1, 20),
        duration: Duration::from_millis(args.duration_ms.unwrap_or(if quick { 150 } else { 2000 }).clamp(10, 60_000)),
        warmup: Duration::from_millis(args.warmup_ms.unwrap_or(if quick { 50 } else { 500 }).min(60_000)),
        cold_starts: if quick { 2 } else { 20 },
        proxy_calls: if quick { 50 } else { 1_000 },
        spawn_starts: if quick { 1 } else { 10 },
        sharing_joins: if quick { 3 } else { 24 },
        only: args.only,
        soak: soak::SoakSettings::new(quick, args.soak_secs),
    };
    let root = sys::workspace_root();
    let command = std::iter::once("cargo run --release -p bench --".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let out = match args.out {
        Some(o) => o,
        None if quick => std::env::temp_dir().join(format!("bench-quick-{}", std::process::id())),
        None => root.join("bench"),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let load_start = sys::loadavg();
    // Another build's binaries: named in the report, since the git commit there is this tree's.
    // Absolute, since the daemons are spawned with other working directories.
    let bin_dir =
        args.bin_dir.map(|d| std::fs::canonicalize(&d).map_err(|e| format!("--bin-dir {}: {e}", d.display())));
    let bin_dir = bin_dir.transpose()?;
    let other_build = bin_dir.as_ref().map(|d| d.display().to_string());
    let release = match bin_dir {
        Some(dir) if dir.join("memory-server").is_file() => dir,
        Some(dir) => return Err(format!("--bin-dir {}: no memory-server there", dir.display())),
        None => {
            eprintln!("bench: building the release binaries");
            sys::build_release(&root)?;
            root.join("target").join("release")
        }
    };
    // Only the daemon workloads, the proxies and the team part run the Node originals.
    let npm = if daemon::WORKLOADS.iter().any(|w| s.runs(w)) || s.runs("proxy") || s.runs("team") {
        sys::ensure_node_originals(&root)?
    } else {
        root.join("target").join("bench-npm")
    };
    let scratch = root.join("target").join("bench-scratch").join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let ctx = Ctx {
        s,
        scratch: scratch.clone(),
        npm,
        memory_server: release.join("memory-server"),
        mcp_proxy: release.join("mcp-proxy"),
        client,
    };
    let mut rec = Rec { lines: Vec::new() };
    let started = std::time::Instant::now();
    let result = async {
        if daemon::WORKLOADS.iter().any(|w| ctx.s.runs(w)) {
            daemon::run(&ctx, &mut rec).await?;
        }
        if ctx.s.runs("proxy") {
            proxy::run(&ctx, &mut rec).await?;
        }
        if ctx.s.runs("sharing") {
            sharing::run(&ctx, &mut rec).await?;
        }
        if ctx.s.runs("team") {
            team::run(&ctx, &mut rec).await?;
        }
        if ctx.s.runs("soak") {
            soak::run(&ctx, &mut rec, &ctx.s.soak).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    let info = report::Info {
        command,
        machine: sys::machine(),
        load_start,
        load_end: sys::loadavg(),
        date: sys::cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        secs: started.elapsed().as_secs_f64(),
        versions: vec![
            ("memory-server", sys::cmd_out(&ctx.memory_server.to_string_lossy(), &["--version"])),
            ("binaries", other_build.unwrap_or_else(|| "built from this tree".into())),
            ("git commit", sys::cmd_out("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"])),
            ("rustc", sys::cmd_out("rustc", &["--version"])),
            ("node", sys::cmd_out(sys::NODE, &["--version"])),
            (sys::PEPK, sys::PEPK_VERSION.to_owned()),
            ("@modelcontextprotocol/sdk", sys::SDK_VERSION.to_owned()),
            (sys::MSM, sys::MSM_VERSION.to_owned()),
            (sys::EVERYTHING, sys::EVERYTHING_VERSION.to_owned()),
        ],
        quick,
    };
    let jsonl: String = rec.lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(out.join("results.jsonl"), jsonl).map_err(|e| e.to_string())?;
    let (mut md, svg) = report::render(&info, &ctx.s, &rec.lines);
    if let Some(section) = sharing::report(&rec.lines, &info) {
        md.push('\n');
        md.push_str(&section);
    }
    if let Some(section) = team::report(&rec.lines, &info) {
        md.push('\n');
        md.push_str(&section);
    }
    if let Some((section, chart)) = soak::report(&rec.lines, quick) {
        md.push('\n');
        md.push_str(&section);
        std::fs::write(out.join("soak.svg"), chart).map_err(|e| e.to_string())?;
    }
    std::fs::write(out.join("RESULTS.md"), md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("ratios.svg"), svg).map_err(|e| e.to_string())?;
    eprintln!("bench: done in {:.0} s; wrote {}/RESULTS.md, results.jsonl, ratios.svg", info.secs, out.display());
    Ok(())
}
