//! Open event streams (a session's `GET /mcp` stream, `subscriptions/listen` streams and
//! the graph browser's change streams) counted in one place, so that `--max-streams` bounds them together (SPEC 2.10). An open
//! stream holds a [`StreamPermit`]; the stream's end, however it comes (the client goes
//! away, the session is deleted, the daemon shuts down), drops it and frees the place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A session's `GET /mcp` stream.
    Session,
    /// A `subscriptions/listen` stream (2026-07-28).
    Listen,
    /// A graph browser page's stream of changes (`/ui/api/.../events`).
    Browser,
}

/// The open event streams of one server.
#[derive(Debug, Default)]
pub struct EventStreams {
    open: AtomicUsize,
    listens: AtomicUsize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many open event streams: at most {max} (--max-streams)")]
pub struct TooManyStreams {
    pub max: usize,
}

impl EventStreams {
    /// Takes a place for one more stream, unless `max` are open already.
    pub fn open(self: &Arc<Self>, kind: StreamKind, max: usize) -> Result<StreamPermit, TooManyStreams> {
        // Checked and taken in one step, so racing requests cannot overshoot the limit.
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|_| TooManyStreams { max })?;
        if kind == StreamKind::Listen {
            self.listens.fetch_add(1, Ordering::SeqCst);
        }
        Ok(StreamPermit { streams: self.clone(), kind })
    }

    /// All open event streams.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Open `subscriptions/listen` streams.
    pub fn listen_count(&self) -> usize {
        self.listens.load(Ordering::SeqCst)
    }
}

/// One open stream's place; dropped with the stream.
#[derive(Debug)]
pub struct StreamPermit {
    streams: Arc<EventStreams>,
    kind: StreamKind,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if self.kind == StreamKind::Listen {
            self.streams.listens.fetch_sub(1, Ordering::SeqCst);
        }
        self.streams.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_beyond_the_limit_are_refused_until_one_closes() {
        let streams = Arc::new(EventStreams::default());
        let session = streams.open(StreamKind::Session, 2).unwrap();
        let listen = streams.open(StreamKind::Listen, 2).unwrap();
        assert_eq!((streams.open_count(), streams.listen_count()), (2, 1));
        let refused = streams.open(StreamKind::Listen, 2).unwrap_err();
        assert_eq!(refused.to_string(), "too many open event streams: at most 2 (--max-streams)");
        assert_eq!((streams.open_count(), streams.listen_count()), (2, 1), "a refusal takes no place");
        drop(listen);
        assert_eq!((streams.open_count(), streams.listen_count()), (1, 0));
        let _again = streams.open(StreamKind::Listen, 2).unwrap();
        drop(session);
        assert_eq!((streams.open_count(), streams.listen_count()), (1, 1));
    }
}
