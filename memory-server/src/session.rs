//! MCP sessions of the streamable HTTP transport: issued at `initialize`, looked up by
//! `Mcp-Session-Id`, ended by `DELETE` or by idle expiry. A session owns its GET stream's
//! sender and its resource subscriptions (one forwarding task per subscribed store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use mcp_wire::GRAPH_RESOURCE_URI;
use rand::RngCore;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::memory::{Memory, MemoryId};
use crate::protocol::notification;

/// Live sessions kept at most; beyond it the longest-idle one is dropped.
pub const MAX_SESSIONS: usize = 4096;
/// Messages a GET stream may fall behind before further ones are dropped.
const STREAM_BUFFER: usize = 64;

pub struct Session {
    id: String,
    protocol_version: &'static str,
    /// Milliseconds since the process's epoch, for idle expiry.
    last_seen: AtomicU64,
    /// A global activity counter, for least-recently-used eviction (milliseconds tie).
    last_activity: AtomicU64,
    open_streams: AtomicUsize,
    outbound: Mutex<Option<mpsc::Sender<Value>>>,
    subscriptions: Mutex<HashMap<MemoryId, JoinHandle<()>>>,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn protocol_version(&self) -> &'static str {
        self.protocol_version
    }

    /// Queues a server-to-client message on the GET stream, if one is open. Dropped
    /// when none is or when the client stopped reading (notifications are hints).
    pub fn push(&self, message: Value) {
        let guard = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.try_send(message);
        }
    }

    /// Opens the GET stream: later messages go to the returned receiver. A second
    /// stream replaces the first (which then ends).
    pub fn open_stream(self: &Arc<Self>) -> StreamGuard {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        *self.outbound.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        self.open_streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard { session: self.clone(), rx }
    }

    /// Sends `notifications/resources/updated` to this session after every change in
    /// `store`, until unsubscribed or the session ends.
    pub fn subscribe(self: &Arc<Self>, memory: &Memory) {
        let mut changes = memory.changes();
        memory.watch_outside_writes();
        let weak: Weak<Session> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                let Some(session) = weak.upgrade() else { return };
                session.push(notification("notifications/resources/updated", json!({ "uri": GRAPH_RESOURCE_URI })));
            }
        });
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = subs.insert(memory.id(), task) {
            old.abort();
        }
    }

    pub fn unsubscribe(&self, memory: &Memory) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = subs.remove(&memory.id()) {
            task.abort();
        }
    }

    /// Ends streams and subscriptions.
    fn close(&self) {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner()).take();
        for (_, task) in self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            task.abort();
        }
    }
}

/// The receiving end of a session's GET stream; counts as activity while it lives.
pub struct StreamGuard {
    session: Arc<Session>,
    pub rx: mpsc::Receiver<Value>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.session.open_streams.fetch_sub(1, Ordering::SeqCst);
        self.session.last_seen.store(now_ms(), Ordering::Relaxed);
    }
}

pub struct SessionRegistry {
    sessions: DashMap<String, Arc<Session>>,
    idle: Duration,
}

impl SessionRegistry {
    pub fn new(idle: Duration) -> Self {
        Self { sessions: DashMap::new(), idle }
    }

    pub fn create(&self, protocol_version: &'static str) -> Arc<Session> {
        if self.sessions.len() >= MAX_SESSIONS {
            self.evict_longest_idle();
        }
        let session = Arc::new(Session {
            id: new_session_id(),
            protocol_version,
            last_seen: AtomicU64::new(now_ms()),
            last_activity: AtomicU64::new(next_activity()),
            open_streams: AtomicUsize::new(0),
            outbound: Mutex::new(None),
            subscriptions: Mutex::new(HashMap::new()),
        });
        self.sessions.insert(session.id.clone(), session.clone());
        tracing::info!(session = %session.id, protocol_version, "session created");
        session
    }

    /// Looks a session up and marks it active.
    pub fn touch(&self, id: &str) -> Option<Arc<Session>> {
        let session = self.sessions.get(id)?.clone();
        session.last_seen.store(now_ms(), Ordering::Relaxed);
        session.last_activity.store(next_activity(), Ordering::Relaxed);
        Some(session)
    }

    pub fn remove(&self, id: &str) -> bool {
        match self.sessions.remove(id) {
            Some((_, session)) => {
                session.close();
                tracing::info!(session = id, "session deleted");
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drops sessions idle longer than the limit (a session with an open GET stream is
    /// never idle).
    pub fn expire_idle(&self) {
        let cutoff = now_ms().saturating_sub(self.idle.as_millis() as u64);
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|s| s.open_streams.load(Ordering::SeqCst) == 0 && s.last_seen.load(Ordering::Relaxed) < cutoff)
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            // Re-checked under the map's lock: a request or GET stream may have arrived
            // since the scan.
            let still_idle = |_: &String, s: &Arc<Session>| {
                s.open_streams.load(Ordering::SeqCst) == 0 && s.last_seen.load(Ordering::Relaxed) < cutoff
            };
            if let Some((_, session)) = self.sessions.remove_if(&id, still_idle) {
                session.close();
                tracing::info!(session = %id, "session expired");
            }
        }
    }

    /// How often [`expire_idle`](Self::expire_idle) should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
    }

    /// Closes every session (shutdown): GET streams end, so graceful shutdown can finish.
    pub fn close_all(&self) {
        for s in self.sessions.iter() {
            s.close();
        }
    }

    fn evict_longest_idle(&self) {
        let victim = self
            .sessions
            .iter()
            .min_by_key(|s| (s.open_streams.load(Ordering::SeqCst) > 0, s.last_activity.load(Ordering::Relaxed)))
            .map(|s| s.id.clone());
        if let Some(id) = victim
            && let Some((_, session)) = self.sessions.remove(&id)
        {
            session.close();
            tracing::info!(session = %id, "session evicted (session limit reached)");
        }
    }
}

/// 128 random bits as 32 hex digits: unguessable and visible ASCII.
fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn next_activity() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_visible_ascii() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| (0x21..=0x7e).contains(&c)));
    }

    #[tokio::test]
    async fn idle_sessions_expire_but_streaming_ones_stay() {
        let reg = SessionRegistry::new(Duration::from_millis(0));
        let idle = reg.create("2025-11-25");
        let streaming = reg.create("2025-11-25");
        let _guard = streaming.open_stream();
        std::thread::sleep(Duration::from_millis(5));
        reg.expire_idle();
        assert!(reg.touch(idle.id()).is_none());
        assert!(reg.touch(streaming.id()).is_some());
    }

    #[tokio::test]
    async fn session_count_is_bounded() {
        let reg = SessionRegistry::new(Duration::from_secs(3600));
        let first = reg.create("2025-11-25");
        for _ in 0..MAX_SESSIONS {
            reg.create("2025-11-25");
        }
        assert_eq!(reg.len(), MAX_SESSIONS);
        assert!(reg.touch(first.id()).is_none(), "the longest-idle session goes first");
    }
}
