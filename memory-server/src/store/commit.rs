//! Group commit: writers queue their work; the first to find no batch running becomes
//! the combiner and runs everything queued, a batch per `BEGIN IMMEDIATE` transaction
//! and commit, until the queue is empty. Alone, a write is its own batch; under load,
//! one WAL append and one search-index flush serve many writes, and waiting writers
//! sleep on their own answer rather than queueing for a lock. Every write still
//! answers only after the commit that holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::oneshot;

use super::GraphError;

/// How long one write waits for another process's lock before giving up. SQLite's own
/// busy handler covers 5 s (`busy_timeout`); we retry `BEGIN IMMEDIATE` beyond that
/// so a burst of writers in several processes never surfaces `SQLITE_BUSY`.
pub(super) const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// Most writes one transaction takes, so one batch never holds the lock for long.
const MAX_BATCH: usize = 64;

type Work = Box<dyn FnMut(&Connection) -> Result<(), GraphError> + Send>;

/// One queued write: its work, its request's cancellation flag, and where its outcome
/// goes once a batch has run it.
pub(super) struct Job {
    work: Work,
    cancel: Option<Arc<AtomicBool>>,
    done: Option<oneshot::Sender<Result<(), Failure>>>,
    /// The work only brings derived data (the search index) up to date: a batch of such
    /// jobs changes nothing a client can read, so nobody is told about it.
    derived: bool,
}

/// The writes waiting for a batch, and whether a combiner is running (both under one
/// lock, so a write never waits for a combiner that has already looked for the last time).
#[derive(Default)]
pub(super) struct Queue {
    jobs: Vec<Job>,
    combining: bool,
}

impl Queue {
    /// Queues `job`; returns true when the caller must combine (nobody else is).
    pub(super) fn push(queue: &Mutex<Queue>, job: Job) -> bool {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        q.jobs.push(job);
        !std::mem::replace(&mut q.combining, true)
    }

    /// Takes the combiner's turn when none runs and nothing waits, so a write can run at
    /// once on the caller's thread (see [`run_alone`]); end it with [`Queue::release`].
    pub(super) fn claim_idle(queue: &Mutex<Queue>) -> bool {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.combining || !q.jobs.is_empty() {
            return false;
        }
        q.combining = true;
        true
    }

    /// Ends a turn taken by [`Queue::claim_idle`]; true when writes were queued meanwhile,
    /// which the caller must then combine (the turn stays taken for that).
    pub(super) fn release(queue: &Mutex<Queue>) -> bool {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.jobs.is_empty() {
            q.combining = false;
            return false;
        }
        true
    }

    /// Whether a combiner's turn is taken (tests wait for the background one to end).
    #[cfg(test)]
    pub(super) fn combining(queue: &Mutex<Queue>) -> bool {
        queue.lock().unwrap_or_else(|p| p.into_inner()).combining
    }

    /// Up to [`MAX_BATCH`] queued jobs, oldest first. An empty batch ends the combiner's
    /// turn, unless `keep_turn` (the combiner has work of its own for the idle moment:
    /// writers arriving meanwhile queue for it rather than start a combiner).
    pub(super) fn take_batch(queue: &Mutex<Queue>, keep_turn: bool) -> Vec<Job> {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.jobs.len().min(MAX_BATCH);
        if n == 0 && !keep_turn {
            q.combining = false;
        }
        q.jobs.drain(..n).collect()
    }
}

/// Why a job did not commit, turned into a [`StoreError`] by the waiting writer.
pub(super) enum Failure {
    Graph(GraphError),
    Cancelled,
    Locked,
    /// The database file went away under the commit and no fresh one could be opened.
    Lost(String),
}

/// What the store found after a commit, before anyone is told it succeeded.
pub(super) enum FileCheck {
    /// The file committed to is still the one at the database's path.
    Current,
    /// It was not (deleted or replaced): the connection now holds the file at the path,
    /// and the batch must run again there.
    Reopened,
    /// It was not, and no file could be opened in its place (the reason).
    Lost(String),
}

impl Job {
    pub(super) fn new(work: Work, cancel: Option<Arc<AtomicBool>>) -> (Job, oneshot::Receiver<Result<(), Failure>>) {
        let (done, outcome) = oneshot::channel();
        (Job { work, cancel, done: Some(done), derived: false }, outcome)
    }

    /// A job whose work only updates derived data (see the `derived` field).
    pub(super) fn derived(work: Work) -> (Job, oneshot::Receiver<Result<(), Failure>>) {
        let (job, outcome) = Job::new(work, None);
        (Job { derived: true, ..job }, outcome)
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    fn finish(mut self, outcome: Result<(), Failure>) {
        if let Some(done) = self.done.take() {
            // A writer that went away (its request was dropped) no longer listens.
            let _ = done.send(outcome);
        }
    }

    fn run(&mut self, conn: &Connection) -> Result<(), GraphError> {
        (self.work)(conn)
    }
}

/// Should a combiner panic (a bug), the queue must not stay marked as combined forever:
/// the queued writes are dropped (their writers get an error) and the next write
/// starts a new combiner.
pub(super) struct ReleaseOnPanic<'a>(pub(super) &'a Mutex<Queue>);

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
            q.jobs.clear();
            q.combining = false;
        }
    }
}

/// Runs `batch` on the writer connection and finishes every job in it. A job that fails
/// (an unknown entity, an SQL error) or is cancelled before the commit is left out: the
/// transaction is rolled back and the others run again without it, so one bad write
/// never takes its neighbours down. After the commit `check` confirms that the file is
/// still the database's (else it reopens it, and the batch runs again in the new file)
/// before any job is finished. Returns whether a change that clients can read was
/// committed (not when only derived jobs ran).
pub(super) fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    check: &mut dyn FnMut(&mut Connection) -> FileCheck,
) -> bool {
    let deadline = Instant::now() + WRITE_DEADLINE;
    let (cancelled, mut batch): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(Job::cancelled);
    for job in cancelled {
        job.finish(Err(Failure::Cancelled));
    }
    loop {
        if batch.is_empty() {
            return false;
        }
        let before = conn.total_changes();
        match attempt(conn, &mut batch) {
            Attempt::Committed => {
                let changed = conn.total_changes() != before && batch.iter().any(|job| !job.derived);
                match check(conn) {
                    FileCheck::Current => {}
                    FileCheck::Reopened => continue,
                    FileCheck::Lost(reason) => {
                        for job in batch {
                            job.finish(Err(Failure::Lost(reason.clone())));
                        }
                        return false;
                    }
                }
                for job in batch {
                    job.finish(Ok(()));
                }
                return changed;
            }
            Attempt::LeaveOut(i, failure) => {
                batch.remove(i).finish(Err(failure));
            }
            Attempt::Busy if Instant::now() < deadline => {
                tracing::debug!("write lock busy, retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            Attempt::Busy => {
                for job in batch {
                    job.finish(Err(Failure::Locked));
                }
                return false;
            }
            Attempt::Failed(e) => {
                // The transaction itself failed (BEGIN or COMMIT): nothing was written.
                let message = e.to_string();
                for job in batch {
                    job.finish(Err(Failure::Graph(GraphError::Sqlite(same_error(&e, &message)))));
                }
                return false;
            }
        }
    }
}

/// Runs `job` alone, once, as its own transaction, for a caller holding the combiner's
/// turn. `Err(job)` when the lock is busy (another process writes) or `current` says
/// the file committed to is no longer the database's: the job is not finished, and the
/// caller queues it instead of waiting or reopening here. Otherwise the job is
/// finished; the result says whether a change clients can read was committed.
pub(super) fn run_alone(conn: &mut Connection, job: Job, current: &dyn Fn() -> bool) -> Result<bool, Job> {
    let before = conn.total_changes();
    let mut batch = [job];
    let attempt = attempt(conn, &mut batch);
    let [job] = batch;
    match attempt {
        Attempt::Committed if !current() => Err(job),
        Attempt::Committed => {
            let changed = conn.total_changes() != before && !job.derived;
            job.finish(Ok(()));
            Ok(changed)
        }
        Attempt::LeaveOut(_, failure) => {
            job.finish(Err(failure));
            Ok(false)
        }
        Attempt::Busy => Err(job),
        Attempt::Failed(e) => {
            job.finish(Err(Failure::Graph(GraphError::Sqlite(e))));
            Ok(false)
        }
    }
}

enum Attempt {
    Committed,
    /// Job `i` failed or was cancelled; the transaction was rolled back.
    LeaveOut(usize, Failure),
    Busy,
    Failed(rusqlite::Error),
}

fn attempt(conn: &mut Connection, batch: &mut [Job]) -> Attempt {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) if is_busy(&e) => return Attempt::Busy,
        Err(e) => return Attempt::Failed(e),
    };
    for (i, job) in batch.iter_mut().enumerate() {
        if job.cancelled() {
            return Attempt::LeaveOut(i, Failure::Cancelled); // dropping `tx` rolls back
        }
        match job.run(&tx) {
            Ok(()) => {}
            Err(GraphError::Sqlite(e)) if is_busy(&e) => return Attempt::Busy,
            Err(e) => return Attempt::LeaveOut(i, Failure::Graph(e)),
        }
    }
    // The last chance to honour a cancellation: after this the write is durable.
    if let Some(i) = batch.iter().position(|job| job.cancelled()) {
        return Attempt::LeaveOut(i, Failure::Cancelled);
    }
    match tx.commit() {
        Ok(()) => Attempt::Committed,
        Err(e) if is_busy(&e) => Attempt::Busy,
        Err(e) => Attempt::Failed(e),
    }
}

/// rusqlite errors are not `Clone`; every job of a failed transaction gets the same
/// code and message.
fn same_error(e: &rusqlite::Error, message: &str) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, _) => rusqlite::Error::SqliteFailure(*code, Some(message.to_owned())),
        _ => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(message.to_owned()),
        ),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use crate::store::model::{Entity, ObservationAddition};
    use crate::store::{GraphError, Store, StoreError, graph};

    /// Writers racing on one store: each gets its own answer, a failing write is left
    /// out of the transaction it shared, and every acknowledged write is there.
    #[test]
    fn concurrent_writes_share_transactions_but_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("m.db")).unwrap());
        const THREADS: usize = 8;
        const WRITES: usize = 40;
        let barrier = std::sync::Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..WRITES {
                        let name = format!("e-{t}-{i}");
                        if i % 5 == 4 {
                            // Adds to an entity of its own, then fails on a missing one.
                            let additions = vec![
                                ObservationAddition { entity_name: format!("e-{t}-0"), contents: vec![name.clone()] },
                                ObservationAddition { entity_name: "missing".into(), contents: vec!["x".into()] },
                            ];
                            let err = store.write(move |c| graph::add_observations(c, &additions)).unwrap_err();
                            assert!(
                                matches!(err, StoreError::Graph(GraphError::EntityNotFound(ref n)) if n == "missing"),
                                "{err}"
                            );
                        } else {
                            let entity = Entity { name: name.clone(), entity_type: "t".into(), observations: vec![] };
                            let created =
                                store.write(move |c| graph::create_entities(c, std::slice::from_ref(&entity))).unwrap();
                            assert_eq!(created.len(), 1, "{name} answered with its own result");
                            assert_eq!(created[0].name, name);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let g = store.read(graph::read_graph).unwrap();
        assert_eq!(g.entities.len(), THREADS * WRITES * 4 / 5);
        assert!(g.entities.iter().all(|e| e.observations.is_empty()), "nothing of a failed write was kept");
    }
}
