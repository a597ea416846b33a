//! The read path of a store: an r2d2 pool of reader connections (shared worker
//! threads, few idle connections per store), one read transaction per call, and
//! whole-graph answers cached per committed state (keyed by a probe connection's
//! `PRAGMA data_version`), plus the statistics searches are planned with.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use scheduled_thread_pool::ScheduledThreadPool;

use super::{DbFile, GraphError, Store, StoreError, configure, data_version, graph, no_follow};

type Pool = r2d2::Pool<SqliteConnectionManager>;

/// r2d2 runs a few threads per pool (to open connections) unless given a shared set:
/// one set for all stores keeps threads from growing with projects.
static POOL_THREADS: LazyLock<Arc<ScheduledThreadPool>> = LazyLock::new(|| {
    Arc::new(ScheduledThreadPool::builder().num_threads(2).thread_name_pattern("sqlite-readers-{}").build())
});

pub(super) struct Readers {
    /// Replaced when the file is (see `Store::reopen`); reads in flight keep the old one.
    pool: RwLock<Pool>,
    /// A connection that only asks `PRAGMA data_version`, whose value moves whenever any
    /// other connection (our writer, another process) commits: it names the committed
    /// state a cached answer was built from.
    probe: Mutex<Connection>,
    /// Serialized whole-graph answers (see [`Store::read_cached`]) with the probe's
    /// version they were built at.
    cached: Mutex<HashMap<&'static str, (i64, Bytes)>>,
    /// Held while a cached answer is built, so concurrent misses build it once.
    building: Mutex<()>,
    /// Search planning statistics (see [`graph::TrigramCounts`]).
    pub(super) trigram_counts: graph::TrigramCounts,
}

/// How readers open the file.
pub(super) fn flags(file: &DbFile) -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI
        | no_follow(file.no_follow())
}

/// The reader pool of `file`.
pub(super) fn pool(file: &DbFile) -> Result<Pool, StoreError> {
    let manager = SqliteConnectionManager::file(file.path()).with_flags(flags(file)).with_init(configure);
    r2d2::Pool::builder()
        .max_size(pool_size())
        // Opened on demand, never topped up in the background: a reader r2d2 opens
        // on its own while the project is being deleted would make the `-wal` again
        // in the `.claude` being removed (`rm -rf` then fails, "directory not empty").
        .min_idle(Some(0))
        // No idle timeout and no maximum lifetime: either makes r2d2 schedule a reaper
        // on the pool threads that runs every 30 s forever, even after the pool is
        // dropped (its handle is never cancelled), so with shared threads every store
        // ever opened would leave one behind (the soak run's RSS grew 20 MB a minute).
        // Readers are opened on demand up to the pool size and closed with the store.
        .idle_timeout(None)
        .max_lifetime(None)
        .connection_timeout(Duration::from_secs(30))
        // A local file's connection does not go stale; checking costs every read.
        .test_on_check_out(false)
        .thread_pool(POOL_THREADS.clone())
        .build(manager)
        .map_err(|source| StoreError::Pool { path: file.path().to_owned(), source })
}

/// Readers: enough for every core to be busy plus some waiting on I/O.
fn pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(4, 16) as u32
}

impl Readers {
    pub(super) fn new(pool: Pool, probe: Connection) -> Readers {
        Readers {
            pool: RwLock::new(pool),
            probe: Mutex::new(probe),
            cached: Mutex::new(HashMap::new()),
            building: Mutex::new(()),
            trigram_counts: graph::TrigramCounts::default(),
        }
    }

    fn pool(&self) -> Pool {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Switches to the connections of a new file.
    pub(super) fn replace(&self, pool: Pool, probe: Connection) {
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = pool;
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = probe;
        self.forget_cached();
        self.trigram_counts.forget();
    }

    /// Drops cached answers after a commit (they would miss anyway; this frees them).
    pub(super) fn forget_cached(&self) {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A pooled connection for a background checkpoint.
    pub(super) fn pool_for_upkeep(&self) -> Pool {
        self.pool()
    }
}

impl Store {
    /// The statistics searches of this database are planned with.
    pub fn trigram_counts(&self) -> &graph::TrigramCounts {
        &self.readers.trigram_counts
    }

    /// Runs `f` on a pooled reader inside one read transaction, so the statements of
    /// one tool call see one snapshot. Waits for a free reader: call it from a blocking
    /// thread, or use [`Store::try_read`].
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, GraphError>) -> Result<T, StoreError> {
        let conn =
            self.readers.pool().get().map_err(|source| StoreError::Pool { path: self.path().to_owned(), source })?;
        self.read_on(&conn, f)
    }

    /// [`Store::read`] when a reader is free right now; `None` (nothing run) when none
    /// is, so an async worker never waits for one.
    pub fn try_read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, GraphError>) -> Option<Result<T, StoreError>> {
        let conn = self.readers.pool().try_get()?;
        Some(self.read_on(&conn, f))
    }

    fn read_on<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce(&Connection) -> Result<T, GraphError>,
    ) -> Result<T, StoreError> {
        let sqlite = StoreError::sqlite(self.path());
        let tx = ReadTransaction::begin(conn).map_err(&sqlite)?;
        let value = f(conn).map_err(|e| match e {
            GraphError::Sqlite(source) => sqlite(source),
            e => StoreError::Graph(e),
        })?;
        tx.end().map_err(&sqlite)?;
        Ok(value)
    }

    /// The answer `build` makes from the whole graph, built once per committed state:
    /// while nothing commits (in this process or any other) every caller gets the same
    /// bytes, shared, and concurrent callers wait for one build. For `read_graph`, whose
    /// answer is the largest and whose cost grows with the graph.
    pub fn read_cached(
        &self,
        key: &'static str,
        build: impl FnOnce(&Connection) -> Result<Bytes, GraphError>,
    ) -> Result<Bytes, StoreError> {
        let lookup = |version| {
            let cached = self.readers.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.get(key).filter(|(built_at, _)| *built_at == version).map(|(_, bytes)| bytes.clone())
        };
        if let Some(hit) = lookup(self.committed_version()?) {
            return Ok(hit);
        }
        let _building = self.readers.building.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.committed_version()?;
        if let Some(hit) = lookup(version) {
            return Ok(hit);
        }
        let bytes = self.read(build)?;
        // Kept only when nothing committed between the probe and the end of the read,
        // so the snapshot read is the state `version` names.
        if self.committed_version()? == version {
            let mut cached = self.readers.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.insert(key, (version, bytes.clone()));
        }
        Ok(bytes)
    }

    /// A number that changes whenever any connection but the probe commits.
    fn committed_version(&self) -> Result<i64, StoreError> {
        let probe = self.readers.probe.lock().unwrap_or_else(|p| p.into_inner());
        data_version(&probe).map_err(StoreError::sqlite(self.path()))
    }
}

/// A read transaction with its `BEGIN` and `COMMIT` taken from the statement cache
/// (rusqlite's `Transaction` parses them anew every time, a visible cost on small
/// reads). Ended by [`ReadTransaction::end`]; dropped otherwise (an error, a panic), it
/// rolls back, so no pooled connection keeps an old snapshot pinned.
struct ReadTransaction<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> ReadTransaction<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(ReadTransaction { conn, open: true })
    }

    fn end(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for ReadTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A connection opened and configured exactly as the store's pooled readers are, for
/// tests that need to watch a reader (e.g. count its statements).
#[cfg(test)]
pub(crate) fn open_reader(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(path, flags(&DbFile::configured(path.to_owned())))?;
    configure(&mut conn)?;
    Ok(conn)
}
