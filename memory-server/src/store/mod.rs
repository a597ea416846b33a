//! One SQLite memory database: a single writer connection fed by a group-commit queue
//! (`commit`; only one connection per process ever waits on SQLite's lock), an r2d2
//! pool of readers, cached whole-graph answers and a background checkpoint thread.
//! Methods block, except `write_async`; async callers run the rest on blocking threads
//! unless a read is known to be small.

mod commit;
pub mod graph;
pub mod migrate;
pub mod model;
pub mod registry;
#[cfg(test)]
mod search_tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::broadcast;

pub use graph::GraphError;

use commit::WRITE_DEADLINE;
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: schema version {found} is newer than this memory-server understands (up to {known}); \
         upgrade memory-server. The file was not modified"
    )]
    TooNew { path: PathBuf, found: u32, known: u32 },
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
    #[error(transparent)]
    Graph(GraphError),
}

thread_local! {
    /// The cancellation flag of the request this blocking thread works for (see
    /// [`with_cancel`]); a write checks it before it starts and before it commits.
    static CANCEL: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this (blocking) thread with `cancel` as the current request's flag:
/// once it is set, [`Store::write`] gives up with [`StoreError::Cancelled`] instead of
/// starting or committing its transaction.
pub fn with_cancel<T>(cancel: Option<Arc<AtomicBool>>, f: impl FnOnce() -> T) -> T {
    let previous = CANCEL.with(|c| c.replace(cancel));
    let out = f();
    CANCEL.with(|c| *c.borrow_mut() = previous);
    out
}

/// The cancellation flag of the request this thread works for.
fn current_cancel() -> Option<Arc<AtomicBool>> {
    CANCEL.with(|c| c.borrow().clone())
}

impl StoreError {
    /// Whether the failure comes from the file or the OS refusing access, which routing
    /// answers by falling back to the global database.
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
}

pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Writes waiting for a batch (see `commit`).
    queue: Mutex<commit::Queue>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    changes: broadcast::Sender<()>,
    /// `PRAGMA data_version` of the writer connection when last polled: it moves only
    /// when another connection (another process) commits.
    outside_version: AtomicI64,
    /// Whether a task polls for commits by other processes (while anyone subscribes).
    watching: AtomicBool,
    /// A connection that only asks `PRAGMA data_version`, whose value moves whenever any
    /// other connection (our writer, another process) commits: it names the committed
    /// state a cached answer was built from.
    probe: Mutex<Connection>,
    /// Serialized whole-graph answers (see [`Store::read_cached`]) with the probe's
    /// version they were built at.
    cached: Mutex<HashMap<&'static str, (i64, Bytes)>>,
    /// Held while a cached answer is built, so concurrent misses build it once.
    building: Mutex<()>,
    /// Wakes this store's checkpoint thread (see [`checkpointer`]).
    checkpoint_due: std::sync::mpsc::SyncSender<()>,
    /// Committed batches since the checkpoint thread was last woken.
    batches: std::sync::atomic::AtomicU32,
    /// Search planning statistics (see [`graph::TrigramCounts`]).
    trigram_counts: graph::TrigramCounts,
    /// Committed batches since the trigram counts were last forgotten.
    batches_since_recount: std::sync::atomic::AtomicU32,
    /// Committed batches since the search index was last brought up to date.
    batches_since_index: std::sync::atomic::AtomicU32,
    /// Committed batches that changed the graph, ever: the idle index update watches it.
    committed: std::sync::atomic::AtomicU64,
    /// An idle index update is waiting for writes to pause (see [`Store::index_when_idle`]).
    index_when_idle_pending: AtomicBool,
}

/// Committed write batches after which the combiner queues a search-index update of its
/// own, so the rows waiting for the next search stay few (a search updates the index
/// first when any wait): at one write per batch, about 0.3 ms of indexing every 32
/// writes instead of about 70 µs in each.
const BATCHES_PER_INDEX_UPDATE: u32 = 32;

/// How long writes must pause before the rows they wrote are indexed without waiting
/// for a search. Far shorter than the gap between an agent's tool calls, so its next
/// search finds the index current; far longer than the gap between writes under load,
/// so those keep being indexed in batches.
const INDEX_WHEN_IDLE_AFTER: Duration = Duration::from_millis(5);

/// Committed write batches after which remembered trigram counts are forgotten, so
/// search plans follow a graph that grows or changes.
const BATCHES_PER_RECOUNT: u32 = 1024;

/// Committed write batches between two background checkpoints: a few hundred WAL pages.
const BATCHES_PER_CHECKPOINT: u32 = 32;
/// The writer's own automatic checkpoint, a backstop should the background one fall
/// behind (SQLite's default is 1,000 pages).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Starts the thread that folds the WAL back into the database file when woken, on its
/// own connection: a `PASSIVE` checkpoint copies what no reader still needs and never
/// blocks writers, so no write waits for the copying and the `fsync`s it ends with
/// (with SQLite's automatic checkpoint the unlucky commit does all that itself). The
/// thread ends when the store is dropped.
fn checkpointer(path: &Path) -> rusqlite::Result<std::sync::mpsc::SyncSender<()>> {
    let mut conn = Connection::open_with_flags(path, reader_flags())?;
    configure(&mut conn)?;
    let (due, wake) = std::sync::mpsc::sync_channel::<()>(1);
    let db = path.display().to_string();
    let spawned = std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
        while wake.recv().is_ok() {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(db, error = %e, "background checkpoint did not run");
            }
        }
    });
    if let Err(e) = spawned {
        // Without the thread SQLite's automatic checkpoint (the backstop) still runs.
        tracing::warn!(db = %path.display(), error = %e, "cannot start the checkpoint thread");
    }
    Ok(due)
}

/// A search-index update as a derived job (see `commit::Job::derived`).
fn index_update_job() -> (commit::Job, tokio::sync::oneshot::Receiver<Result<(), commit::Failure>>) {
    commit::Job::derived(Box::new(update_search_index))
}

/// The combiner's own search-index update: skips the write when nothing waits.
fn update_search_index(conn: &Connection) -> Result<(), GraphError> {
    if graph::search_index_is_stale(conn)? {
        graph::repair_search_index(conn)?;
    }
    Ok(())
}

/// How often a store with subscribers looks for commits made by other processes.
const OUTSIDE_POLL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let sqlite = |source| StoreError::Sqlite { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
        }
        refuse_newer(path)?;
        create_private_file(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })?;

        let mut writer = Connection::open(path).map_err(sqlite)?;
        configure(&mut writer).map_err(sqlite)?;
        let applied = migrate::migrate(&mut writer).map_err(|e| match e {
            migrate::MigrateError::TooNew { found, known } => {
                StoreError::TooNew { path: path.to_owned(), found, known }
            }
            migrate::MigrateError::Sqlite(source) => sqlite(source),
        })?;
        for name in applied {
            tracing::info!(db = %path.display(), migration = name, "migration applied");
        }

        let manager = SqliteConnectionManager::file(path).with_flags(reader_flags()).with_init(configure);
        let readers = r2d2::Pool::builder()
            .max_size(reader_pool_size())
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .map_err(|source| StoreError::Pool { path: path.to_owned(), source })?;
        let (changes, _) = broadcast::channel(16);
        let version = data_version(&writer).map_err(sqlite)?;
        let mut probe = Connection::open_with_flags(path, reader_flags()).map_err(sqlite)?;
        configure(&mut probe).map_err(sqlite)?;
        writer.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES).map_err(sqlite)?;
        let checkpoint_due = checkpointer(path).map_err(sqlite)?;
        Ok(Store {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            queue: Mutex::new(commit::Queue::default()),
            readers,
            changes,
            outside_version: AtomicI64::new(version),
            watching: AtomicBool::new(false),
            probe: Mutex::new(probe),
            cached: Mutex::new(HashMap::new()),
            building: Mutex::new(()),
            checkpoint_due,
            batches: std::sync::atomic::AtomicU32::new(0),
            trigram_counts: graph::TrigramCounts::default(),
            batches_since_recount: std::sync::atomic::AtomicU32::new(0),
            batches_since_index: std::sync::atomic::AtomicU32::new(0),
            committed: std::sync::atomic::AtomicU64::new(0),
            index_when_idle_pending: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The statistics searches of this database are planned with.
    pub fn trigram_counts(&self) -> &graph::TrigramCounts {
        &self.trigram_counts
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and returns once that transaction
    /// has committed. Concurrent writes share transactions (see `commit`): `f` may run
    /// more than once (when another process holds the lock past the busy timeout, or a
    /// write sharing its transaction failed), so it must only touch the transaction.
    /// Subscribers are told when rows changed. Blocks; from async code use
    /// [`Store::write_async`].
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, slot, outcome) = Self::job(f, current_cancel());
        if commit::Queue::push(&self.queue, job) {
            self.combine();
        }
        let outcome = outcome.blocking_recv();
        self.write_outcome(outcome, &slot)
    }

    /// [`Store::write`] for async callers: the write waits without holding a thread,
    /// and a blocking thread runs only when no batch is running already. `cancel` is
    /// the request's cancellation flag.
    pub async fn write_async<T: Send + 'static>(
        self: &Arc<Self>,
        cancel: Option<Arc<AtomicBool>>,
        f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.commit_job(false, cancel, f).await
    }

    /// [`Store::write_async`] for a write of a few rows: when no batch runs and the lock
    /// is free, it runs and commits right here on the async worker (tens of µs), which
    /// saves handing it to a blocking thread and back, two wake-ups and about a fifth of
    /// a small write's round trip. Otherwise (a batch running, the writer connection in
    /// use, another process holding the lock) it is queued like any write: this never
    /// waits for a lock on the async worker.
    pub async fn write_small_async<T: Send + 'static>(
        self: &Arc<Self>,
        cancel: Option<Arc<AtomicBool>>,
        f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.commit_job(true, cancel, f).await
    }

    /// Queues `f` as a job, or with `now` runs it at once when the queue is idle, then
    /// waits for its outcome.
    async fn commit_job<T: Send + 'static>(
        self: &Arc<Self>,
        now: bool,
        cancel: Option<Arc<AtomicBool>>,
        f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, slot, outcome) = Self::job(f, cancel);
        if now && commit::Queue::claim_idle(&self.queue) {
            if let Some(job) = self.run_now(job) {
                commit::Queue::push(&self.queue, job); // we hold the turn: no second combiner
            }
            if commit::Queue::release(&self.queue) {
                self.combine_in_background();
            }
        } else if commit::Queue::push(&self.queue, job) {
            self.combine_in_background();
        }
        let outcome = outcome.await;
        self.index_when_idle();
        self.write_outcome(outcome, &slot)
    }

    /// Runs `job` on this thread for the holder of an idle queue's turn, without waiting
    /// for any lock; gives the job back when it must be queued instead (the writer
    /// connection in use by an import or the outside-write poll, or another process
    /// holding the database lock).
    fn run_now(&self, job: commit::Job) -> Option<commit::Job> {
        // As in `combine`: a panic must not leave the turn taken forever.
        let _unwinding = commit::ReleaseOnPanic(&self.queue);
        let Ok(mut conn) = self.writer.try_lock() else { return Some(job) };
        let ran = match conn.busy_timeout(Duration::ZERO) {
            Ok(()) => commit::run_alone(&mut conn, job),
            Err(_) => Err(job),
        };
        if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(db = %self.path.display(), error = %e, "cannot restore the busy timeout");
        }
        drop(conn);
        match ran {
            Ok(changed) => {
                if changed {
                    self.after_commit();
                }
                None
            }
            Err(job) => Some(job),
        }
    }

    /// Runs the combiner on a blocking thread; its writers are answered through their
    /// jobs, so nobody joins it.
    fn combine_in_background(self: &Arc<Self>) {
        let store = self.clone();
        drop(tokio::task::spawn_blocking(move || store.combine()));
    }

    /// Once writes pause for [`INDEX_WHEN_IDLE_AFTER`], indexes the rows they wrote (a
    /// derived write, skipped when nothing waits). One waiting task per store at most;
    /// it holds the store weakly, so a store that is dropped is not kept open by it.
    fn index_when_idle(self: &Arc<Self>) {
        if self.index_when_idle_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(seen) = store.upgrade().map(|s| s.committed.load(Ordering::SeqCst)) else { return };
                tokio::time::sleep(INDEX_WHEN_IDLE_AFTER).await;
                let Some(s) = store.upgrade() else { return };
                if s.committed.load(Ordering::SeqCst) != seen {
                    continue; // still writing: the batches keep the rows waiting few
                }
                // Cleared before the update: a write committing from now on schedules
                // the next one, and one that committed before is in this update.
                s.index_when_idle_pending.store(false, Ordering::SeqCst);
                let (job, outcome) = index_update_job();
                if commit::Queue::push(&s.queue, job) {
                    s.combine_in_background();
                }
                if let Ok(Err(_)) = outcome.await {
                    // The next search updates the index itself (and reports the error).
                    tracing::debug!(db = %s.path.display(), "idle search-index update did not commit");
                }
                return;
            }
        });
    }

    /// Wraps `f` as a job that leaves its value in the returned slot.
    #[allow(clippy::type_complexity)]
    fn job<T: Send + 'static>(
        mut f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
        cancel: Option<Arc<AtomicBool>>,
    ) -> (commit::Job, Arc<Mutex<Option<T>>>, tokio::sync::oneshot::Receiver<Result<(), commit::Failure>>) {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let work = Box::new(move |conn: &Connection| {
            let value = f(conn)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
            Ok(())
        });
        let (job, outcome) = commit::Job::new(work, cancel);
        (job, slot, outcome)
    }

    /// Runs queued batches until the queue is empty (see `commit`).
    fn combine(&self) {
        let _unwinding = commit::ReleaseOnPanic(&self.queue);
        loop {
            let batch = commit::Queue::take_batch(&self.queue);
            if batch.is_empty() {
                return;
            }
            // A panic while holding the lock cannot leave a transaction open (the
            // Transaction guard rolls back on drop), so a poisoned lock is safe to reuse.
            let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if commit::run_batch(&mut conn, batch) {
                drop(conn);
                self.after_commit();
            }
        }
    }

    /// Bookkeeping after a committed batch that changed the graph, by whoever holds the
    /// combiner's turn: notices, the checkpoint thread, the periodic index update (queued
    /// for the holder of the turn to run) and the search statistics.
    fn after_commit(&self) {
        self.committed.fetch_add(1, Ordering::SeqCst);
        self.forget_cached();
        let _ = self.changes.send(());
        if self.batches.fetch_add(1, Ordering::Relaxed) + 1 >= BATCHES_PER_CHECKPOINT {
            self.batches.store(0, Ordering::Relaxed);
            // Full means a wake-up is pending already.
            let _ = self.checkpoint_due.try_send(());
        }
        if self.batches_since_index.fetch_add(1, Ordering::Relaxed) + 1 >= BATCHES_PER_INDEX_UPDATE {
            self.batches_since_index.store(0, Ordering::Relaxed);
            // Nobody waits for it: the writers of this batch have their answers, and the
            // holder of the turn runs it with whatever is queued next.
            let (job, _unheard) = index_update_job();
            commit::Queue::push(&self.queue, job);
        }
        if self.batches_since_recount.fetch_add(1, Ordering::Relaxed) + 1 >= BATCHES_PER_RECOUNT {
            self.batches_since_recount.store(0, Ordering::Relaxed);
            self.trigram_counts.forget();
        }
    }

    fn write_outcome<T>(
        &self,
        outcome: Result<Result<(), commit::Failure>, tokio::sync::oneshot::error::RecvError>,
        slot: &Mutex<Option<T>>,
    ) -> Result<T, StoreError> {
        let path = || self.path.clone();
        match outcome {
            // The job ran and committed, so its value is in the slot.
            Ok(Ok(())) => {
                slot.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or(StoreError::NotRun { path: path() })
            }
            // The combiner drops a job unfinished only if it panicked.
            Err(_) => Err(StoreError::NotRun { path: path() }),
            Ok(Err(commit::Failure::Cancelled)) => {
                tracing::info!(db = %self.path.display(), "write cancelled before commit");
                Err(StoreError::Cancelled { path: path() })
            }
            Ok(Err(commit::Failure::Locked)) => Err(StoreError::Locked { path: path() }),
            Ok(Err(commit::Failure::Graph(GraphError::Sqlite(source)))) => {
                Err(StoreError::Sqlite { path: path(), source })
            }
            Ok(Err(commit::Failure::Graph(e))) => Err(StoreError::Graph(e)),
        }
    }

    /// Indexes for search the rows written since the index was last brought up to date
    /// (a derived write: nothing when none wait, and no change notice). Searches call this
    /// first when [`graph::search_index_is_stale`] says rows wait.
    pub fn update_search_index(&self) -> Result<(), StoreError> {
        let (job, outcome) = index_update_job();
        if commit::Queue::push(&self.queue, job) {
            self.combine();
        }
        // The job returns nothing: its slot holds the unit value from the start.
        self.write_outcome(outcome.blocking_recv(), &Mutex::new(Some(())))
    }

    /// Hands the writer connection to `f` (for work that manages its own transaction,
    /// like a streamed import). Blocks while another write is in progress.
    pub fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let before = conn.total_changes();
        let value = f(&mut conn);
        if conn.total_changes() != before {
            self.forget_cached();
            let _ = self.changes.send(());
        }
        value
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
            let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.get(key).filter(|(built_at, _)| *built_at == version).map(|(_, bytes)| bytes.clone())
        };
        if let Some(hit) = lookup(self.committed_version()?) {
            return Ok(hit);
        }
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.committed_version()?;
        if let Some(hit) = lookup(version) {
            return Ok(hit);
        }
        let bytes = self.read(build)?;
        // Kept only when nothing committed between the probe and the end of the read,
        // so the snapshot read is the state `version` names.
        if self.committed_version()? == version {
            let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.insert(key, (version, bytes.clone()));
        }
        Ok(bytes)
    }

    /// A number that changes whenever any connection but the probe commits.
    fn committed_version(&self) -> Result<i64, StoreError> {
        let probe = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        data_version(&probe).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Drops cached answers after our own commit (they would miss anyway; this frees them).
    fn forget_cached(&self) {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs `f` on a pooled reader inside one read transaction, so the statements of
    /// one tool call see one snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, GraphError>) -> Result<T, StoreError> {
        let conn = self.readers.get().map_err(|source| StoreError::Pool { path: self.path.clone(), source })?;
        let sqlite = |source| StoreError::Sqlite { path: self.path.clone(), source };
        let tx = ReadTransaction::begin(&conn).map_err(sqlite)?;
        let value = f(&conn).map_err(|e| match e {
            GraphError::Sqlite(source) => StoreError::Sqlite { path: self.path.clone(), source },
            e => StoreError::Graph(e),
        })?;
        tx.end().map_err(sqlite)?;
        Ok(value)
    }

    /// A receiver that yields once per committed change (coalesced when it lags).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }

    /// Makes sure commits by other processes (another daemon, `memory-server import`)
    /// reach subscribers too: while anyone subscribes, a task polls the writer
    /// connection's `PRAGMA data_version` every 500 ms.
    pub fn watch_outside_writes(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OUTSIDE_POLL);
            loop {
                tick.tick().await;
                if store.changes.receiver_count() == 0 {
                    store.watching.store(false, Ordering::SeqCst);
                    // A subscriber that arrived meanwhile saw `watching` still set.
                    if store.changes.receiver_count() == 0 || store.watching.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                let polled = store.clone();
                let changed = tokio::task::spawn_blocking(move || polled.outside_write_seen()).await.unwrap_or(false);
                if changed {
                    let _ = store.changes.send(());
                }
            }
        });
    }

    /// Whether another connection committed since the last call.
    fn outside_write_seen(&self) -> bool {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match data_version(&conn) {
            Ok(v) => self.outside_version.swap(v, Ordering::SeqCst) != v,
            Err(e) => {
                tracing::warn!(db = %self.path.display(), error = %e, "cannot read data_version");
                false
            }
        }
    }

    /// Folds the WAL back into the main file; called at shutdown.
    pub fn checkpoint(&self) {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(db = %self.path.display(), error = %e, "WAL checkpoint failed");
        }
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

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// Readers: enough for every core to be busy plus some waiting on I/O.
fn reader_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(4, 16) as u32
}

/// How the pooled readers open the file.
fn reader_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
}

/// A connection opened and configured exactly as the store's pooled readers are, for
/// tests that need to watch a reader (e.g. count its statements).
#[cfg(test)]
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(path, reader_flags())?;
    configure(&mut conn)?;
    Ok(conn)
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
    register_js_lower(conn)
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

/// Refuses a database from a newer binary without modifying it: opened read-only, so
/// not even the journal mode changes, and without leaving files next to it.
fn refuse_newer(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let sqlite = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let conn = open_untouched(path).map_err(sqlite)?;
    let found = migrate::user_version(&conn).map_err(sqlite)?;
    let known = migrate::latest_version();
    if found > known {
        return Err(StoreError::TooNew { path: path.to_owned(), found, known });
    }
    Ok(())
}

/// Opens `path` read-only without creating anything next to it. A read-only connection
/// to a WAL-mode file (as the Node server leaves its `memory.db`) creates `-wal` and
/// `-shm` files that it cannot remove again. With no `-wal` file there is no
/// uncheckpointed change, so the main file alone is the database and is read as
/// `immutable` (no locks, no side files); otherwise the `-wal` must be read too, and
/// it exists already.
fn open_untouched(path: &Path) -> rusqlite::Result<Connection> {
    use std::os::unix::ffi::OsStrExt;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        return Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
    }
    // Characters a SQLite URI path cannot hold literally (non-ASCII bytes are always
    // escaped); SQLite decodes them back to the same bytes.
    const URI_PATH: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?');
    let escaped = percent_encoding::percent_encode(path.as_os_str().as_bytes(), URI_PATH);
    Connection::open_with_flags(
        format!("file:{escaped}?mode=ro&immutable=1"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
}

/// Creates `dir` (and parents) readable by the user only when it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates a DB file with mode 0600 before SQLite does (SQLite would use 0644);
/// its -wal and -shm files inherit the mode.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::Entity;

    fn entity(name: &str, ty: &str, obs: &[&str]) -> Entity {
        Entity { name: name.into(), entity_type: ty.into(), observations: obs.iter().map(|s| s.to_string()).collect() }
    }

    fn busy_timeout_ms(store: &Store) -> i64 {
        store.with_writer(|c| c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))).unwrap()
    }

    /// A small write commits at once when nothing else writes, with the bookkeeping of
    /// any commit (a change notice); when another process holds the lock it is queued
    /// instead, commits once the lock is free, and the writer connection keeps its busy
    /// timeout either way.
    #[tokio::test]
    async fn small_writes_run_at_once_or_queue_when_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("m.db")).unwrap());
        let mut changes = store.subscribe_changes();
        let names = |store: &Store| -> Vec<String> {
            store.read(graph::read_graph).unwrap().entities.into_iter().map(|e| e.name).collect()
        };

        let created = store.write_small_async(None, |c| graph::create_entities(c, &[entity("now", "t", &["x"])]));
        assert_eq!(created.await.unwrap().len(), 1);
        assert!(changes.try_recv().is_ok(), "the commit is announced");
        assert_eq!(names(&store), ["now"]);
        assert_eq!(busy_timeout_ms(&store), BUSY_TIMEOUT.as_millis() as i64);

        // Another process holds the write lock.
        let other = Connection::open(store.path()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let writer = store.clone();
        let queued = tokio::spawn(async move {
            writer.write_small_async(None, |c| graph::create_entities(c, &[entity("later", "t", &[])])).await
        });
        // Bounded: until the write has left the async worker for the queue's combiner.
        for _ in 0..10_000 {
            if store.writer.try_lock().is_err() {
                break; // the combiner holds the connection, waiting for the lock
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!queued.is_finished(), "committed while another process held the lock");
        other.execute_batch("COMMIT").unwrap();
        let created = tokio::time::timeout(Duration::from_secs(60), queued).await.unwrap().unwrap().unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!(names(&store), ["now", "later"]);
        assert_eq!(busy_timeout_ms(&store), BUSY_TIMEOUT.as_millis() as i64);
    }

    #[test]
    fn creates_private_files_and_migrates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/.claude/memory.db");
        let store = Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let v = store.read(|c| Ok(migrate::user_version(c)?)).unwrap();
        assert_eq!(v, migrate::latest_version());
    }

    #[test]
    fn js_lower_is_unicode_aware_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).unwrap();
        let s: String = store.read(|c| Ok(c.query_row("SELECT lower('ÄÖÜ ΟΔΟΣ İ')", [], |r| r.get(0))?)).unwrap();
        assert_eq!(s, "äöü οδος i\u{307}");
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).unwrap();
        store.write(move |c| graph::create_entities(c, &[entity("a", "t", &[])])).unwrap();
        let err = store
            .write(move |c| {
                graph::add_observations(
                    c,
                    &[
                        model::ObservationAddition { entity_name: "a".into(), contents: vec!["x".into()] },
                        model::ObservationAddition { entity_name: "missing".into(), contents: vec!["y".into()] },
                    ],
                )
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "Entity with name missing not found");
        let g = store.read(graph::read_graph).unwrap();
        assert!(g.entities[0].observations.is_empty());
    }

    /// A cached answer is reused while nothing commits and rebuilt after a commit by
    /// this store, by another store on the file (another daemon) and by a plain SQLite
    /// connection (another program); a failed write does not invalidate it.
    #[test]
    fn cached_answers_follow_every_commit() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store = Store::open(&path).unwrap();
        let builds = AtomicUsize::new(0);
        let names = || {
            store
                .read_cached("names", |c| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    let names: String =
                        c.query_row("SELECT coalesce(group_concat(name), '') FROM entities", [], |r| r.get(0))?;
                    Ok(Bytes::from(names))
                })
                .unwrap()
        };
        assert_eq!(names(), "");
        assert_eq!(names(), "");
        assert_eq!(builds.load(Ordering::SeqCst), 1, "nothing committed: built once");

        store.write(move |c| graph::create_entities(c, &[entity("a", "t", &[])])).unwrap();
        assert_eq!(names(), "a");
        assert_eq!(builds.load(Ordering::SeqCst), 2);

        let other_daemon = Store::open(&path).unwrap();
        other_daemon.write(move |c| graph::create_entities(c, &[entity("b", "t", &[])])).unwrap();
        assert_eq!(names(), "a,b");

        let other_program = Connection::open(&path).unwrap();
        other_program.execute("INSERT INTO entities (name, entity_type) VALUES ('c', 't')", []).unwrap();
        assert_eq!(names(), "a,b,c");
        assert_eq!(names(), "a,b,c");
        assert_eq!(builds.load(Ordering::SeqCst), 4);

        let failed = store.write(move |c| {
            graph::add_observations(c, &[model::ObservationAddition { entity_name: "zz".into(), contents: vec![] }])
        });
        assert!(failed.is_err());
        assert_eq!(names(), "a,b,c");
        assert_eq!(builds.load(Ordering::SeqCst), 4, "a rolled-back write changes nothing");
    }

    #[test]
    fn refuses_a_newer_schema_without_touching_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE x(a); PRAGMA user_version = 99;").unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("newer"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!dir.path().join("m.db-wal").exists());
    }

    #[test]
    fn refuses_a_newer_wal_mode_schema_without_creating_side_files() {
        let dir = tempfile::tempdir().unwrap();
        // A name that needs escaping in a SQLite URI.
        let path = dir.path().join("a #1?%20 ü.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE x(a); PRAGMA user_version = 99;").unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [path.file_name().unwrap()], "no -wal or -shm file appeared");
    }
}
