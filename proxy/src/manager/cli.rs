//! The `mcp-manager` command line. Commands that change or show daemons use a running
//! manager's API when one answers on `--port` (so its health check knows what the user
//! asked for), and act directly otherwise; `ensure` and `ensure-all` follow the proxy's
//! own find-or-start order (SPEC 3.3). Errors are one line on stderr with what to do;
//! exit 2 for bad input (unknown daemon, broken config), 1 when an operation failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::api::{self, ApiClient, ApiError};
use super::client_config::{self, Written};
use super::control::{self, DaemonStatus, State};
use super::{AllReply, DEFAULT_HEALTH_INTERVAL, ItemResult, Manager, StartReply, StopReply};
use crate::config::{Config, Env, Target};
use crate::discovery::{self, DEFAULT_MANAGER_PORT};
use crate::runtime::RuntimeDir;

#[derive(Parser)]
#[command(name = "mcp-manager", version, about = "Start, stop, watch and register the shared MCP daemons")]
pub struct Args {
    /// Config file (default: $MCP_SESSION_MANAGER_HOME/config.toml, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Port of the manager's HTTP API: `serve` listens there; other commands use the API
    /// there when a manager answers, and act directly otherwise.
    /// (Default: `[manager] port` of the config, else 3199.)
    #[arg(long, global = true, visible_alias = "manager-port")]
    port: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on 127.0.0.1 and restart daemons that die.
    Serve {
        /// Start every daemon first.
        #[arg(long)]
        start_all: bool,
        /// Seconds between health checks.
        #[arg(long, default_value_t = DEFAULT_HEALTH_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
        health_interval_secs: u64,
    },
    /// Show every configured daemon: port, transport, pid, alive, uptime, log file.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Start a daemon (no-op when it runs).
    Start { name: String },
    /// Stop a daemon: SIGTERM, SIGKILL after a timeout, remove its lock file.
    Stop {
        name: String,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = control::STOP_TIMEOUT.as_secs_f64())]
        timeout_secs: f64,
    },
    /// Make sure a daemon runs, starting it when needed.
    Ensure { name: String },
    /// Start every daemon that can be started.
    StartAll,
    /// Stop every daemon.
    StopAll {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = control::STOP_TIMEOUT.as_secs_f64())]
        timeout_secs: f64,
    },
    /// Make sure every daemon runs (for a shell profile: quick when all are up, safe from
    /// many shells at once).
    EnsureAll {
        /// Print only errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print the tail of a daemon's log.
    Logs {
        name: String,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Register the proxies with an MCP client: print the `mcpServers` JSON and the
    /// `claude mcp add-json` commands, or merge the entries into a file. Entries name
    /// `--config` and `--manager-port` when this run's are not the defaults.
    GenerateConfig {
        /// Merge into this file.
        #[arg(long, conflicts_with = "scope")]
        output: Option<PathBuf>,
        /// Merge into Claude Code's user config (~/.claude.json) or the project's ./.mcp.json.
        #[arg(long, value_enum)]
        scope: Option<Scope>,
        /// With a target: print the merged file instead of writing it.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    User,
    Project,
}

/// A failure: exit code and a one-line message.
struct Fail(u8, String);

type Outcome = Result<ExitCode, Fail>;

fn bad_input(message: impl Into<String>) -> Fail {
    Fail(2, message.into())
}

fn failed(message: impl Into<String>) -> Fail {
    Fail(1, message.into())
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(Fail(1, format!("cannot start the async runtime: {e}"))),
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(f) => report(f),
    }
}

fn report(Fail(code, message): Fail) -> ExitCode {
    eprintln!("mcp-manager: {message}");
    ExitCode::from(code)
}

struct Ctx {
    config: Config,
    runtime: RuntimeDir,
    port: u16,
    /// The `--config` given, if any.
    config_file: Option<PathBuf>,
}

async fn run(args: Args) -> Outcome {
    let runtime = RuntimeDir::from_env()
        .ok_or_else(|| bad_input("neither MCP_SESSION_MANAGER_HOME nor HOME is set; set one of them"))?;
    let env = Env::from_process();
    let config = match &args.config {
        Some(path) => Config::load(path, true, &env),
        None => Config::load(&runtime.config_file(), false, &env),
    }
    .map_err(|e| {
        bad_input(format!("config error: {e}; fix the file (or move it aside to use the built-in defaults)"))
    })?;
    let port = args.port.or(config.manager_port).unwrap_or(DEFAULT_MANAGER_PORT);
    let ctx = Ctx { config, runtime, port, config_file: args.config };
    match args.command {
        Command::Serve { start_all, health_interval_secs } => {
            serve(ctx, start_all, Duration::from_secs(health_interval_secs)).await
        }
        Command::Status { json } => status(&ctx, json).await,
        Command::Start { name } => start(&ctx, &name).await,
        Command::Stop { name, timeout_secs } => stop(&ctx, &name, stop_timeout(timeout_secs)?).await,
        Command::Ensure { name } => {
            ctx.check_name(&name)?;
            ensure_all(&ctx, &[name], false).await
        }
        Command::StartAll => start_all(&ctx).await,
        Command::StopAll { timeout_secs } => stop_all(&ctx, stop_timeout(timeout_secs)?).await,
        Command::EnsureAll { quiet } => {
            let names = ctx.config.local_names();
            ensure_all(&ctx, &names, quiet).await
        }
        Command::Logs { name, lines } => logs(&ctx, &name, lines),
        Command::GenerateConfig { output, scope, print } => generate_config(&ctx, output, scope, print, &env),
    }
}

impl Ctx {
    fn check_name(&self, name: &str) -> Result<(), Fail> {
        if self.config.daemons.contains_key(name) {
            return Ok(());
        }
        let file = if self.config_file.is_some() || self.config.source != "built-in defaults" {
            self.config.source.clone()
        } else {
            self.runtime.config_file().display().to_string()
        };
        Err(bad_input(format!(
            "unknown daemon `{name}`; configured daemons ({}): {}; check the name or add [daemons.{name}] to {file}",
            self.config.source,
            self.config.names().join(", ")
        )))
    }

    fn check_runtime(&self) -> Result<(), Fail> {
        self.runtime.check_writable().map_err(|e| failed(e.to_string()))
    }

    /// A manager answering on `--port`, given enough time per call for a start or stop.
    async fn api(&self) -> Option<ApiClient> {
        self.api_for_stop(control::STOP_TIMEOUT).await
    }

    async fn api_for_stop(&self, stop_timeout: Duration) -> Option<ApiClient> {
        let slowest = self.config.daemons.values().map(|s| s.startup_timeout).max().unwrap_or_default();
        // SIGKILL's own wait (5 s) and slack on top.
        ApiClient::connect(self.port, slowest + stop_timeout + Duration::from_secs(30)).await
    }

    /// A manager object for acting directly (no API, no health check).
    fn local(&self) -> Arc<Manager> {
        Manager::new(self.config.clone(), self.runtime.clone(), DEFAULT_HEALTH_INTERVAL)
    }
}

fn api_fail(e: ApiError) -> Fail {
    match e {
        ApiError::Status { status: 404, message } => bad_input(message),
        other => failed(other.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Fail> {
    serde_json::from_value(value).map_err(|e| failed(format!("unexpected answer from the manager: {e}")))
}

async fn serve(ctx: Ctx, start_all: bool, interval: Duration) -> Outcome {
    ctx.check_runtime()?;
    let port = ctx.port;
    let manager = Manager::new(ctx.config, ctx.runtime, interval);
    api::serve(manager, port, start_all).await.map_err(|e| failed(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

async fn status(ctx: &Ctx, as_json: bool) -> Outcome {
    let (manager, daemons): (Option<Value>, Vec<DaemonStatus>) = match ctx.api().await {
        Some(api) => {
            let mut v = api.call(Method::GET, "/status", None).await.map_err(api_fail)?;
            (Some(v["manager"].take()), parse(v["daemons"].take())?)
        }
        None => (None, ctx.local().status().await),
    };
    if as_json {
        let out = json!({ "manager": manager, "daemons": daemons });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&daemons));
    for line in graph_browsers(&ctx.config, &daemons) {
        println!("{line}");
    }
    match manager {
        Some(m) => println!(
            "\nmanager: serving on 127.0.0.1:{} (pid {}, health check every {} s)",
            ctx.port, m["pid"], m["health_interval_secs"]
        ),
        None => println!(
            "\nmanager: not running on port {} (read directly; restarts are only counted by `mcp-manager serve`)",
            ctx.port
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The status table: one row per daemon, columns padded to fit.
pub fn table(daemons: &[DaemonStatus]) -> String {
    let header = ["NAME", "PORT", "TRANSPORT", "PID", "ALIVE", "STATE", "UPTIME", "RESTARTS", "LOG"];
    let dash = || "-".to_string();
    let rows: Vec<[String; 9]> = daemons
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.port.map_or_else(dash, |p| p.to_string()),
                d.transport.clone(),
                d.pid.map_or_else(dash, |p| p.to_string()),
                if d.alive { "yes" } else { "no" }.to_string(),
                d.state.as_str().to_string(),
                d.uptime_secs.map_or_else(dash, format_uptime),
                d.restarts.to_string(),
                d.log_file.clone().or_else(|| d.url.clone()).unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    for d in daemons {
        if d.state == State::Misconfigured {
            out.push_str(&format!("{}: misconfigured: {}\n", d.name, d.last_error.as_deref().unwrap_or("?")));
        }
        for c in d.children.iter().flatten() {
            let dash = || "-".to_string();
            out.push_str(&format!(
                "{}: child for {}: pid {}, rss {}, {} session{}, {} restart{}, {}\n",
                d.name,
                c.share_key,
                c.pid.map_or_else(dash, |p| p.to_string()),
                c.rss_bytes.map_or_else(dash, |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))),
                c.sessions,
                if c.sessions == 1 { "" } else { "s" },
                c.restarts,
                if c.restarts == 1 { "" } else { "s" },
                c.state,
            ));
        }
    }
    out
}

/// Where each memory-server daemon (one started as `memory-server`) serves its graph
/// browser (SPEC 2.11): one line each, for the status table's foot.
fn graph_browsers(config: &Config, daemons: &[DaemonStatus]) -> Vec<String> {
    let is_memory_server = |name: &str| {
        config.daemons.get(name).is_some_and(|spec| {
            matches!(&spec.target, Target::Local { launch: Some(l), .. }
                if l.command.file_name().is_some_and(|f| f == "memory-server"))
        })
    };
    daemons
        .iter()
        .filter(|d| is_memory_server(&d.name))
        .filter_map(|d| d.port.map(|port| format!("{}: graph browser at http://127.0.0.1:{port}/ui", d.name)))
        .collect()
}

pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

async fn start(ctx: &Ctx, name: &str) -> Outcome {
    ctx.check_name(name)?;
    let reply: StartReply = match ctx.api().await {
        Some(api) => parse(api.call(Method::POST, "/start", Some(json!({ "name": name }))).await.map_err(api_fail)?)?,
        None => {
            ctx.check_runtime()?;
            ctx.local().start(name).await.map_err(|e| failed(e.to_string()))?
        }
    };
    println!("{}", reply.describe());
    Ok(if reply.running { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn stop_timeout(secs: f64) -> Result<Duration, Fail> {
    if secs.is_finite() && (0.0..=3600.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(bad_input("--timeout-secs must be between 0 and 3600"))
    }
}

async fn stop(ctx: &Ctx, name: &str, timeout: Duration) -> Outcome {
    ctx.check_name(name)?;
    let reply: StopReply = match ctx.api_for_stop(timeout).await {
        Some(api) => {
            let body = json!({ "name": name, "timeout_secs": timeout.as_secs_f64() });
            parse(api.call(Method::POST, "/stop", Some(body)).await.map_err(api_fail)?)?
        }
        None => ctx.local().stop(name, timeout).await.map_err(|e| failed(e.to_string()))?,
    };
    println!("{}", reply.describe());
    Ok(ExitCode::SUCCESS)
}

async fn start_all(ctx: &Ctx) -> Outcome {
    let reply: AllReply = match ctx.api().await {
        Some(api) => parse(api.call(Method::POST, "/start-all", None).await.map_err(api_fail)?)?,
        None => {
            ctx.check_runtime()?;
            ctx.local().start_all().await
        }
    };
    print_results(&reply, false)
}

async fn stop_all(ctx: &Ctx, timeout: Duration) -> Outcome {
    let reply: AllReply = match ctx.api_for_stop(timeout).await {
        Some(api) => {
            let body = json!({ "timeout_secs": timeout.as_secs_f64() });
            parse(api.call(Method::POST, "/stop-all", Some(body)).await.map_err(api_fail)?)?
        }
        None => ctx.local().stop_all(timeout).await,
    };
    print_results(&reply, false)
}

fn print_results(reply: &AllReply, quiet: bool) -> Outcome {
    for r in &reply.results {
        if r.ok {
            if !quiet {
                println!("{}", r.message);
            }
        } else {
            eprintln!("mcp-manager: {}", r.message);
        }
    }
    Ok(if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `ensure` and `ensure-all`: the proxy's find-or-start for each daemon, all at once.
/// A daemon that answers costs one TCP connect; a missing one is started once however
/// many shells ask at the same moment (the spawn lock).
async fn ensure_all(ctx: &Ctx, names: &[String], quiet: bool) -> Outcome {
    let all_up = futures_util::future::join_all(
        names.iter().filter_map(|n| ctx.config.daemons.get(n)?.port()).map(discovery::ping),
    )
    .await;
    if all_up.len() < names.len() || all_up.contains(&false) {
        ctx.check_runtime()?;
    }
    let runs = names.iter().filter_map(|n| ctx.config.daemons.get(n)).map(|spec| async move {
        match discovery::find_or_start(spec, &ctx.runtime, ctx.port).await {
            Ok(found) => {
                let s = control::snapshot(spec, &ctx.runtime).await;
                let reply = StartReply {
                    name: spec.name.clone(),
                    running: s.alive,
                    port: found.port.or(s.port),
                    transport: s.transport,
                    pid: s.pid,
                    started: found.spawned,
                };
                ItemResult { name: spec.name.clone(), ok: reply.running, message: reply.describe() }
            }
            Err(e) => ItemResult { name: spec.name.clone(), ok: false, message: e.to_string() },
        }
    });
    let reply = AllReply::from_results(futures_util::future::join_all(runs).await);
    print_results(&reply, quiet)
}

fn logs(ctx: &Ctx, name: &str, lines: usize) -> Outcome {
    ctx.check_name(name)?;
    if let Target::Remote { url } = &ctx.config.daemons[name].target {
        return Err(failed(format!("daemon `{name}` is reached by url ({url}); its log is wherever it runs")));
    }
    let text = control::tail_log(&ctx.runtime, name, lines).ok_or_else(|| {
        failed(format!(
            "no log for `{name}` yet ({} does not exist); it is written once mcp-proxy or mcp-manager starts the daemon",
            ctx.runtime.log_file(name).display()
        ))
    })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn generate_config(ctx: &Ctx, output: Option<PathBuf>, scope: Option<Scope>, print: bool, env: &Env) -> Outcome {
    let proxy = client_config::proxy_path().map_err(failed)?;
    let extra = client_config::ProxyArgs::new(ctx.config_file.as_deref(), &ctx.runtime.config_file(), ctx.port)
        .map_err(bad_input)?;
    let servers = client_config::servers(&ctx.config, &proxy, &extra);
    let target = match (output, scope) {
        (Some(path), _) => Some(path),
        (None, Some(Scope::User)) => Some(
            env.home
                .as_ref()
                .ok_or_else(|| bad_input("HOME is not set; pass --output FILE instead"))?
                .join(".claude.json"),
        ),
        (None, Some(Scope::Project)) => Some(PathBuf::from(".mcp.json")),
        (None, None) => None,
    };
    let Some(target) = target else {
        let object = json!({ "mcpServers": servers });
        println!("{}", serde_json::to_string_pretty(&object).unwrap_or_default());
        println!();
        println!("# To register them with Claude Code (user scope), run:");
        for cmd in client_config::add_json_commands(&servers) {
            println!("{cmd}");
        }
        println!("# Or let mcp-manager merge them: generate-config --scope user | --scope project | --output FILE");
        return Ok(ExitCode::SUCCESS);
    };
    let target = if target.is_absolute() {
        target
    } else {
        std::env::current_dir().map_err(|e| failed(format!("cannot read the current directory: {e}")))?.join(target)
    };
    let names = servers.keys().cloned().collect::<Vec<_>>().join(", ");
    if print {
        let existing = std::fs::read_to_string(&target).ok();
        let merged = client_config::merge(existing.as_deref(), &servers, &target.display().to_string())
            .map_err(|e| failed(e.to_string()))?;
        print!("{merged}");
        return Ok(ExitCode::SUCCESS);
    }
    match client_config::write_merged(&target, &servers).map_err(|e| failed(e.to_string()))? {
        Written::Unchanged => println!("{} already has these servers ({names}); nothing to do", target.display()),
        Written::Updated { backup } => {
            let backup = backup.map_or_else(String::new, |b| format!(" (previous version in {})", b.display()));
            println!("wrote {names} to {}{backup}; restart Claude Code to use them", target.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_naturally() {
        assert_eq!(format_uptime(5), "5s");
        assert_eq!(format_uptime(65), "1m05s");
        assert_eq!(format_uptime(3 * 3600 + 120), "3h02m");
        assert_eq!(format_uptime(2 * 86_400 + 3600), "2d01h");
    }

    #[test]
    fn the_table_has_a_header_and_aligned_rows() {
        let d = DaemonStatus {
            name: "memory".into(),
            port: Some(3100),
            transport: "streamable-http".into(),
            pid: Some(42),
            alive: true,
            uptime_secs: Some(61),
            log_file: Some("/h/.mcp-session-manager/memory.log".into()),
            restarts: 1,
            state: State::Running,
            url: None,
            backoff_secs: None,
            last_error: None,
            children: None,
        };
        let t = table(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME    PORT  TRANSPORT        PID  ALIVE"), "{t}");
        assert!(lines[1].starts_with("memory  3100  streamable-http  42   yes    running  1m01s"), "{t}");
        assert!(lines[1].ends_with("/h/.mcp-session-manager/memory.log"), "{t}");
    }
}
