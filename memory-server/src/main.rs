//! `memory-server`: parse the command line, set up logging on stderr, run a command.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::runtime::Runtime;

use memory_server::config::{
    BackupArgs, Cli, CommandArgs, CopyArgs, DaemonConfig, DbChoice, ExportArgs, ImportArgs, StdioArgs, global_db_path,
};
use memory_server::dispatch::McpServer;
use memory_server::postgres::ProjectKey;
use memory_server::project::ProjectPath;
use memory_server::routing::Router;
use memory_server::store::registry::StoreLimits;
use memory_server::store::{DbFile, Store};
use memory_server::transport::stdio::StdioLimits;
use memory_server::{serve, transfer, transport};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let result = match cli.command {
        None => run_serve(&runtime, &cli.serve),
        Some(CommandArgs::Serve(args)) => run_serve(&runtime, &args),
        Some(CommandArgs::Stdio(args)) => runtime.block_on(run_stdio(&args)).map_err(Failure::from),
        Some(CommandArgs::Import(args)) => run_import(&runtime, &args).map_err(Failure::from),
        Some(CommandArgs::Export(args)) => run_export(&runtime, &args).map_err(Failure::from),
        Some(CommandArgs::Backup(args)) => run_backup(&runtime, &args).map_err(Failure::from),
        Some(CommandArgs::Copy(args)) => run_copy(&runtime, &args).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { message, usage: false }) => fail(message),
        Err(Failure { message, usage: true }) => {
            eprintln!("memory-server: {message}");
            ExitCode::from(2)
        }
    }
}

/// Why a command failed; `usage`: the command line cannot run as given (a value out of
/// range, a TLS file that cannot be read or used), exit status 2 like clap's own errors,
/// where a failure while running exits 1.
struct Failure {
    message: String,
    usage: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { message, usage: false }
    }
}

fn run_serve(runtime: &tokio::runtime::Runtime, args: &memory_server::config::ServeArgs) -> Result<(), Failure> {
    let config = DaemonConfig::from_args(args).map_err(|e| Failure { message: e.to_string(), usage: true })?;
    runtime.block_on(serve::serve(config)).map_err(|e| Failure::from(e.to_string()))
}

async fn run_stdio(args: &StdioArgs) -> Result<(), String> {
    // Claude Code sets CLAUDE_PROJECT_DIR for every server it starts: per-project memory
    // without a per-project config entry.
    let from_env = std::env::var("CLAUDE_PROJECT_DIR").ok().filter(|d| !d.is_empty());
    let project = match (args.project.as_deref(), from_env.as_deref()) {
        (Some(dir), _) => Some(ProjectPath::from_dir(dir).map_err(|e| format!("--project: {e}"))?),
        (None, Some(dir)) => Some(ProjectPath::from_dir(dir).map_err(|e| format!("CLAUDE_PROJECT_DIR: {e}"))?),
        (None, None) => None,
    };
    let global = global_db_path().map_err(|e| e.to_string())?;
    let router = Router::new(global, StoreLimits::default());
    let server = Arc::new(McpServer::new(router, std::time::Duration::from_secs(3600)));
    let limits = StdioLimits { max_batch: args.batch.max_batch, max_line_bytes: args.max_body_bytes };
    let result = transport::stdio::run(server.clone(), project, limits).await.map_err(|e| format!("stdio: {e}"));
    server.router.registry().close_all().await;
    result
}

fn transfer_db(choice: &DbChoice) -> Result<DbFile, String> {
    let global = global_db_path().map_err(|e| e.to_string())?;
    transfer::target_db(choice.project.as_deref(), choice.db.as_deref(), global)
}

/// `--project-id` of a transfer command (the global memory without it).
fn project_key(id: Option<&str>) -> Result<ProjectKey, String> {
    match id {
        Some(id) => ProjectKey::new("--project-id", id.to_owned()).map_err(|e| e.to_string()),
        None => Ok(ProjectKey::global()),
    }
}

fn run_import(runtime: &Runtime, args: &ImportArgs) -> Result<(), String> {
    if let Some(url) = &args.target.database {
        let key = project_key(args.target.project_id.as_deref())?;
        let report =
            runtime.block_on(transfer::import_to_database(url, &key, &args.file)).map_err(|e| e.to_string())?;
        println!("imported {} into project {key}: {report}", args.file.display());
        return Ok(());
    }
    let db = transfer_db(&args.target)?;
    let store = Store::open_file(&db).map_err(|e| e.to_string())?;
    let report = transfer::import(&store, &args.file).map_err(|e| e.to_string())?;
    println!("imported {} into {}: {report}", args.file.display(), db.path().display());
    Ok(())
}

fn run_export(runtime: &Runtime, args: &ExportArgs) -> Result<(), String> {
    let write = |out: &mut dyn std::io::Write| -> Result<(), String> {
        match &args.target.database {
            Some(url) => {
                let key = project_key(args.target.project_id.as_deref())?;
                runtime.block_on(transfer::export_from_database(url, &key, out)).map_err(|e| e.to_string())
            }
            None => {
                let db = transfer_db(&args.target)?;
                if !db.path().exists() {
                    return Err(format!("{}: no such database", db.path().display()));
                }
                let store = Store::open_file(&db).map_err(|e| e.to_string())?;
                transfer::export(&store, out).map_err(|e| e.to_string())
            }
        }
    };
    match &args.output {
        Some(path) => {
            let tmp = path.with_extension("partial");
            let mut file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            if let Err(e) = write(&mut file) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => write(&mut std::io::stdout().lock()),
    }
}

fn run_backup(runtime: &Runtime, args: &BackupArgs) -> Result<(), String> {
    if let Some(url) = &args.target.database {
        let key = project_key(args.target.project_id.as_deref())?;
        let report =
            runtime.block_on(transfer::backup_from_database(url, &key, &args.output)).map_err(|e| e.to_string())?;
        eprintln!("memory-server: backed up project {key} to {}: {report}", args.output.display());
        return Ok(());
    }
    let db = transfer_db(&args.target)?;
    transfer::backup(db.path(), &args.output).map_err(|e| e.to_string())?;
    eprintln!("memory-server: backed up {} to {}", db.path().display(), args.output.display());
    Ok(())
}

fn run_copy(runtime: &Runtime, args: &CopyArgs) -> Result<(), String> {
    let key = project_key(args.project_id.as_deref())?;
    let report = runtime
        .block_on(transfer::copy_to_database(&args.from_db, &args.to_database, &key))
        .map_err(|e| e.to_string())?;
    println!("copied {} into project {key}: {report}", args.from_db.display());
    Ok(())
}

/// Logs go to stderr (stdout is protocol in stdio mode); `RUST_LOG` overrides the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn fail(message: String) -> ExitCode {
    eprintln!("memory-server: {message}");
    ExitCode::FAILURE
}
