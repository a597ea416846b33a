//! Relaying one client session to one daemon over streamable HTTP (or plain HTTP).
//! The relay remembers the client's `initialize` and `notifications/initialized`, and
//! what the client set up on its session (subscriptions, log level: [`SessionSetup`]),
//! so when the daemon restarts, forgets the session (404) or refuses the connection, it
//! can find or restart the daemon, replay the handshake and the setup, reopen the
//! session's `GET` stream and retry the message once: the client never notices.
//!
//! A client that only listens sends nothing that could fail, so for a session with
//! subscriptions the `GET` stream's own loss (the daemon gone, or the session unknown)
//! starts the same recovery: the subscriber keeps receiving
//! `notifications/resources/updated`.
//!
//! Requests of the stateless revisions (2026-07-28 on, [`stateless`]) go out with the
//! headers mirrored from their body and without a session; nothing is replayed for them
//! (there is no handshake), a `subscriptions/listen` stream is relayed for as long as it
//! stays open, and the client's `notifications/cancelled` for one of them closes its
//! stream (the revision's cancellation on HTTP) instead of being POSTed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mcp_wire::{LISTEN, SESSION_HEADER, VERSION_HEADER};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::Transport;
use crate::discovery::{self, DiscoveryError};
use crate::replay::SessionSetup;
use crate::stateless;
use crate::upstream::Link;

const SESSION: HeaderName = HeaderName::from_static(SESSION_HEADER);
const VERSION: HeaderName = HeaderName::from_static(VERSION_HEADER);

/// GET-stream reconnect attempts before giving up until the next recovery.
const LISTEN_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot reach it: {0}")]
    Connect(String),
    #[error("its session expired (HTTP 404)")]
    SessionGone,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("it answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("its answer was not JSON-RPC: {0}")]
    BadReply(String),
    /// A stateless request's response stream ended before its response. Not retried:
    /// the request may have run, and a listen stream may already have been acknowledged.
    #[error("it closed the response stream before answering{0}")]
    StreamClosed(String),
    /// A request the proxy replayed at a recovery was answered with an error.
    #[error("it refused the replayed {method}: {detail}")]
    ReplayRefused { method: String, detail: String },
}

impl RelayError {
    /// The error for a replayed request's answer that is an error (`None` otherwise):
    /// the client never sees that answer, so the recovery has to.
    pub(crate) fn refused(request: &Value, answer: &Value) -> Option<RelayError> {
        let method = request.get("method").and_then(Value::as_str).unwrap_or("request");
        let error = answer.get("error")?;
        Some(RelayError::ReplayRefused {
            method: method.to_owned(),
            detail: error.to_string().chars().take(300).collect(),
        })
    }
}

impl RelayError {
    /// Errors after which finding/restarting the daemon and replaying may help.
    fn recoverable(&self) -> bool {
        matches!(self, RelayError::Connect(_) | RelayError::SessionGone)
    }
}

/// Lines for the client's stdout; one writer task owns stdout.
pub type Output = mpsc::Sender<String>;

#[derive(Default)]
struct State {
    endpoint: Option<url::Url>,
    session: Option<String>,
    version: Option<String>,
    /// Bumped at every recovery, so concurrent failures recover once.
    generation: u64,
    initialize: Option<Value>,
    initialized: Option<Value>,
    /// Subscriptions and log level, set up again after the handshake at a recovery.
    setup: SessionSetup,
    /// The last recovery could not replay the handshake and setup (the daemon was not
    /// back yet): the relay has no session, and the next message must recover first.
    unreplayed: bool,
    /// The client has sent requests of a stateless revision.
    stateless_client: bool,
}

/// A stateless request in flight, which the client may cancel (closing its stream).
struct InFlight {
    listen: bool,
    cancel: oneshot::Sender<()>,
}

pub struct Relay {
    link: Link,
    state: Mutex<State>,
    /// Held while finding the daemon or recovering, so only one task does either.
    connecting: tokio::sync::Mutex<()>,
    /// Held for a whole recovery, so a task that failed at the same time waits for it
    /// and sees its outcome.
    recovering: tokio::sync::Mutex<()>,
    closing: AtomicBool,
    /// Stateless requests in flight, by their JSON-RPC id (as JSON text).
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// The `x-mcp-header` annotations of the tools a stateless `tools/list` returned.
    tool_headers: Mutex<HashMap<String, stateless::ParamHeaders>>,
}

impl Relay {
    pub fn new(link: Link) -> Arc<Relay> {
        Arc::new(Relay {
            link,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            recovering: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            tool_headers: Mutex::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.link.spec.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts finding (or starting) the daemon now, while the client is still sending
    /// its first line: start-up is on the client's clock.
    pub fn warm_up(self: &Arc<Self>) {
        let relay = self.clone();
        tokio::spawn(async move {
            if let Err(e) = relay.endpoint().await {
                crate::log(&relay.link.spec.name, &format!("{e}"));
            }
        });
    }

    /// The daemon's endpoint, finding or starting the daemon when not known yet.
    async fn endpoint(&self) -> Result<url::Url, RelayError> {
        if let Some(url) = self.state().endpoint.clone() {
            return Ok(url);
        }
        let _guard = self.connecting.lock().await;
        if let Some(url) = self.state().endpoint.clone() {
            return Ok(url);
        }
        let found = discovery::find_or_start(&self.link.spec, &self.link.runtime, self.link.manager_port).await?;
        if found.spawned {
            crate::log(&self.link.spec.name, "started the daemon");
        }
        let url = self.link.spec.endpoint(found.port);
        self.state().endpoint = Some(url.clone());
        Ok(url)
    }

    /// Forwards one client message; answers the client with an error for its id when
    /// the daemon cannot be reached even after one recovery. `text`: the message as the
    /// client wrote it (one line of JSON), sent as it is rather than printed again.
    pub async fn forward(self: &Arc<Self>, message: Value, text: Option<String>) {
        let method = message.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = message.get("id").cloned();
        let is_initialize = method.as_deref() == Some("initialize");
        let stateless = stateless::revision(&message).is_some();
        match method.as_deref() {
            Some("initialize") => self.state().initialize = Some(message.clone()),
            Some("notifications/initialized") => self.state().initialized = Some(message.clone()),
            Some("notifications/cancelled") if self.cancel(&message) => return,
            _ if stateless => self.state().stateless_client = true,
            _ => self.state().setup.note(&message),
        }
        let unreplayed = {
            let st = self.state();
            st.unreplayed.then_some(st.generation)
        };
        let attempt = async {
            if let Some(seen) = unreplayed.filter(|_| !is_initialize && !stateless) {
                // Finish the recovery that could not set the session up again.
                return match self.recover(seen, true).await {
                    Ok(()) => self.post(&message, text.as_deref(), true).await,
                    Err(e) => Err(e),
                };
            }
            let mut result = self.post(&message, text.as_deref(), true).await;
            if let Err(e) = &result
                && e.recoverable()
                && !self.closing.load(Ordering::SeqCst)
            {
                crate::log(&self.link.spec.name, &format!("{e}; recovering"));
                let seen = self.state().generation;
                // A stateless client has no handshake to replay.
                result = match self.recover(seen, !is_initialize && !stateless).await {
                    Ok(()) => self.post(&message, text.as_deref(), true).await,
                    Err(e) => Err(e),
                };
            }
            result
        };
        let result = match id.as_ref().filter(|_| stateless) {
            Some(id) => {
                let key = id.to_string();
                let (cancel, cancelled) = oneshot::channel();
                let listen = method.as_deref() == Some(LISTEN);
                self.in_flight().insert(key.clone(), InFlight { listen, cancel });
                let outcome = tokio::select! {
                    result = attempt => Some(result),
                    Ok(()) = cancelled => None,
                };
                self.in_flight().remove(&key);
                match outcome {
                    Some(result) => result,
                    None => return, // dropping the exchange closed its stream
                }
            }
            None => attempt.await,
        };
        if let Err(e) = result {
            self.link.report_failure(method.as_deref(), id, &e).await;
        }
    }

    /// Handles the client's `notifications/cancelled` when it concerns a stateless
    /// request: the request's stream is closed (which is how that revision cancels over
    /// HTTP) and nothing is POSTed. Returns whether it was handled here.
    fn cancel(&self, notification: &Value) -> bool {
        let Some(request_id) = notification.pointer("/params/requestId") else { return false };
        if let Some(entry) = self.in_flight().remove(&request_id.to_string()) {
            let _ = entry.cancel.send(());
            return true;
        }
        // A stateless client cancelling something already finished: HTTP has no
        // client notifications in that revision, so there is nothing to send.
        let st = self.state();
        st.stateless_client && st.initialize.is_none()
    }

    /// Closes every `subscriptions/listen` stream (the client is going away; they
    /// would otherwise never finish).
    pub fn end_listens(&self) {
        let mut in_flight = self.in_flight();
        let listens: Vec<String> = in_flight.iter().filter(|(_, f)| f.listen).map(|(k, _)| k.clone()).collect();
        for key in listens {
            if let Some(entry) = in_flight.remove(&key) {
                let _ = entry.cancel.send(());
            }
        }
    }

    /// Finds or restarts the daemon and replays the handshake and the session's setup,
    /// then reopens the session's `GET` stream; once per generation.
    async fn recover(self: &Arc<Self>, seen: u64, replay: bool) -> Result<(), RelayError> {
        let _recovering = self.recovering.lock().await;
        let guard = self.connecting.lock().await;
        let generation = {
            let mut st = self.state();
            if st.generation != seen && !st.unreplayed {
                return Ok(()); // another task recovered while we waited
            }
            st.endpoint = None;
            st.session = None;
            st.generation += 1;
            st.unreplayed = replay && st.initialize.is_some();
            st.generation
        };
        drop(guard);
        self.endpoint().await?;
        if !replay {
            return Ok(());
        }
        let (init, initialized, setup, described) = {
            let st = self.state();
            (st.initialize.clone(), st.initialized.clone(), st.setup.replay(generation), st.setup.describe())
        };
        let Some(init) = init else { return Ok(()) };
        self.post(&init, None, false).await?;
        if let Some(n) = initialized {
            self.post(&n, None, false).await?;
        }
        for request in &setup {
            match self.post(request, None, false).await {
                Ok(()) => {}
                // The new session is lost already: the caller's retry would fail too.
                Err(e) if e.recoverable() => return Err(e),
                // The daemon refused one piece of the setup; the session still serves.
                Err(e) => crate::log(
                    &self.link.spec.name,
                    &format!("replaying {}: {e}", request.get("method").and_then(Value::as_str).unwrap_or("?")),
                ),
            }
        }
        self.state().unreplayed = false;
        if !described.is_empty() {
            crate::log(&self.link.spec.name, &format!("new session: replayed the handshake and {described}"));
        }
        // Opened only now, so that once the stream is open everything the session
        // listens for has been set up again.
        if self.link.spec.wire_transport() == Transport::StreamableHttp {
            self.clone().listen(generation, true);
        }
        Ok(())
    }

    /// POSTs one message (its `text` when given, else the message printed) and writes
    /// every message of the reply to the client (unless `deliver` is false: a replayed
    /// handshake's answers are not the client's business).
    async fn post(self: &Arc<Self>, message: &Value, text: Option<&str>, deliver: bool) -> Result<(), RelayError> {
        let url = self.endpoint().await?;
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        let revision = stateless::revision(message);
        let is_listen = revision.is_some() && message.get("method").and_then(Value::as_str) == Some(LISTEN);
        let (session, version, generation) = {
            let st = self.state();
            (st.session.clone(), st.version.clone(), st.generation)
        };
        // A stateless request carries its own version and never a session.
        let (session, version) = match revision {
            Some(_) => (None, None),
            None => (session, version),
        };
        let mut headers = self.link.extra_headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        if let Some(s) = &session {
            headers.insert(SESSION, header_value(&SESSION, s)?);
        }
        if let Some(v) = version.as_deref().filter(|_| !is_initialize) {
            headers.insert(VERSION, header_value(&VERSION, v)?);
        }
        self.link.project_headers(&mut headers).await;
        if let Some(revision) = revision {
            for (name, value) in stateless::headers(message, revision) {
                headers.append(name, value);
            }
            for (name, value) in self.param_headers(message) {
                headers.append(name, value);
            }
        }
        let lists_tools = revision.is_some() && message.get("method").and_then(Value::as_str) == Some("tools/list");
        let timeout = self.link.spec.request_timeout;
        let body = text.map_or_else(|| message.to_string(), str::to_owned);
        let exchange = async {
            let resp = tokio::time::timeout(timeout, self.link.send(Method::POST, &url, headers, body))
                .await
                .map_err(|_| RelayError::Timeout(timeout))?
                .map_err(RelayError::Connect)?;
            let status = resp.status();
            if is_initialize && status.is_success() {
                let sid = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                self.state().session = sid;
            }
            if status.as_u16() == 202 {
                return Ok(());
            }
            if status.as_u16() == 404 && session.is_some() {
                return Err(RelayError::SessionGone);
            }
            let is_sse = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
            if status.is_success() && is_sse {
                let mut events = resp.events();
                let mut answered = false;
                let mut refused = None;
                while let Some(event) = events.next().await {
                    let event = event.map_err(|e| match revision {
                        Some(_) => RelayError::StreamClosed(format!(": {e}")),
                        None => RelayError::Connect(e.to_string()),
                    })?;
                    if let Some(data) = event.data.filter(|d| !d.trim().is_empty()) {
                        let mut value: Value =
                            serde_json::from_str(&data).map_err(|e| RelayError::BadReply(e.to_string()))?;
                        self.observe(&value, is_initialize);
                        let answer = value.get("method").is_none() && value.get("id") == message.get("id");
                        if answer && lists_tools {
                            self.learn_tools(&mut value);
                        }
                        answered |= answer;
                        if deliver {
                            self.link.emit(&value).await;
                        } else if answer {
                            refused = refused.or_else(|| RelayError::refused(message, &value));
                        }
                    }
                }
                if revision.is_some() && message.get("id").is_some() && !answered {
                    return Err(RelayError::StreamClosed(String::new()));
                }
                return refused.map_or(Ok(()), Err);
            }
            // Bytes, not `text()`: JSON is UTF-8, and text() would sniff and re-decode it.
            let body = resp.bytes().await.map_err(RelayError::Connect)?;
            // The common case, an answer the relay has nothing to learn from, goes to the
            // client as it came: checked, not parsed into a tree and printed again.
            if status.is_success()
                && deliver
                && !is_initialize
                && !lists_tools
                && let Some(line) = one_line_json(&body)
            {
                self.link.emit_line(line).await;
                return Ok(());
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(mut value) if status.is_success() => {
                    self.observe(&value, is_initialize);
                    if lists_tools {
                        self.learn_tools(&mut value);
                    }
                    if !deliver {
                        return RelayError::refused(message, &value).map_or(Ok(()), Err);
                    }
                    self.link.emit(&value).await;
                    Ok(())
                }
                // An error the daemon phrased as JSON-RPC: give it to the client under
                // the request's own id (HTTP-level errors carry id null).
                Ok(mut value) if value.get("error").is_some() && message.get("id").is_some() => {
                    if !deliver {
                        return RelayError::refused(message, &value).map_or(Ok(()), Err);
                    }
                    if value.get("id").is_none_or(Value::is_null) {
                        value["id"] = message["id"].clone();
                    }
                    self.link.emit(&value).await;
                    Ok(())
                }
                _ => Err(RelayError::Http {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                }),
            }
        };
        // A listen stream lasts as long as the daemon keeps it open: no timeout.
        let result = match is_listen {
            true => exchange.await,
            false => tokio::time::timeout(timeout, exchange).await.map_err(|_| RelayError::Timeout(timeout))?,
        };
        // The client's own handshake opens the stream here; a replayed one, in `recover`
        // once the session is set up again.
        if result.is_ok() && is_initialize && deliver && self.link.spec.wire_transport() == Transport::StreamableHttp {
            self.clone().listen(generation, false);
        }
        result
    }

    fn tool_headers(&self) -> std::sync::MutexGuard<'_, HashMap<String, stateless::ParamHeaders>> {
        self.tool_headers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns the tools' `x-mcp-header` annotations from a stateless `tools/list` answer,
    /// leaving out (and logging) tools whose annotations break the revision's rules.
    fn learn_tools(&self, answer: &mut Value) {
        let Some(tools) = answer.pointer_mut("/result/tools").and_then(Value::as_array_mut) else { return };
        let mut known = self.tool_headers();
        tools.retain(|tool| {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            match stateless::param_headers(tool.get("inputSchema").unwrap_or(&Value::Null)) {
                Ok(found) if found.is_empty() => {
                    known.remove(&name);
                    true
                }
                Ok(found) => {
                    known.insert(name, found);
                    true
                }
                Err(reason) => {
                    crate::log(&self.link.spec.name, &format!("tools/list: left out tool `{name}`: {reason}"));
                    known.remove(&name);
                    false
                }
            }
        });
    }

    /// The `Mcp-Param-*` headers of a stateless `tools/call` of an annotated tool.
    fn param_headers(&self, message: &Value) -> Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
        if message.get("method").and_then(Value::as_str) != Some("tools/call") {
            return Vec::new();
        }
        let Some(name) = message.pointer("/params/name").and_then(Value::as_str) else { return Vec::new() };
        let arguments = message.pointer("/params/arguments").unwrap_or(&Value::Null);
        self.tool_headers().get(name).map(|found| stateless::param_values(found, arguments)).unwrap_or_default()
    }

    /// Learns the negotiated protocol version from an `initialize` answer.
    fn observe(&self, value: &Value, is_initialize: bool) {
        if is_initialize && let Some(v) = value.pointer("/result/protocolVersion").and_then(Value::as_str) {
            self.state().version = Some(v.to_owned());
        }
    }

    /// Opens the session's `GET` stream and relays what comes, until the session changes.
    /// When the stream is lost because the daemon is gone or no longer knows the session,
    /// and the client has subscriptions, it recovers the session itself (the client may
    /// never send anything again, and its updates would stop). `reopened`: this stream
    /// follows a recovery (logged once it is open).
    fn listen(self: Arc<Self>, generation: u64, reopened: bool) {
        tokio::spawn(async move {
            let mut failures = 0;
            let mut logged = false;
            while failures < LISTEN_ATTEMPTS && !self.closing.load(Ordering::SeqCst) {
                let (url, session, version, current) = {
                    let st = self.state();
                    (st.endpoint.clone(), st.session.clone(), st.version.clone(), st.generation)
                };
                let (Some(url), Some(session)) = (url, session) else { return };
                if current != generation {
                    return;
                }
                let mut headers = self.link.extra_headers.clone();
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                let sent = async {
                    headers.insert(SESSION, header_value(&SESSION, &session)?);
                    if let Some(v) = &version {
                        headers.insert(VERSION, header_value(&VERSION, v)?);
                    }
                    self.link.project_headers(&mut headers).await;
                    self.link.send(Method::GET, &url, headers, String::new()).await.map_err(RelayError::Connect)
                };
                let lost = match sent.await {
                    Ok(resp) if resp.status().as_u16() == 405 => return,
                    Ok(resp) if resp.status().is_success() => {
                        failures = 0;
                        if reopened && !logged {
                            logged = true;
                            crate::log(&self.link.spec.name, "event stream reopened");
                        }
                        let mut events = resp.events();
                        while let Some(Ok(event)) = events.next().await {
                            if let Some(value) = event.data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                                self.link.emit(&value).await;
                            }
                        }
                        None
                    }
                    Ok(resp) if resp.status().as_u16() == 404 => Some(RelayError::SessionGone),
                    Err(e) => Some(e),
                    Ok(_) => None,
                };
                if let Some(e) = lost
                    && self.state().setup.has_subscriptions()
                    && !self.closing.load(Ordering::SeqCst)
                {
                    crate::log(&self.link.spec.name, &format!("event stream: {e}; recovering for the subscriptions"));
                    self.recover_for_subscribers(generation).await;
                    return;
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
            }
        });
    }

    /// Recovers the session of a lost event stream, a bounded number of times; a
    /// successful recovery opens the new session's stream. Once the attempts are spent,
    /// the client's next message recovers (the relay knows its replay is unfinished).
    async fn recover_for_subscribers(self: &Arc<Self>, generation: u64) {
        let mut seen = generation;
        for attempt in 1..=LISTEN_ATTEMPTS {
            match self.recover(seen, true).await {
                Ok(()) => return,
                Err(e) => crate::log(&self.link.spec.name, &format!("event stream: {e}")),
            }
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            seen = self.state().generation;
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        }
    }

    /// Ends the daemon-side session (best effort, bounded).
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let (url, session) = {
            let st = self.state();
            (st.endpoint.clone(), st.session.clone())
        };
        // A session id HTTP cannot carry could not be sent before either (reqwest refused it).
        if let (Some(url), Some(Ok(session))) = (url, session.map(|s| HeaderValue::from_str(&s))) {
            let mut headers = self.link.extra_headers.clone();
            headers.insert(SESSION, session);
            let delete = self.link.send(Method::DELETE, &url, headers, String::new());
            let _ = tokio::time::timeout(Duration::from_secs(2), delete).await;
        }
    }
}

/// `value` as the value of header `name`; a value HTTP cannot carry (the daemon's session
/// id or protocol version, as it sent them) fails the request, as reqwest's builder did.
fn header_value(name: &HeaderName, value: &str) -> Result<HeaderValue, RelayError> {
    HeaderValue::from_str(value).map_err(|e| RelayError::Connect(format!("builder error: {name}: {e}")))
}

/// Percent-encodes a project path for `Mcp-Project-Path`: readable for ASCII paths,
/// `%XX` for everything else (non-ASCII, controls, `%` itself).
pub fn encode_project(path: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(path, KEEP).to_string()
}

/// `body` as one stdout line when it is a single JSON value written without line breaks
/// (as every daemon we know writes its answers); `None` sends it the long way, parsed
/// and printed again on one line.
fn one_line_json(body: &[u8]) -> Option<String> {
    if body.contains(&b'\n') || body.contains(&b'\r') {
        return None;
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// An error with its causes, which is where reqwest says "connection refused".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_line_json_passes_through_unparsed() {
        let compact = r#"{"jsonrpc":"2.0","id":1,"result":{"text":"a\nb \u00e9 é"}}"#.as_bytes();
        assert_eq!(one_line_json(compact).as_deref(), std::str::from_utf8(compact).ok());
        assert_eq!(one_line_json(b"{\n  \"id\": 1\n}"), None, "pretty-printed");
        assert_eq!(one_line_json(b"{\"id\": 1}\r"), None);
        assert_eq!(one_line_json(br#"{"id": 1"#), None, "truncated");
        assert_eq!(one_line_json(br#"{"id": 1} {"id": 2}"#), None, "two values");
        assert_eq!(one_line_json(b"{\"s\": \"\xff\"}"), None, "not UTF-8");
    }

    #[test]
    fn project_paths_are_percent_encoded_only_where_needed() {
        assert_eq!(encode_project("/home/u/my-app_1.0"), "/home/u/my-app_1.0");
        assert_eq!(encode_project("/home/工藤/app"), "/home/%E5%B7%A5%E8%97%A4/app");
        assert_eq!(encode_project("/a b/100%"), "/a%20b/100%25");
    }
}
