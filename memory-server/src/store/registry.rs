//! The open stores and their lifecycle. A store opens once however many requests race
//! for it (they wait on one `OnceCell`); a failed open is forgotten, so the next
//! request tries again; at most `max_open` stay open (the least recently used one that
//! nobody is using is closed to make room) and one unused for `idle` is closed, its
//! background work joined and its WAL checkpointed. Change channels live here, per
//! path, so subscribers keep hearing about a project across its store's close and
//! reopen. The registry also closes every store at shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OnceCell, broadcast};
use tokio_util::task::TaskTracker;

use super::{ChangeHook, DbFile, Store, StoreError};

/// How many stores may be open and how long an unused one stays open.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_open: usize,
    pub idle: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { max_open: 64, idle: Duration::from_secs(600) }
    }
}

pub struct StoreRegistry {
    slots: DashMap<PathBuf, Arc<Slot>>,
    channels: Arc<DashMap<PathBuf, broadcast::Sender<()>>>,
    limits: StoreLimits,
    /// Stores open, being opened or being closed: what `max_open` bounds (each holds
    /// files until its close ends).
    occupied: Arc<AtomicUsize>,
    /// Closes running at once at most.
    close_permits: Arc<tokio::sync::Semaphore>,
    /// Stores being closed in the background (shutdown waits for them).
    closing: TaskTracker,
    epoch: Instant,
    /// Given to every store opened (see [`ChangeHook`]).
    on_change: Option<ChangeHook>,
}

struct Slot {
    store: OnceCell<Arc<Store>>,
    /// Milliseconds since the registry's epoch at the last use, for idle closing.
    last_used: AtomicU64,
    /// A global use counter, for least-recently-used order (milliseconds tie).
    recency: AtomicU64,
}

static USES: AtomicU64 = AtomicU64::new(0);

/// Stores closed at the same time at most.
const CONCURRENT_CLOSES: usize = 4;

/// How long a request waits for a place among the open stores when all are in use.
const ROOM_WAIT: Duration = Duration::from_secs(30);

impl Default for StoreRegistry {
    fn default() -> Self {
        Self::new(StoreLimits::default())
    }
}

impl StoreRegistry {
    pub fn new(limits: StoreLimits) -> Self {
        StoreRegistry {
            slots: DashMap::new(),
            channels: Arc::new(DashMap::new()),
            limits: StoreLimits { max_open: limits.max_open.max(1), ..limits },
            occupied: Arc::new(AtomicUsize::new(0)),
            close_permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CLOSES)),
            closing: TaskTracker::new(),
            epoch: Instant::now(),
            on_change: None,
        }
    }

    /// A registry whose stores also tell `on_change` of every change they announce.
    pub fn with_change_hook(limits: StoreLimits, on_change: ChangeHook) -> Self {
        StoreRegistry { on_change: Some(on_change), ..Self::new(limits) }
    }

    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The open store for `file`, opening (and migrating) it on first use.
    pub async fn get(&self, file: &DbFile) -> Result<Arc<Store>, StoreError> {
        if let Some(slot) = self.slots.get(file.path())
            && let Some(store) = slot.store.get()
        {
            self.touch(&slot);
            return Ok(store.clone());
        }
        // Clone the slot out so no DashMap shard lock is held across the await.
        let slot = self.slots.entry(file.path().to_owned()).or_insert_with(Slot::new).clone();
        self.touch(&slot);
        let opened = slot
            .store
            .get_or_try_init(|| async {
                self.make_room(file).await?;
                let changes = self.channel(file);
                let to_open = file.clone();
                let on_change = self.on_change.clone();
                let opened = tokio::task::spawn_blocking(move || Store::open_with(&to_open, changes, on_change))
                    .await
                    .map_err(|e| StoreError::Io { path: file.path().to_owned(), source: std::io::Error::other(e) })
                    .and_then(|r| r);
                match opened {
                    Ok(store) => {
                        tracing::info!(db = %file.path().display(), "store opened");
                        let store = Arc::new(store);
                        if store.has_subscribers() {
                            store.watch_outside_writes();
                        }
                        Ok(store)
                    }
                    Err(e) => {
                        self.occupied.fetch_sub(1, Ordering::SeqCst);
                        Err(e)
                    }
                }
            })
            .await
            .cloned();
        if opened.is_err() {
            // Forget the failure, so the next request tries again (the cause may be fixed).
            drop(slot);
            self.slots.remove_if(file.path(), |_, s| Arc::strong_count(s) == 1 && !s.store.initialized());
        }
        opened
    }

    /// The store of `path` when it is open now (not opening it; a use like [`Self::get`]).
    pub fn get_open(&self, path: &std::path::Path) -> Option<Arc<Store>> {
        let slot = self.slots.get(path)?;
        let store = slot.store.get()?.clone();
        self.touch(&slot);
        Some(store)
    }

    /// A receiver of `file`'s change notices, whether or not its store is open.
    pub fn subscribe(&self, file: &DbFile) -> broadcast::Receiver<()> {
        self.channel(file).subscribe()
    }

    fn channel(&self, file: &DbFile) -> broadcast::Sender<()> {
        self.channels.entry(file.path().to_owned()).or_insert_with(|| broadcast::channel(16).0).clone()
    }

    fn touch(&self, slot: &Slot) {
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        slot.recency.store(USES.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a place for a store about to open. When all are taken, closes the least
    /// recently used store nobody is using and waits for that close (its files released)
    /// before taking its place, so the files held stay bounded however fast projects
    /// churn. When every open store is in use (requests in flight), waits for one to be
    /// released. A request that cannot get a place within [`ROOM_WAIT`] fails with an
    /// error naming the limit.
    async fn make_room(&self, file: &DbFile) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let n = self.occupied.load(Ordering::SeqCst);
            if n < self.limits.max_open {
                if self.occupied.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return Ok(());
                }
                continue;
            }
            if let Some((store, path)) = self.evict_least_recently_used() {
                self.close_then_forget_channel(store, path).await;
                continue;
            }
            if started.elapsed() > ROOM_WAIT {
                return Err(StoreError::Busy { path: file.path().to_owned(), max_open: self.limits.max_open });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Takes out the least recently used store that nobody is using, preferring one
    /// without subscribers, for the caller to close.
    fn evict_least_recently_used(&self) -> Option<(Arc<Store>, PathBuf)> {
        let victim = self
            .slots
            .iter()
            .filter(|e| unused(e.value()))
            .min_by_key(|e| (self.subscribed(e.key()), e.value().recency.load(Ordering::Relaxed)))
            .map(|e| e.key().clone())?;
        self.evict(&victim, |_| true)
    }

    /// Closes the stores unused for longer than the idle limit (not those with
    /// subscribers: they count as used). Called periodically.
    pub fn close_idle(&self) {
        let cutoff = self.now_ms().saturating_sub(self.limits.idle.as_millis() as u64);
        let idle: Vec<PathBuf> = self
            .slots
            .iter()
            .filter(|e| e.value().last_used.load(Ordering::Relaxed) < cutoff)
            .map(|e| e.key().clone())
            .collect();
        for path in idle {
            if !self.subscribed(&path)
                && let Some((store, path)) = self.evict(&path, |slot| slot.last_used.load(Ordering::Relaxed) < cutoff)
            {
                self.closing.spawn(self.close_then_forget_channel(store, path));
            }
        }
    }

    /// Takes `path`'s store out if nobody uses it and `also` holds (both checked under
    /// the map's lock, so no request can pick it up meanwhile), for the caller to close.
    fn evict(&self, path: &PathBuf, also: impl Fn(&Slot) -> bool) -> Option<(Arc<Store>, PathBuf)> {
        let (path, slot) = self.slots.remove_if(path, |_, s| unused(s) && also(s))?;
        let store = slot.store.get().cloned()?;
        tracing::info!(db = %path.display(), "store closed (unused)");
        Some((store, path))
    }

    /// Closes `store` (a few at a time: each ends in a checkpoint's `fsync`, and closes
    /// of many projects at once would each hold a blocking thread), then gives its place
    /// back and forgets its change channel unless someone still needs it.
    fn close_then_forget_channel(&self, store: Arc<Store>, path: PathBuf) -> impl Future<Output = ()> + use<> {
        let channels = self.channels.clone();
        let permits = self.close_permits.clone();
        let occupied = self.occupied.clone();
        async move {
            let permit = permits.acquire_owned().await;
            store.close().await;
            drop(permit);
            occupied.fetch_sub(1, Ordering::SeqCst);
            // Kept while anyone listens, or while a store opened again since holds it
            // (checked under the map's lock, which that store took its copy under).
            channels.remove_if(&path, |_, tx| tx.receiver_count() == 0 && tx.strong_count() == 1);
        }
    }

    fn subscribed(&self, path: &PathBuf) -> bool {
        self.channels.get(path).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Stores open, being opened or being closed (what `--max-open-stores` bounds).
    pub fn open_count(&self) -> usize {
        self.occupied.load(Ordering::SeqCst)
    }

    /// Closes every store and waits for all closes (shutdown): background work joined,
    /// WAL checkpointed. Stores still referenced by a request that outlived the drain
    /// are closed as well; their connections go when that request does.
    pub async fn close_all(&self) {
        let paths: Vec<PathBuf> = self.slots.iter().map(|e| e.key().clone()).collect();
        for path in paths {
            if let Some((path, slot)) = self.slots.remove(&path)
                && let Some(store) = slot.store.get().cloned()
            {
                self.closing.spawn(self.close_then_forget_channel(store, path));
            }
        }
        self.closing.close();
        self.closing.wait().await;
    }
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot { store: OnceCell::new(), last_used: AtomicU64::new(0), recency: AtomicU64::new(0) })
    }
}

/// An open store that only the registry holds: no request has it or is waiting for it.
fn unused(slot: &Arc<Slot>) -> bool {
    Arc::strong_count(slot) == 1 && slot.store.get().is_some_and(|store| Arc::strong_count(store) == 1)
}
