//! The write path of a store: one writer connection fed by the group-commit queue
//! (`commit`; only one connection per process ever waits on SQLite's lock), small
//! writes committed at once when nothing else writes, and what follows every commit
//! (a check that the file is still ours, change notices, cache invalidation, and the
//! periodic checkpoint and index update handed to `maintenance`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::{BUSY_TIMEOUT, GraphError, Store, StoreError, commit, graph};

/// Rows of each kind one piece of background indexing takes at most: a writer that
/// arrives meanwhile waits a millisecond or two at worst. Indexing the backlog of 32
/// busy batches inside a writers' batch (hundreds of rows) stalled the writers behind
/// it for up to 10 ms.
const INDEX_CHUNK_ROWS: usize = 128;

/// Committed batches whose rows an idle moment waits for before indexing them: a piece
/// of indexing has a fixed cost (an FTS5 segment, a commit), and every segment it makes
/// is merged again later, so small pieces cost CPU twice. With pieces every 8 batches
/// (and 4-page merge steps) a C=8 create_entities load cost 169 µs of daemon CPU per
/// write; every 32 (and 16-page steps) 139 µs, with a lower p50 and maximum and the
/// same p99 (bench harness, interleaved runs, 2026-12-07).
pub(super) const BATCHES_PER_IDLE_INDEX: u32 = 32;

/// Pages of segment merging one idle step does at most (see
/// `graph::merge_search_index_step`). A writer arriving during a step waits for it
/// (steps of 16 pages took 1 ms at the median and 4 ms at p99 under a C=8 write load,
/// steps of 4 pages 0.6 and 1.7 ms), but each step also re-reads where the last one
/// stopped: with 4-page steps (and pieces every 8 batches) merging took 1.7 times the
/// CPU per write that FTS5's automatic merging had taken under the same load.
const MERGE_STEP_PAGES: u32 = 16;

/// Committed write batches without an idle moment after which the combiner queues a
/// piece of indexing anyway (writers that never pause), so the rows waiting for the
/// next search stay few (a search updates the whole index first when any wait).
pub(super) const BATCHES_PER_INDEX_UPDATE: u32 = 32;

/// Committed write batches after which remembered trigram counts are forgotten, so
/// search plans follow a graph that grows or changes.
const BATCHES_PER_RECOUNT: u32 = 1024;

/// Committed write batches between two background checkpoints, and the least time
/// between two: a checkpoint ends in `fsync`s, and one every few batches of a lone
/// writer (hundreds a second) cost a sixth of its rate; one every 32 batches of a busy
/// C=8 load keeps each small (a checkpoint of 256 batches' pages doubled the write tail).
const BATCHES_PER_CHECKPOINT: u32 = 32;
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// The writer's own automatic checkpoint, a backstop should the background one fall
/// behind (SQLite's default is 1,000 pages).
pub(super) const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How many times one batch follows a database file that keeps being deleted under it
/// before its writes fail instead.
const MAX_REOPENS_PER_BATCH: u32 = 3;

pub(super) struct Writer {
    conn: Mutex<Connection>,
    /// Writes waiting for a batch (see `commit`).
    queue: Mutex<commit::Queue>,
    /// Committed batches that changed the graph, ever: the idle index update watches it.
    pub(super) committed: AtomicU64,
    since_checkpoint: AtomicU32,
    since_index: AtomicU32,
    since_recount: AtomicU32,
    /// Batches committed since the search index last caught up: a rough count of the
    /// rows waiting for it (reset when a piece of indexing finds the backlog gone).
    unindexed: AtomicU32,
    /// The search index may hold segments worth merging (set by indexing, cleared when
    /// a merge step finds nothing to do).
    merge_behind: AtomicBool,
}

/// Work the combiner does when the writers' queue is empty.
#[derive(Clone, Copy)]
enum IdleWork {
    Index,
    Merge,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Writer {
        Writer {
            conn: Mutex::new(conn),
            queue: Mutex::new(commit::Queue::default()),
            committed: AtomicU64::new(0),
            since_checkpoint: AtomicU32::new(0),
            since_index: AtomicU32::new(0),
            since_recount: AtomicU32::new(0),
            unindexed: AtomicU32::new(0),
            merge_behind: AtomicBool::new(true),
        }
    }

    /// The writer connection (a poisoned lock is safe to reuse: a panic while holding
    /// it cannot leave a transaction open, the `Transaction` guard rolls back).
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(super) fn is_busy(&self) -> bool {
        self.conn.try_lock().is_err()
    }
}

/// Counts one event on `counter`; true every `every`-th time.
fn tick(counter: &AtomicU32, every: u32) -> bool {
    if counter.fetch_add(1, Ordering::Relaxed) + 1 >= every {
        counter.store(0, Ordering::Relaxed);
        return true;
    }
    false
}

impl Store {
    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and returns once that transaction
    /// has committed. Concurrent writes share transactions (see `commit`): `f` may run
    /// more than once (when another process holds the lock past the busy timeout, a
    /// write sharing its transaction failed, or the file was replaced under us), so it
    /// must only touch the transaction. Subscribers are told when rows changed. Blocks;
    /// from async code use [`Store::write_async`].
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T, GraphError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, slot, outcome) = Self::job(f, None);
        if commit::Queue::push(&self.writer.queue, job) {
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
        let queue = &self.writer.queue;
        if now && commit::Queue::claim_idle(queue) {
            if let Some(job) = self.run_now(job) {
                commit::Queue::push(queue, job); // we hold the turn: no second combiner
            }
            if commit::Queue::release(queue) {
                self.combine_in_background();
            }
        } else if commit::Queue::push(queue, job) {
            self.combine_in_background();
        }
        let outcome = outcome.await;
        self.index_when_idle();
        self.write_outcome(outcome, &slot)
    }

    /// Runs `job` on this thread for the holder of an idle queue's turn, without waiting
    /// for any lock; gives the job back when it must be queued instead (the writer
    /// connection in use by an import or the outside-write poll, another process
    /// holding the database lock, or a file replaced under us, which the combiner
    /// reopens off this thread).
    fn run_now(&self, job: commit::Job) -> Option<commit::Job> {
        // As in `combine`: a panic must not leave the turn taken forever.
        let _unwinding = commit::ReleaseOnPanic(&self.writer.queue);
        let Ok(mut conn) = self.writer.conn.try_lock() else { return Some(job) };
        let ran = match conn.busy_timeout(Duration::ZERO) {
            Ok(()) => commit::run_alone(&mut conn, job, &|| self.file_is_current()),
            Err(_) => Err(job),
        };
        if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(db = %self.path().display(), error = %e, "cannot restore the busy timeout");
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

    /// Waits (a bounded while) until no combiner's turn is taken.
    #[cfg(test)]
    pub(super) fn wait_for_the_combiner(&self) {
        for _ in 0..10_000 {
            if !commit::Queue::combining(&self.writer.queue) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the combiner's turn never ended");
    }

    /// Runs the combiner on a blocking thread the store tracks (closing the store
    /// waits for it); its writers are answered through their jobs.
    pub(super) fn combine_in_background(self: &Arc<Self>) {
        let store = self.clone();
        self.upkeep.spawn_blocking(move || store.combine());
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

    /// Runs queued batches until the queue is empty (see `commit`). In the moments the
    /// queue is empty it keeps the search index current a bounded step at a time
    /// (indexing written rows, then merging segments), so writers arriving meanwhile
    /// wait for one small step at most and searches rarely find work left.
    fn combine(&self) {
        let _unwinding = commit::ReleaseOnPanic(&self.writer.queue);
        // One step of upkeep per turn: a turn that kept doing upkeep while a lone writer
        // kept coming back would hold every write off the fast path (`run_now`) and make
        // each wait for a step (create_entities at C=1 lost two fifths of its rate).
        let mut upkeep_done = false;
        loop {
            if self.upkeep.checkpoint_to_finish.load(Ordering::SeqCst) {
                // Between two batches, as soon as the background passes end: it takes
                // what was committed since, so the sooner the shorter.
                self.finish_checkpoint();
            }
            let idle = if upkeep_done { None } else { self.idle_work() };
            let batch = commit::Queue::take_batch(&self.writer.queue, idle.is_some());
            if batch.is_empty() {
                match idle {
                    Some(work) => self.run_idle_work(work),
                    None => return,
                }
                upkeep_done = true;
                continue;
            }
            let mut conn = self.writer.lock();
            let mut reopens = 0;
            let changed = commit::run_batch(&mut conn, batch, &mut |conn| {
                if self.file_is_current() {
                    return commit::FileCheck::Current;
                }
                reopens += 1;
                if reopens > MAX_REOPENS_PER_BATCH {
                    return commit::FileCheck::Lost("it keeps being deleted".into());
                }
                match self.reopen(conn) {
                    Ok(()) => commit::FileCheck::Reopened,
                    Err(e) => {
                        tracing::error!(db = %self.path().display(), error = %e, "the database file went away");
                        commit::FileCheck::Lost(e.to_string())
                    }
                }
            });
            drop(conn);
            if changed {
                self.after_commit();
            }
        }
    }

    fn idle_work(&self) -> Option<IdleWork> {
        if self.writer.unindexed.load(Ordering::SeqCst) >= BATCHES_PER_IDLE_INDEX {
            Some(IdleWork::Index)
        } else if self.writer.merge_behind.load(Ordering::SeqCst) {
            Some(IdleWork::Merge)
        } else {
            None
        }
    }

    /// One bounded step of search-index upkeep, as its own transaction.
    fn run_idle_work(&self, work: IdleWork) {
        self.writer.since_index.store(0, Ordering::Relaxed);
        let (job, amount) = match work {
            IdleWork::Index => index_chunk_job(),
            IdleWork::Merge => merge_step_job(),
        };
        let mut conn = self.writer.lock();
        commit::run_batch(&mut conn, vec![job], &mut |_| commit::FileCheck::Current);
        drop(conn);
        let amount = amount.load(Ordering::SeqCst);
        match work {
            IdleWork::Index => {
                if amount < INDEX_CHUNK_ROWS {
                    self.writer.unindexed.store(0, Ordering::SeqCst);
                }
                if amount > 0 {
                    self.writer.merge_behind.store(true, Ordering::SeqCst);
                }
            }
            IdleWork::Merge if amount == 0 => self.writer.merge_behind.store(false, Ordering::SeqCst),
            IdleWork::Merge => {}
        }
    }

    /// Bookkeeping after a committed batch that changed the graph, by whoever holds the
    /// combiner's turn: notices, cached answers, the periodic checkpoint and index
    /// update (queued for the holder of the turn to run) and the search statistics.
    fn after_commit(&self) {
        self.writer.committed.fetch_add(1, Ordering::SeqCst);
        self.writer.unindexed.fetch_add(1, Ordering::SeqCst);
        self.readers.forget_cached();
        self.announce();
        if self.writer.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1 >= BATCHES_PER_CHECKPOINT
            && self.upkeep.checkpoint_due(CHECKPOINT_EVERY)
        {
            self.writer.since_checkpoint.store(0, Ordering::Relaxed);
            self.checkpoint_in_background();
        }
        if tick(&self.writer.since_index, BATCHES_PER_INDEX_UPDATE) {
            // Writers never paused for 32 batches. Nobody waits for this piece: the
            // writers of this batch have their answers, and the holder of the turn runs
            // it with whatever is queued next.
            let (job, _taken) = index_chunk_job();
            commit::Queue::push(&self.writer.queue, job);
            // That piece takes the backlog (up to 128 rows of each kind, about what 32
            // batches write), so the one step the turn has room for should merge the
            // segment it makes. Left counted, that step was always another piece of indexing and a
            // lone writer's index was never merged but by FTS5's crisis merge, inside
            // one of its writes (60–110 ms).
            self.writer.unindexed.store(0, Ordering::SeqCst);
            self.writer.merge_behind.store(true, Ordering::SeqCst);
        }
        if tick(&self.writer.since_recount, BATCHES_PER_RECOUNT) {
            self.readers.trigram_counts.forget();
        }
    }

    fn write_outcome<T>(
        &self,
        outcome: Result<Result<(), commit::Failure>, tokio::sync::oneshot::error::RecvError>,
        slot: &Mutex<Option<T>>,
    ) -> Result<T, StoreError> {
        let path = || self.path().to_owned();
        match outcome {
            // The job ran and committed, so its value is in the slot.
            Ok(Ok(())) => {
                slot.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or(StoreError::NotRun { path: path() })
            }
            // The combiner drops a job unfinished only if it panicked.
            Err(_) => Err(StoreError::NotRun { path: path() }),
            Ok(Err(commit::Failure::Cancelled)) => {
                tracing::info!(db = %self.path().display(), "write cancelled before commit");
                Err(StoreError::Cancelled { path: path() })
            }
            Ok(Err(commit::Failure::Locked)) => Err(StoreError::Locked { path: path() }),
            Ok(Err(commit::Failure::Lost(reason))) => Err(StoreError::Lost { path: path(), reason }),
            Ok(Err(commit::Failure::Graph(GraphError::Sqlite(source)))) => {
                Err(StoreError::Sqlite { path: path(), source })
            }
            Ok(Err(commit::Failure::Graph(e))) => Err(StoreError::Graph(e)),
        }
    }

    /// Indexes for search the rows written since the index was last brought up to date
    /// (a derived write: nothing when none wait, and no change notice). Searches call this
    /// first when `graph::search_index_is_stale` says rows wait. Blocks.
    pub fn update_search_index(&self) -> Result<(), StoreError> {
        let (job, outcome) = index_update_job();
        if commit::Queue::push(&self.writer.queue, job) {
            self.combine();
        }
        // The job returns nothing: its slot holds the unit value from the start.
        self.write_outcome(outcome.blocking_recv(), &Mutex::new(Some(())))
    }

    /// Queues a search-index update without waiting for it (the idle index update).
    pub(super) fn queue_index_update(self: &Arc<Self>) -> tokio::sync::oneshot::Receiver<Result<(), commit::Failure>> {
        let (job, outcome) = index_update_job();
        if commit::Queue::push(&self.writer.queue, job) {
            self.combine_in_background();
        }
        outcome
    }

    /// Hands the writer connection to `f` (for work that manages its own transaction,
    /// like a streamed import). Blocks while another write is in progress.
    pub fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut conn = self.writer.lock();
        let before = conn.total_changes();
        let value = f(&mut conn);
        if conn.total_changes() != before {
            self.readers.forget_cached();
            self.announce();
        }
        value
    }
}

/// A search-index update as a derived job (see `commit::Job::derived`).
fn index_update_job() -> (commit::Job, tokio::sync::oneshot::Receiver<Result<(), commit::Failure>>) {
    commit::Job::derived(Box::new(update_search_index))
}

/// A bounded merge step as a derived job, and where it leaves 1 when it found work.
fn merge_step_job() -> (commit::Job, Arc<AtomicUsize>) {
    let worked = Arc::new(AtomicUsize::new(0));
    let out = worked.clone();
    let work = Box::new(move |conn: &Connection| {
        out.store(usize::from(graph::merge_search_index_step(conn, MERGE_STEP_PAGES)?), Ordering::SeqCst);
        Ok(())
    });
    (commit::Job::derived(work).0, worked)
}

/// A bounded piece of indexing as a derived job, and where it leaves how many rows it took.
fn index_chunk_job() -> (commit::Job, Arc<AtomicUsize>) {
    let taken = Arc::new(AtomicUsize::new(0));
    let out = taken.clone();
    let work = Box::new(move |conn: &Connection| {
        out.store(graph::repair_search_index_chunk(conn, INDEX_CHUNK_ROWS)?, Ordering::SeqCst);
        Ok(())
    });
    (commit::Job::derived(work).0, taken)
}

/// The combiner's own search-index update: skips the write when nothing waits.
fn update_search_index(conn: &Connection) -> Result<(), GraphError> {
    if graph::search_index_is_stale(conn)? {
        graph::repair_search_index(conn)?;
    }
    Ok(())
}
