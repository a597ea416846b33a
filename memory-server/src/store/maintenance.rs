//! Background work a store owns: WAL checkpoints off the writers' path, the search-index
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

pub(super) struct Maintenance {
    tasks: TaskTracker,
    /// Cancelled when the store closes: waiting tasks end at once.
    stop: CancellationToken,
    /// A background checkpoint is running (one at a time is plenty).
    checkpointing: Arc<AtomicBool>,
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
    /// SQLite's automatic checkpoint the unlucky commit does all that itself).
    pub(super) fn checkpoint_in_background(&self) {
        let running = self.upkeep.checkpointing.clone();
        if running.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.readers.pool_for_upkeep();
        let db = self.path().display().to_string();
        self.upkeep.spawn_blocking(move || {
            let done = pool.get().map_err(|e| e.to_string()).and_then(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(|e| e.to_string())
            });
            if let Err(error) = done {
                tracing::debug!(db, error, "background checkpoint did not run");
            }
            running.store(false, Ordering::SeqCst);
        });
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

fn committed(store: &Weak<Store>) -> Option<u64> {
    store.upgrade().map(|s| s.writer.committed.load(Ordering::SeqCst))
}
