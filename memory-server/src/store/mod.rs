//! One SQLite memory database, split by job: `writer` (the one writer connection, its
//! group-commit queue and what follows a commit), `readers` (pooled readers, read
//! transactions, cached whole-graph answers), `maintenance` (checkpoints, index updates,
//! polling for other processes' writes: background work the store owns and joins when
//! it closes), `open` (which files may be opened, and how) and `migrate` (adoption and
//! schema). `registry` owns the lifecycle of the open stores. Methods block, except the
//! `*_async` writes; async callers run the rest on blocking threads unless a read is
//! known to be small.

mod commit;
pub(crate) mod graph;
mod maintenance;
mod migrate;
pub(crate) mod model;
mod open;
mod readers;
pub mod registry;
#[cfg(test)]
mod search_tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::broadcast;

pub use graph::GraphError;
pub use open::{DbFile, check_regular_file, create_private_file, effective_uid};

use commit::WRITE_DEADLINE;
use open::FileIdentity;

const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: schema version {found} is newer than this memory-server understands (up to {known}); \
         upgrade memory-server. The file was not modified"
    )]
    TooNew { path: PathBuf, found: u32, known: u32 },
    #[error("{path}: refusing to use this file as a memory database: {detail}. The file was not modified")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path}: refused: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: connection pool: {source}")]
    Pool { path: PathBuf, source: r2d2::Error },
    #[error("{path}: database stayed locked by another process for {secs} s", secs = WRITE_DEADLINE.as_secs())]
    Locked { path: PathBuf },
    #[error("{path}: the write was cancelled (the client closed its request) before it committed")]
    Cancelled { path: PathBuf },
    #[error("{path}: internal error: the write was not run (see the log)")]
    NotRun { path: PathBuf },
    #[error(
        "{path}: the database file was deleted or replaced while in use and a fresh one could not be \
         created ({reason}); the write was not saved"
    )]
    Lost { path: PathBuf, reason: String },
    #[error(
        "{path}: all {max_open} open project databases stayed in use for 30 s, so this one could not be \
         opened; try again, or raise --max-open-stores"
    )]
    Busy { path: PathBuf, max_open: usize },
    #[error(transparent)]
    Graph(GraphError),
}

impl StoreError {
    /// Whether the OS refused to create or write something (a read-only directory or
    /// file system), as opposed to a file that is wrong.
    pub fn is_permission(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem)
            }
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied)
            ),
            _ => false,
        }
    }

    fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite { path: path.to_owned(), source }
    }
}

pub struct Store {
    file: DbFile,
    /// The file the connections have open; compared with what is at the path after
    /// every commit (see [`Store::file_is_current`]).
    identity: Mutex<FileIdentity>,
    writer: writer::Writer,
    readers: readers::Readers,
    upkeep: maintenance::Maintenance,
    /// Told once per committed change; owned by the registry per path, so subscribers
    /// outlive a store that is closed and opened again.
    changes: broadcast::Sender<()>,
    /// Also told of every announced change, with this store's path.
    on_change: Option<ChangeHook>,
}

/// Called with a store's path after each change it announces (see `Store::announce`):
/// the daemon's projects list keeps the time of each project's last write. Runs on the
/// commit path, so it must only take a moment.
pub type ChangeHook = Arc<dyn Fn(&Path) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.file.path()).finish_non_exhaustive()
    }
}

/// The connections of one open file.
struct Opened {
    writer: Connection,
    readers: r2d2::Pool<SqliteConnectionManager>,
    probe: Connection,
    identity: FileIdentity,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at a path the user chose.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_file(&DbFile::configured(path.to_owned()))
    }

    /// Opens `file` under its rules (see [`DbFile`]), with a change channel of its own.
    pub fn open_file(file: &DbFile) -> Result<Store, StoreError> {
        Self::open_with(file, broadcast::channel(16).0, None)
    }

    /// Opens `file`, announcing commits on `changes` and to `on_change`.
    pub(crate) fn open_with(
        file: &DbFile,
        changes: broadcast::Sender<()>,
        on_change: Option<ChangeHook>,
    ) -> Result<Store, StoreError> {
        let opened = Opened::open(file)?;
        let version = data_version(&opened.writer).map_err(StoreError::sqlite(file.path()))?;
        Ok(Store {
            file: file.clone(),
            identity: Mutex::new(opened.identity),
            writer: writer::Writer::new(opened.writer),
            readers: readers::Readers::new(opened.readers, opened.probe),
            upkeep: maintenance::Maintenance::new(version),
            changes,
            on_change,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A receiver that yields once per committed change (coalesced when it lags).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }

    fn announce(&self) {
        let _ = self.changes.send(());
        if let Some(hook) = &self.on_change {
            hook(self.path());
        }
    }

    /// Whether the file at our path is still the one our connections have open. Asked
    /// after every commit, before anyone is told it succeeded: a write committed into
    /// a file that was deleted (`rm memory.db*`, a re-clone) would vanish with it.
    fn file_is_current(&self) -> bool {
        let now = self.file.identity_now();
        now == Some(*self.identity.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Opens the file that now stands at our path (creating a fresh database when none
    /// does) in place of the one that went away, for the combiner holding `writer`'s
    /// lock. Readers in flight finish on the old file; new reads use the new one.
    fn reopen(&self, writer: &mut Connection) -> Result<(), StoreError> {
        let opened = Opened::open(&self.file)?;
        let version = data_version(&opened.writer).map_err(StoreError::sqlite(self.path()))?;
        *writer = opened.writer;
        self.readers.replace(opened.readers, opened.probe);
        self.upkeep.outside_version.store(version, Ordering::SeqCst);
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = opened.identity;
        tracing::warn!(db = %self.path().display(), "the database file was deleted or replaced; opened a fresh one");
        // What readers see changed (probably to an empty graph).
        self.announce();
        Ok(())
    }
}

impl Opened {
    /// Checks the file (see `open`), refuses a schema that is not ours or the Node
    /// server's without writing anything, then opens the writer, migrates in one
    /// transaction, and opens the readers.
    fn open(file: &DbFile) -> Result<Opened, StoreError> {
        let path = file.path();
        let sqlite = StoreError::sqlite(path);
        let identity = file.prepare()?;
        let untouched = open_untouched(path, file.no_follow()).map_err(&sqlite)?;
        migrate::check_adoptable(&untouched).map_err(|e| adoption_error(path, e))?;
        drop(untouched);

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
            | no_follow(file.no_follow());
        let mut writer = Connection::open_with_flags(path, flags).map_err(&sqlite)?;
        configure(&mut writer).map_err(&sqlite)?;
        let applied = migrate::migrate(&mut writer).map_err(|e| adoption_error(path, e))?;
        for name in applied {
            tracing::info!(db = %path.display(), migration = name, "migration applied");
        }
        writer.pragma_update(None, "wal_autocheckpoint", writer::WAL_AUTOCHECKPOINT_PAGES).map_err(&sqlite)?;
        let readers = readers::pool(file)?;
        let mut probe = Connection::open_with_flags(path, readers::flags(file)).map_err(&sqlite)?;
        configure(&mut probe).map_err(&sqlite)?;
        if file.identity_now() != Some(identity) {
            return Err(StoreError::Refused {
                path: path.to_owned(),
                reason: "the file was replaced while it was being opened".into(),
            });
        }
        Ok(Opened { writer, readers, probe, identity })
    }
}

fn adoption_error(path: &Path, e: migrate::MigrateError) -> StoreError {
    match e {
        migrate::MigrateError::TooNew { found, known } => StoreError::TooNew { path: path.to_owned(), found, known },
        migrate::MigrateError::Foreign(detail) => StoreError::Foreign { path: path.to_owned(), detail },
        migrate::MigrateError::Sqlite(source) => StoreError::Sqlite { path: path.to_owned(), source },
    }
}

fn no_follow(on: bool) -> OpenFlags {
    if on { OpenFlags::SQLITE_OPEN_NOFOLLOW } else { OpenFlags::empty() }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// Per-connection settings. `foreign_keys` is switched off explicitly: the bundled
/// SQLite enables it by default, but relations may name entities that do not exist.
fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "could not switch the database to WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
    conn.set_prepared_statement_cache_capacity(64);
    register_search_functions(conn)
}

/// The SQL functions indexing rows for search calls: our `lower()` and
/// `search_signature()` (see `graph::signature_of_value`). Registered on every connection
/// we open, and again by `migrate::migrate` on the connection it is given.
fn register_search_functions(conn: &Connection) -> rusqlite::Result<()> {
    register_js_lower(conn)?;
    conn.create_scalar_function(
        "search_signature",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| Ok(graph::signature_of_value(ctx.get_raw(0))),
    )
}

/// Overrides SQL `lower()` with Unicode lower-casing as JavaScript's `toLowerCase` does
/// it (Rust's `str::to_lowercase` follows the same Unicode rules, final sigma included);
/// the built-in one folds ASCII only. Indexing rows for search calls it.
fn register_js_lower(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "lower",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Text(bytes) => SqlValue::Text(String::from_utf8_lossy(bytes).to_lowercase()),
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(i) => SqlValue::Integer(i),
                ValueRef::Real(r) => SqlValue::Real(r),
                ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            })
        },
    )
}

/// Opens `path` read-only without creating anything next to it, to look at a file
/// before adopting it. A read-only connection to a WAL-mode file (as the Node server
/// leaves its `memory.db`) creates `-wal` and `-shm` files that it cannot remove
/// again. With no `-wal` file there is no uncheckpointed change, so the main file
/// alone is the database and is read as `immutable` (no locks, no side files);
/// otherwise the `-wal` must be read too, and it exists already.
fn open_untouched(path: &Path, follow_no_links: bool) -> rusqlite::Result<Connection> {
    use std::os::unix::ffi::OsStrExt;
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | no_follow(follow_no_links);
    if open::suffixed(path, "-wal").exists() {
        return Connection::open_with_flags(path, read_only);
    }
    // Characters a SQLite URI path cannot hold literally (non-ASCII bytes are always
    // escaped); SQLite decodes them back to the same bytes.
    const URI_PATH: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?');
    let escaped = percent_encoding::percent_encode(path.as_os_str().as_bytes(), URI_PATH);
    Connection::open_with_flags(format!("file:{escaped}?mode=ro&immutable=1"), read_only | OpenFlags::SQLITE_OPEN_URI)
}

#[cfg(test)]
mod tests;
