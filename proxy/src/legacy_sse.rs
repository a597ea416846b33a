//! Relaying one client session over the deprecated HTTP+SSE transport (protocol
//! 2024-11-05), which external daemons such as FastMCP servers run with `--transport sse`.
//!
//! The proxy opens `GET <base>/sse`, waits for the `endpoint` event and resolves the URL
//! it names against the base (`/messages/?session_id=X`, `/messages/X`, or absolute, same
//! origin only). Every client message is POSTed there (`202` expected); every message of
//! the event stream (responses, progress and log notifications, server requests) goes to
//! stdout as it arrives, in stream order. Because answers travel on the stream and not
//! in the POST's reply, a forwarded request waits until its answer comes by (or the
//! stream ends), so it can be retried like on the streamable transport: when the stream
//! drops, the daemon forgets the session (`404`) or refuses the connection, the relay
//! finds or restarts the daemon, reopens the stream, replays the client's recorded
//! `initialize` and `notifications/initialized` and what it set up on its session
//! (subscriptions, log level: [`SessionSetup`]), and retries the message once; if that
//! fails, the client gets a JSON-RPC error for that id naming the daemon and the cause.
//! A client with subscriptions may never send anything again, so when the stream ends
//! under it the relay reconnects (and replays) on its own, and its resource updates go on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use sse_stream::{Sse, SseStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::discovery;
use crate::relay::{RelayError, error_chain};
use crate::replay::SessionSetup;
use crate::upstream::Link;

const STREAM_ENDED: &str = "its event stream ended";
/// Reconnections tried for a subscriber after its stream ended, before waiting for the
/// client's next message.
const RECONNECT_ATTEMPTS: u32 = 5;

/// A ready connection: the stream of `generation` is being read and the handshake (if
/// the client made one) has been replayed on it.
#[derive(Clone)]
struct Conn {
    post: url::Url,
    generation: u64,
}

/// A forwarded request waiting for its answer on the stream.
struct Waiter {
    generation: u64,
    /// False for replayed requests, whose answers are not the client's business.
    deliver: bool,
    /// The request, kept for a replayed one: its error answer fails the replay.
    replayed: Option<Value>,
    done: oneshot::Sender<Result<(), RelayError>>,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// The generation whose stream is being read, and how to stop reading it.
    stream: Option<u64>,
    reader: Option<AbortHandle>,
    generation: u64,
    initialize: Option<Value>,
    initialized: Option<Value>,
    /// Subscriptions and log level, set up again after the handshake on a new stream.
    setup: SessionSetup,
    /// Keyed by the request id's JSON text (so `1` and `"1"` stay apart).
    pending: HashMap<String, Waiter>,
    /// Ids the client cancelled before their request was waiting (messages are forwarded
    /// concurrently, so a cancellation can overtake its request); bounded.
    cancelled: HashSet<String>,
    /// The last answered ids, so a cancellation that comes after its answer is not kept
    /// (the client may reuse the id).
    answered: VecDeque<String>,
}

const MAX_CANCELLED: usize = 256;
const MAX_ANSWERED: usize = 64;

impl State {
    /// Takes the waiter for an answer's id, remembering the id as answered.
    fn take_waiter(&mut self, key: &str) -> Option<Waiter> {
        let waiter = self.pending.remove(key)?;
        if self.answered.len() >= MAX_ANSWERED {
            self.answered.pop_front();
        }
        self.answered.push_back(key.to_owned());
        Some(waiter)
    }
}

pub struct SseRelay {
    link: Link,
    state: Mutex<State>,
    /// Held while opening a connection (and replaying on it), so only one task does.
    connecting: tokio::sync::Mutex<()>,
    closing: AtomicBool,
}

/// A failed attempt, with the generation of the connection it used.
type Attempt = Result<(), (RelayError, u64)>;

impl SseRelay {
    pub fn new(link: Link) -> Arc<SseRelay> {
        Arc::new(SseRelay {
            link,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.link.spec.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds (or starts) the daemon and opens its event stream now, while the client is
    /// still sending its first line.
    pub fn warm_up(self: &Arc<Self>) {
        let relay = self.clone();
        tokio::spawn(async move {
            if let Err(e) = relay.connection(false).await {
                crate::log(&relay.link.spec.name, &format!("{e}"));
            }
        });
    }

    /// Forwards one client message; answers the client with an error for its id when
    /// the daemon cannot be reached even after one recovery.
    pub async fn forward(self: &Arc<Self>, message: Value) {
        let method = message.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = message.get("id").cloned();
        let is_initialize = method.as_deref() == Some("initialize");
        match method.as_deref() {
            Some("initialize") => self.state().initialize = Some(message.clone()),
            Some("notifications/initialized") => self.state().initialized = Some(message.clone()),
            _ => self.state().setup.note(&message),
        }
        let mut result = self.send(&message, !is_initialize).await;
        if let Err((e, generation)) = &result
            && matches!(e, RelayError::Connect(_) | RelayError::SessionGone)
            && !self.closing.load(Ordering::SeqCst)
        {
            crate::log(&self.link.spec.name, &format!("{e}; recovering"));
            {
                let _guard = self.connecting.lock().await;
                self.end_stream(*generation, true);
            }
            result = self.send(&message, !is_initialize).await;
        }
        if result.is_ok()
            && method.as_deref() == Some("notifications/cancelled")
            && let Some(request) = message.pointer("/params/requestId")
        {
            // The daemon need not answer a cancelled request: stop waiting for it.
            let key = request.to_string();
            let mut st = self.state();
            match st.pending.remove(&key) {
                Some(waiter) => {
                    let _ = waiter.done.send(Ok(()));
                }
                None if st.answered.contains(&key) => {}
                None => {
                    if st.cancelled.len() >= MAX_CANCELLED {
                        st.cancelled.clear();
                    }
                    st.cancelled.insert(key);
                }
            }
        }
        if let Err((e, _)) = result {
            self.link.report_failure(method.as_deref(), id, &e).await;
        }
    }

    /// Sends one client message on a ready connection (opening one if needed).
    async fn send(self: &Arc<Self>, message: &Value, replay: bool) -> Attempt {
        let conn = match self.connection(replay).await {
            Ok(conn) => conn,
            // No connection of ours failed (generations start at 1): nothing to forget.
            Err(e) => return Err((e, 0)),
        };
        self.exchange(&conn, message, true).await.map_err(|e| (e, conn.generation))
    }

    /// The ready connection, opening it (and replaying the client's handshake on it when
    /// `replay`) if there is none.
    async fn connection(self: &Arc<Self>, replay: bool) -> Result<Conn, RelayError> {
        if let Some(conn) = self.state().conn.clone() {
            return Ok(conn);
        }
        let _guard = self.connecting.lock().await;
        if let Some(conn) = self.state().conn.clone() {
            return Ok(conn);
        }
        let conn = self.open().await?;
        if replay && let Err(e) = self.replay(&conn).await {
            self.end_stream(conn.generation, true);
            return Err(e);
        }
        self.state().conn = Some(conn.clone());
        Ok(conn)
    }

    /// Replays the recorded `initialize` (under an id of our own, answer not delivered),
    /// `notifications/initialized` and the session's setup on a new connection.
    async fn replay(self: &Arc<Self>, conn: &Conn) -> Result<(), RelayError> {
        let (init, initialized, setup, described) = {
            let st = self.state();
            (st.initialize.clone(), st.initialized.clone(), st.setup.replay(conn.generation), st.setup.describe())
        };
        let Some(mut init) = init else { return Ok(()) };
        init["id"] = json!(format!("mcp-proxy-replay-{}", conn.generation));
        self.exchange(conn, &init, false).await?;
        if let Some(n) = initialized {
            self.exchange(conn, &n, false).await?;
        }
        for request in &setup {
            match self.exchange(conn, request, false).await {
                Ok(()) => {}
                // The new connection is lost already: the caller's retry would fail too.
                Err(e @ (RelayError::Connect(_) | RelayError::SessionGone)) => return Err(e),
                // The daemon refused one piece of the setup; the session still serves.
                Err(e) => crate::log(
                    &self.link.spec.name,
                    &format!("replaying {}: {e}", request.get("method").and_then(Value::as_str).unwrap_or("?")),
                ),
            }
        }
        if !described.is_empty() {
            crate::log(&self.link.spec.name, &format!("new session: replayed the handshake and {described}"));
        }
        Ok(())
    }

    /// Finds or starts the daemon, opens `GET <base>/sse`, reads the `endpoint` event and
    /// hands the rest of the stream to a reader task.
    async fn open(self: &Arc<Self>) -> Result<Conn, RelayError> {
        let found = discovery::find_or_start(&self.link.spec, &self.link.runtime, self.link.manager_port).await?;
        if found.spawned {
            crate::log(&self.link.spec.name, "started the daemon");
        }
        let base = self.link.spec.endpoint(found.port);
        let mut req = self
            .link
            .client
            .get(base.clone())
            .headers(self.link.extra_headers.clone())
            .header(ACCEPT, "text/event-stream");
        req = self.link.with_project(req).await;
        let handshake = async {
            let resp = req.send().await.map_err(|e| RelayError::Connect(error_chain(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(RelayError::Http { status: status.as_u16(), body: body.chars().take(300).collect() });
            }
            if !is_event_stream(resp.headers()) {
                return Err(RelayError::BadReply(format!("GET {base} did not answer with an event stream")));
            }
            let mut events = SseStream::from_bytes_stream(resp.bytes_stream());
            loop {
                match events.next().await {
                    None => return Err(RelayError::Connect(format!("{STREAM_ENDED} before its endpoint event"))),
                    Some(Err(e)) => return Err(RelayError::Connect(e.to_string())),
                    Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                        let post = resolve_endpoint(&base, event.data.as_deref().unwrap_or_default())?;
                        return Ok((post, events));
                    }
                    Some(Ok(_)) => {} // nothing is addressed to the session before it exists
                }
            }
        };
        let timeout = self.link.spec.startup_timeout;
        let (post, events) =
            tokio::time::timeout(timeout, handshake).await.map_err(|_| RelayError::Timeout(timeout))??;
        let generation = {
            let mut st = self.state();
            st.generation += 1;
            st.stream = Some(st.generation);
            st.generation
        };
        let reader = tokio::spawn(self.clone().read_events(events, generation));
        {
            let mut st = self.state();
            if st.stream == Some(generation) {
                st.reader = Some(reader.abort_handle());
            }
        }
        Ok(Conn { post, generation })
    }

    /// Relays every message of the stream, completing waiting requests with their
    /// answers, until the stream ends.
    async fn read_events<S, E>(self: Arc<Self>, events: S, generation: u64)
    where
        S: Stream<Item = Result<Sse, E>>,
        E: std::fmt::Display,
    {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    crate::log(&self.link.spec.name, &format!("event stream: {e}"));
                    break;
                }
            };
            if event.event.as_deref() == Some("endpoint") {
                continue;
            }
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
            match serde_json::from_str::<Value>(&data) {
                Ok(Value::Array(batch)) => {
                    for value in batch {
                        self.dispatch(value).await;
                    }
                }
                Ok(value) => self.dispatch(value).await,
                Err(e) => crate::log(&self.link.spec.name, &format!("event stream: not JSON-RPC ({e}): {data:.200}")),
            }
        }
        if !self.closing.load(Ordering::SeqCst) {
            crate::log(&self.link.spec.name, STREAM_ENDED);
        }
        self.end_stream(generation, false);
        if !self.closing.load(Ordering::SeqCst) && self.state().setup.has_subscriptions() {
            self.reconnect_for_subscribers();
        }
    }

    /// The stream ended under a client that listens for resource updates, which come only
    /// on the stream, and that may never send anything again: reconnect (replaying the
    /// handshake and setup) without waiting for it; a bounded number of times, after
    /// which the client's next message reconnects.
    fn reconnect_for_subscribers(self: Arc<Self>) {
        tokio::spawn(async move {
            for attempt in 1..=RECONNECT_ATTEMPTS {
                // A moment for a restarting daemon to listen again.
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                let done = {
                    let st = self.state();
                    self.closing.load(Ordering::SeqCst) || st.conn.is_some() || !st.setup.has_subscriptions()
                };
                if done {
                    return;
                }
                match self.connection(true).await {
                    Ok(_) => {
                        crate::log(&self.link.spec.name, "event stream reopened");
                        return;
                    }
                    Err(e) => crate::log(&self.link.spec.name, &format!("event stream: {e}")),
                }
            }
        });
    }

    /// One message from the daemon: an answer goes to the request waiting for it (and to
    /// the client unless it answers a replay); anything else goes to the client.
    async fn dispatch(&self, value: Value) {
        let is_answer = value.get("method").is_none()
            && value.get("id").is_some()
            && (value.get("result").is_some() || value.get("error").is_some());
        if !is_answer {
            self.link.emit(&value).await;
            return;
        }
        let key = value["id"].to_string();
        let waiter = self.state().take_waiter(&key);
        match waiter {
            Some(waiter) => {
                let outcome = match waiter.deliver {
                    true => {
                        self.link.emit(&value).await;
                        Ok(())
                    }
                    // A replayed request: the client never sees its answer, so an error
                    // answer is the replay's failure.
                    false => waiter.replayed.as_ref().and_then(|r| RelayError::refused(r, &value)).map_or(Ok(()), Err),
                };
                let _ = waiter.done.send(outcome);
            }
            None => crate::log(&self.link.spec.name, &format!("dropping an answer for id {key}, which nothing awaits")),
        }
    }

    /// Forgets the connection of `generation`: stops reading its stream (when `abort`)
    /// and fails the requests still waiting on it, so they can be retried.
    fn end_stream(&self, generation: u64, abort: bool) {
        let mut st = self.state();
        if st.stream == Some(generation) {
            st.stream = None;
            if let Some(reader) = st.reader.take()
                && abort
            {
                reader.abort();
            }
        }
        if st.conn.as_ref().is_some_and(|c| c.generation == generation) {
            st.conn = None;
        }
        let lost: Vec<String> =
            st.pending.iter().filter(|(_, w)| w.generation == generation).map(|(k, _)| k.clone()).collect();
        for key in lost {
            if let Some(waiter) = st.pending.remove(&key) {
                let _ = waiter.done.send(Err(RelayError::Connect(STREAM_ENDED.into())));
            }
        }
    }

    /// POSTs one message to the announced endpoint and, for a request, waits for its
    /// answer on the stream (bounded by the request timeout).
    async fn exchange(&self, conn: &Conn, message: &Value, deliver: bool) -> Result<(), RelayError> {
        let is_request = message.get("method").is_some() && message.get("id").is_some_and(|id| !id.is_null());
        let key = is_request.then(|| message["id"].to_string());
        let answer = match &key {
            Some(key) => {
                let mut st = self.state();
                if st.stream != Some(conn.generation) {
                    return Err(RelayError::Connect(STREAM_ENDED.into()));
                }
                if deliver && st.cancelled.remove(key) {
                    None // cancelled already: sent, but not waited for
                } else {
                    let (done, answer) = oneshot::channel();
                    let replayed = (!deliver).then(|| message.clone());
                    st.pending.insert(key.clone(), Waiter { generation: conn.generation, deliver, replayed, done });
                    Some(answer)
                }
            }
            None => None,
        };
        let timeout = self.link.spec.request_timeout;
        let result = tokio::time::timeout(timeout, self.post_and_wait(conn, message, key.as_deref(), deliver, answer))
            .await
            .unwrap_or(Err(RelayError::Timeout(timeout)));
        if let Some(key) = &key
            && result.is_err()
        {
            let mut st = self.state();
            if st.pending.get(key).is_some_and(|w| w.generation == conn.generation) {
                st.pending.remove(key);
            }
        }
        result
    }

    async fn post_and_wait(
        &self,
        conn: &Conn,
        message: &Value,
        key: Option<&str>,
        deliver: bool,
        answer: Option<oneshot::Receiver<Result<(), RelayError>>>,
    ) -> Result<(), RelayError> {
        let mut req = self
            .link
            .client
            .post(conn.post.clone())
            .headers(self.link.extra_headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(message.to_string());
        req = self.link.with_project(req).await;
        let resp = req.send().await.map_err(|e| RelayError::Connect(error_chain(&e)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| RelayError::Connect(error_chain(&e)))?;
        if status.as_u16() == 404 {
            return Err(RelayError::SessionGone);
        }
        // A JSON body (some servers answer on the POST too) is relayed like a stream message.
        let body = serde_json::from_str::<Value>(&text).ok().filter(|v| v.is_object() || v.is_array());
        if !status.is_success() {
            return match body {
                // An error phrased as JSON-RPC: the client gets it under its own id.
                Some(mut value) if value.get("error").is_some() && key.is_some() => {
                    self.state().pending.remove(key.unwrap_or_default());
                    if !deliver {
                        return RelayError::refused(message, &value).map_or(Ok(()), Err);
                    }
                    if value.get("id").is_none_or(Value::is_null) {
                        value["id"] = message["id"].clone();
                    }
                    self.link.emit(&value).await;
                    Ok(())
                }
                _ => Err(RelayError::Http { status: status.as_u16(), body: text.chars().take(300).collect() }),
            };
        }
        if let Some(value) = body {
            // Ids compare as JSON text, like the waiters' keys (`1` is not `"1"`).
            let id_key = value["id"].to_string();
            let answers_us = key.is_some_and(|k| value.get("method").is_none() && id_key == k);
            if answers_us {
                self.state().take_waiter(key.unwrap_or_default());
                if !deliver {
                    return RelayError::refused(message, &value).map_or(Ok(()), Err);
                }
                self.link.emit(&value).await;
                return Ok(());
            }
            if deliver {
                self.link.emit(&value).await;
            }
        }
        match answer {
            Some(answer) => answer.await.unwrap_or_else(|_| Err(RelayError::Connect(STREAM_ENDED.into()))),
            None => Ok(()),
        }
    }

    /// Ends the session: closing the event stream is how this transport says goodbye.
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let generation = self.state().stream;
        if let Some(generation) = generation {
            self.end_stream(generation, true);
        }
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// Resolves the `endpoint` event's URL against the stream's URL. Relative forms
/// (`/messages/?session_id=X`, `/messages/X`, `messages/X`) and absolute URLs are
/// accepted; an absolute URL must keep the stream's origin, as in the official SDKs, so a
/// daemon cannot send the session's messages elsewhere.
pub fn resolve_endpoint(base: &url::Url, announced: &str) -> Result<url::Url, RelayError> {
    let announced = announced.trim();
    if announced.is_empty() {
        return Err(RelayError::BadReply("its endpoint event names no URL".into()));
    }
    let url = base
        .join(announced)
        .map_err(|e| RelayError::BadReply(format!("its endpoint event names a bad URL {announced:?}: {e}")))?;
    if url.origin() != base.origin() {
        return Err(RelayError::BadReply(format!(
            "its endpoint event names {url}, which is not on the origin of {base}"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_resolve_against_the_stream_url() {
        let base = url::Url::parse("http://127.0.0.1:3102/sse").unwrap();
        let cases = [
            ("/messages/?session_id=abc", "http://127.0.0.1:3102/messages/?session_id=abc"),
            ("/messages/abc", "http://127.0.0.1:3102/messages/abc"),
            ("messages/abc", "http://127.0.0.1:3102/messages/abc"),
            (" http://127.0.0.1:3102/rpc?s=1 \n", "http://127.0.0.1:3102/rpc?s=1"),
        ];
        for (announced, expected) in cases {
            assert_eq!(resolve_endpoint(&base, announced).unwrap().as_str(), expected, "{announced}");
        }
        let mounted = url::Url::parse("http://127.0.0.1:9/tools/sse").unwrap();
        assert_eq!(resolve_endpoint(&mounted, "messages/x").unwrap().as_str(), "http://127.0.0.1:9/tools/messages/x");
        assert!(resolve_endpoint(&base, "http://127.0.0.1:4000/messages/x").is_err());
        assert!(resolve_endpoint(&base, "https://evil.example/messages/x").is_err());
        assert!(resolve_endpoint(&base, "").is_err());
    }
}
