//! Background work a store owns: WAL checkpoints off the writers' path (and the short
//! step that lets the WAL start over under a writer that never pauses), the search-index
//! update once writes pause, polling for commits by other processes while anyone
//! subscribes, and the combiner threads. All of it is tracked, so closing the store
//! stops and joins it before the final index update and checkpoint: nothing outlives
//! its store.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Store, data_version};

/// How long writes must pause before the rows they wrote are indexed without waiting
/// for a search. Far shorter than the gap between an agent's tool calls, so its next
/// search finds the index current; far longer than the gap between writes under load,
/// so those keep being indexed in batches.
const INDEX_WHEN_IDLE_AFTER: Duration = Duration::from_millis(5);

/// How often a store with subscribers looks for commits made by other processes.
const OUTSIDE_POLL: Duration = Duration::from_millis(500);

/// Passes one background checkpoint makes at most. Each copies what was committed while
/// the one before ran, so each is a fraction of the one before.
const CHECKPOINT_PASSES: u32 = 4;

/// A pass that found fewer new WAL frames than this ends the background checkpoint.
const CHECKPOINT_SETTLED_FRAMES: i64 = 64;

/// WAL frames (pages) from which a background checkpoint asks the combiner to finish it
/// (see [`Store::finish_checkpoint`]), so that the WAL starts over: about 16 MiB, well
/// under the writer's automatic checkpoint (`writer::WAL_AUTOCHECKPOINT_PAGES`). Below
/// it the WAL is left to grow; every finishing step is a short pause for the writers.
const FINISH_CHECKPOINT_FRAMES: i64 = 4096;

pub(super) struct Maintenance {
    tasks: TaskTracker,
    /// Cancelled when the store closes: waiting tasks end at once.
    stop: CancellationToken,
    /// A background checkpoint is running (one at a time is plenty).
    checkpointing: Arc<AtomicBool>,
    /// A background checkpoint copied all but what was committed during its last pass,
    /// of a WAL long enough to start over: the combiner finishes it between two batches.
    pub(super) checkpoint_to_finish: Arc<AtomicBool>,
    /// When the last background checkpoint was started.
    last_checkpoint: std::sync::Mutex<std::time::Instant>,
    /// An idle index update is waiting for writes to pause.
    index_when_idle_pending: AtomicBool,
    /// A task polls for other processes' commits.
    watching: AtomicBool,
    /// `PRAGMA data_version` of the writer connection when last polled: it moves only
    /// when another connection (another process) commits.
    pub(super) outside_version: AtomicI64,
}

impl Maintenance {
    pub(super) fn new(writer_version: i64) -> Maintenance {
        Maintenance {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            checkpointing: Arc::new(AtomicBool::new(false)),
            checkpoint_to_finish: Arc::new(AtomicBool::new(false)),
            last_checkpoint: std::sync::Mutex::new(std::time::Instant::now()),
            index_when_idle_pending: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            outside_version: AtomicI64::new(writer_version),
        }
    }

    /// Whether `every` has passed since the last background checkpoint (and, if so,
    /// counts one as started now).
    pub(super) fn checkpoint_due(&self, every: Duration) -> bool {
        let mut last = self.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < every {
            return false;
        }
        *last = std::time::Instant::now();
        true
    }

    /// Runs `f` on a blocking thread the store waits for when it closes; outside a
    /// runtime (the command-line tools) on this thread.
    pub(super) fn spawn_blocking(&self, f: impl FnOnce() + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(self.tasks.spawn_blocking_on(f, &handle)),
            Err(_) => f(),
        }
    }
}

impl Store {
    /// Folds the WAL back into the database file on a pooled reader, off the writers'
    /// path: a `PASSIVE` checkpoint copies what no reader still needs and never blocks
    /// writers, so no write waits for the copying and the `fsync`s it ends with (with
    /// SQLite's automatic checkpoint the unlucky commit does all that itself). See
    /// [`checkpoint_in_passes`] for how it leaves the WAL ready to start over.
    pub(super) fn checkpoint_in_background(&self) {
        let running = self.upkeep.checkpointing.clone();
        if running.swap(true, Ordering::SeqCst) {
            return;
        }
        let to_finish = self.upkeep.checkpoint_to_finish.clone();
        let pool = self.readers.pool_for_upkeep();
        let db = self.path().display().to_string();
        self.upkeep.spawn_blocking(move || {
            match pool.get().map_err(|e| e.to_string()).and_then(|conn| checkpoint_in_passes(&conn)) {
                Ok(finish) => to_finish.store(finish, Ordering::SeqCst),
                Err(error) => tracing::debug!(db, error, "background checkpoint did not run"),
            }
            running.store(false, Ordering::SeqCst);
        });
    }

    /// Finishes a background checkpoint on the writer connection, for the combiner
    /// between two batches: nothing commits while it copies the few frames the
    /// background passes left, so the WAL is then wholly in the database file and the
    /// next write starts it over from its beginning.
    ///
    /// Why it is needed: SQLite starts the WAL over only when a write begins while every
    /// frame is copied. Under a writer that never pauses, a commit lands during every
    /// background pass, so that never happens; the WAL grew to the writer's automatic
    /// checkpoint (10,000 pages), which then ran inside a commit every few hundred
    /// milliseconds and held every waiting writer for 3 to 10 ms (and `fsync`ed every
    /// page copied since the last start-over).
    pub(super) fn finish_checkpoint(&self) {
        self.upkeep.checkpoint_to_finish.store(false, Ordering::SeqCst);
        let conn = self.writer.lock();
        // PASSIVE never waits: a background pass holding the checkpoint lock makes this
        // a no-op, and a later background checkpoint asks again.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(db = %self.path().display(), error = %e, "finishing checkpoint did not run");
        }
    }

    /// Once writes pause for [`INDEX_WHEN_IDLE_AFTER`], indexes the rows they wrote (a
    /// derived write, skipped when nothing waits). One waiting task per store at most;
    /// it holds the store weakly and ends when the store closes.
    pub(super) fn index_when_idle(self: &Arc<Self>) {
        if self.upkeep.index_when_idle_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = Arc::downgrade(self);
        let stop = self.upkeep.stop.clone();
        self.upkeep.tasks.spawn(async move {
            loop {
                let Some(seen) = committed(&store) else { return };
                tokio::select! {
                    () = tokio::time::sleep(INDEX_WHEN_IDLE_AFTER) => {}
                    () = stop.cancelled() => return, // closing updates the index itself
                }
                let Some(s) = store.upgrade() else { return };
                if s.writer.committed.load(Ordering::SeqCst) != seen {
                    continue; // still writing: the batches keep the rows waiting few
                }
                // Cleared before the update: a write committing from now on schedules
                // the next one, and one that committed before is in this update.
                s.upkeep.index_when_idle_pending.store(false, Ordering::SeqCst);
                let outcome = s.queue_index_update();
                drop(s);
                if let Ok(Err(_)) = outcome.await {
                    // The next search updates the index itself (and reports the error).
                    tracing::debug!("idle search-index update did not commit");
                }
                return;
            }
        });
    }

    /// Makes sure commits by other processes (another daemon, `memory-server import`)
    /// reach subscribers too: while anyone subscribes, a task polls the writer
    /// connection's `PRAGMA data_version` every 500 ms. It holds the store weakly and
    /// ends when the store closes; the registry starts it again on a store it reopens
    /// for subscribers.
    pub fn watch_outside_writes(self: &Arc<Self>) {
        if self.upkeep.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = Arc::downgrade(self);
        let stop = self.upkeep.stop.clone();
        self.upkeep.tasks.spawn(async move {
            let mut tick = tokio::time::interval(OUTSIDE_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Some(s) = store.upgrade() else { return };
                if s.changes.receiver_count() == 0 {
                    s.upkeep.watching.store(false, Ordering::SeqCst);
                    // A subscriber that arrived meanwhile saw `watching` still set.
                    if s.changes.receiver_count() == 0 || s.upkeep.watching.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                let polled = s.clone();
                drop(s);
                let changed = tokio::task::spawn_blocking(move || polled.outside_write_seen()).await.unwrap_or(false);
                if changed && let Some(s) = store.upgrade() {
                    s.announce();
                }
            }
        });
    }

    /// Whether another connection committed since the last call.
    fn outside_write_seen(&self) -> bool {
        let conn = self.writer.lock();
        match data_version(&conn) {
            Ok(v) => self.upkeep.outside_version.swap(v, Ordering::SeqCst) != v,
            Err(e) => {
                tracing::warn!(db = %self.path().display(), error = %e, "cannot read data_version");
                false
            }
        }
    }

    /// Whether anyone listens for this database's changes.
    pub fn has_subscribers(&self) -> bool {
        self.changes.receiver_count() > 0
    }

    /// Closes the store: stops and joins its background work, indexes what waits,
    /// checkpoints the WAL into the database file (so the file alone holds everything)
    /// and closes the connections once the last reference is gone, which the caller
    /// (the registry, shutdown) makes sure is this one.
    pub async fn close(self: Arc<Self>) {
        self.upkeep.stop.cancel();
        self.upkeep.tasks.close();
        self.upkeep.tasks.wait().await;
        let db = self.path().display().to_string();
        let finished = tokio::task::spawn_blocking(move || {
            if let Err(e) = self.update_search_index() {
                tracing::warn!(db = %self.path().display(), error = %e, "search index not updated at close");
            }
            self.checkpoint();
            if Arc::strong_count(&self) > 1 {
                tracing::warn!(db = %self.path().display(), "store closed while still referenced");
            }
        })
        .await;
        if finished.is_err() {
            tracing::error!(db, "closing the store panicked");
        }
    }

    /// Folds the WAL back into the main file and truncates it.
    pub fn checkpoint(&self) {
        let conn = self.writer.lock();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(db = %self.path().display(), error = %e, "WAL checkpoint failed");
        }
    }
}

/// A background checkpoint: `PASSIVE` passes, each copying what was committed while
/// the one before ran, each followed by an `fsync` of the database file, until a pass
/// finds only a few new frames. Returns whether the combiner should finish it (the WAL
/// is long, and the passes copied all they saw).
///
/// The `fsync`s are what makes the finishing step short. SQLite syncs the database file
/// only at the end of a checkpoint that reached the WAL's last frame, which under
/// steady writes is only the finishing one; that one then wrote back every page copied
/// since the WAL last started over (8 ms for scattered `add_observations`, every time).
/// Synced here, off the writers' path, the finishing step writes back only its own few.
fn checkpoint_in_passes(conn: &rusqlite::Connection) -> Result<bool, String> {
    let mut seen = 0;
    for _ in 0..CHECKPOINT_PASSES {
        let (busy, log, copied): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| e.to_string())?;
        if busy != 0 || copied < log {
            // Another checkpoint runs, or a reader still reads frames this one may not
            // overwrite: the WAL cannot start over now, and more passes would not help.
            return Ok(false);
        }
        sync_database_file(conn)?;
        // The WAL started over since the pass before when it is shorter now.
        let new = if log >= seen { log - seen } else { log };
        seen = log;
        if new < CHECKPOINT_SETTLED_FRAMES {
            break;
        }
    }
    Ok(seen >= FINISH_CHECKPOINT_FRAMES)
}

/// `fsync`s the database file through the connection's own open file (SQLite's VFS
/// `xSync`), so it is the very file SQLite copied pages into, whatever the path now holds.
fn sync_database_file(conn: &rusqlite::Connection) -> Result<(), String> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is an open connection this thread uses alone for the duration;
    // SQLITE_FCNTL_FILE_POINTER writes the main database's `sqlite3_file` (owned by the
    // connection, valid while it is open) into `file`, and `xSync` is that file's own
    // method, called as SQLite itself calls it, with no lock of SQLite's required.
    let rc = unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
            return Ok(()); // no file to sync (never for a file database)
        }
        match (*(*file).pMethods).xSync {
            Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
            None => ffi::SQLITE_OK,
        }
    };
    if rc == ffi::SQLITE_OK { Ok(()) } else { Err(format!("fsync of the database file failed (SQLite code {rc})")) }
}

fn committed(store: &Weak<Store>) -> Option<u64> {
    store.upgrade().map(|s| s.writer.committed.load(Ordering::SeqCst))
}
