//! Relaying one client session to one daemon over streamable HTTP (or plain HTTP).
//! The relay remembers the client's `initialize` and `notifications/initialized`, so
//! when the daemon restarts, forgets the session (404) or refuses the connection, it can
//! find or restart the daemon, replay the handshake and retry the message once: the
//! client never notices.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use sse_stream::SseStream;
use tokio::sync::mpsc;

use crate::config::Transport;
use crate::discovery::{self, DiscoveryError};
use crate::upstream::Link;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const PROJECT_HEADER: &str = "mcp-project-path";
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
}

pub struct Relay {
    link: Link,
    state: Mutex<State>,
    /// Held while finding the daemon or recovering, so only one task does either.
    connecting: tokio::sync::Mutex<()>,
    closing: AtomicBool,
}

impl Relay {
    pub fn new(link: Link) -> Arc<Relay> {
        Arc::new(Relay {
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
        let mut url = self.link.spec.endpoint();
        if let Some(port) = found.port {
            let _ = url.set_port(Some(port));
        }
        self.state().endpoint = Some(url.clone());
        Ok(url)
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
            _ => {}
        }
        let mut result = self.post(&message, true).await;
        if let Err(e) = &result
            && e.recoverable()
            && !self.closing.load(Ordering::SeqCst)
        {
            crate::log(&self.link.spec.name, &format!("{e}; recovering"));
            let seen = self.state().generation;
            result = match self.recover(seen, !is_initialize).await {
                Ok(()) => self.post(&message, true).await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = result {
            crate::log(&self.link.spec.name, &format!("{}: {e}", method.as_deref().unwrap_or("response")));
            if let (Some(id), Some(_)) = (id, method) {
                // Discovery errors already name the daemon.
                let message = match &e {
                    RelayError::Discovery(_) => format!("mcp-proxy: {e}"),
                    _ => format!("mcp-proxy: daemon `{}`: {e}", self.link.spec.name),
                };
                self.link.emit(&json!({"jsonrpc":"2.0","id":id,"error":{"code":-32603,"message":message}})).await;
            }
        }
    }

    /// Finds or restarts the daemon and replays the handshake, once per generation.
    async fn recover(self: &Arc<Self>, seen: u64, replay: bool) -> Result<(), RelayError> {
        let guard = self.connecting.lock().await;
        if self.state().generation != seen {
            return Ok(()); // another task recovered while we waited
        }
        {
            let mut st = self.state();
            st.endpoint = None;
            st.session = None;
            st.generation += 1;
        }
        drop(guard);
        self.endpoint().await?;
        if replay {
            let (init, initialized) = {
                let st = self.state();
                (st.initialize.clone(), st.initialized.clone())
            };
            if let Some(init) = init {
                self.post(&init, false).await?;
            }
            if let Some(n) = initialized {
                self.post(&n, false).await?;
            }
        }
        Ok(())
    }

    /// POSTs one message and writes every message of the reply to the client (unless
    /// `deliver` is false: a replayed handshake's answers are not the client's business).
    async fn post(self: &Arc<Self>, message: &Value, deliver: bool) -> Result<(), RelayError> {
        let url = self.endpoint().await?;
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        let (session, version, generation) = {
            let st = self.state();
            (st.session.clone(), st.version.clone(), st.generation)
        };
        let mut req = self
            .link
            .client
            .post(url.clone())
            .headers(self.link.extra_headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(s) = &session {
            req = req.header(SESSION_HEADER, s);
        }
        if let Some(v) = version.as_deref().filter(|_| !is_initialize) {
            req = req.header(VERSION_HEADER, v);
        }
        if let Some(p) = &self.link.project {
            req = req.header(PROJECT_HEADER, p.clone());
        }
        let timeout = self.link.spec.request_timeout;
        let exchange = async {
            let resp = req.send().await.map_err(|e| RelayError::Connect(error_chain(&e)))?;
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
                let mut events = SseStream::from_bytes_stream(resp.bytes_stream());
                while let Some(event) = events.next().await {
                    let event = event.map_err(|e| RelayError::Connect(e.to_string()))?;
                    if let Some(data) = event.data.filter(|d| !d.trim().is_empty()) {
                        let value: Value =
                            serde_json::from_str(&data).map_err(|e| RelayError::BadReply(e.to_string()))?;
                        self.observe(&value, is_initialize);
                        if deliver {
                            self.link.emit(&value).await;
                        }
                    }
                }
                return Ok(());
            }
            let text = resp.text().await.map_err(|e| RelayError::Connect(error_chain(&e)))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(value) if status.is_success() => {
                    self.observe(&value, is_initialize);
                    if deliver {
                        self.link.emit(&value).await;
                    }
                    Ok(())
                }
                // An error the daemon phrased as JSON-RPC: give it to the client under
                // the request's own id (HTTP-level errors carry id null).
                Ok(mut value) if value.get("error").is_some() && message.get("id").is_some() => {
                    if value.get("id").is_none_or(Value::is_null) {
                        value["id"] = message["id"].clone();
                    }
                    if deliver {
                        self.link.emit(&value).await;
                    }
                    Ok(())
                }
                _ => Err(RelayError::Http { status: status.as_u16(), body: text.chars().take(300).collect() }),
            }
        };
        let result = tokio::time::timeout(timeout, exchange).await.map_err(|_| RelayError::Timeout(timeout))?;
        if result.is_ok() && is_initialize && self.link.spec.transport == Transport::StreamableHttp {
            self.clone().listen(generation);
        }
        result
    }

    /// Learns the negotiated protocol version from an `initialize` answer.
    fn observe(&self, value: &Value, is_initialize: bool) {
        if is_initialize && let Some(v) = value.pointer("/result/protocolVersion").and_then(Value::as_str) {
            self.state().version = Some(v.to_owned());
        }
    }

    /// Opens the session's `GET` stream and relays what comes, until the session changes.
    fn listen(self: Arc<Self>, generation: u64) {
        tokio::spawn(async move {
            let mut failures = 0;
            while failures < LISTEN_ATTEMPTS && !self.closing.load(Ordering::SeqCst) {
                let (url, session, version, current) = {
                    let st = self.state();
                    (st.endpoint.clone(), st.session.clone(), st.version.clone(), st.generation)
                };
                let (Some(url), Some(session)) = (url, session) else { return };
                if current != generation {
                    return;
                }
                let mut req = self
                    .link
                    .client
                    .get(url)
                    .headers(self.link.extra_headers.clone())
                    .header(ACCEPT, "text/event-stream")
                    .header(SESSION_HEADER, session);
                if let Some(v) = version {
                    req = req.header(VERSION_HEADER, v);
                }
                if let Some(p) = &self.link.project {
                    req = req.header(PROJECT_HEADER, p.clone());
                }
                match req.send().await {
                    Ok(resp) if resp.status().as_u16() == 405 => return,
                    Ok(resp) if resp.status().is_success() => {
                        failures = 0;
                        let mut events = SseStream::from_bytes_stream(resp.bytes_stream());
                        while let Some(Ok(event)) = events.next().await {
                            if let Some(value) = event.data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                                self.link.emit(&value).await;
                            }
                        }
                    }
                    _ => {}
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
            }
        });
    }

    /// Ends the daemon-side session (best effort, bounded).
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let (url, session) = {
            let st = self.state();
            (st.endpoint.clone(), st.session.clone())
        };
        if let (Some(url), Some(session)) = (url, session) {
            let req =
                self.link.client.delete(url).headers(self.link.extra_headers.clone()).header(SESSION_HEADER, session);
            let _ = tokio::time::timeout(Duration::from_secs(2), req.send()).await;
        }
    }
}

/// Percent-encodes a project path for `Mcp-Project-Path`: readable for ASCII paths,
/// `%XX` for everything else (non-ASCII, controls, `%` itself).
pub fn encode_project(path: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(path, KEEP).to_string()
}

/// An error with its causes, which is where reqwest says "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
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
    fn project_paths_are_percent_encoded_only_where_needed() {
        assert_eq!(encode_project("/home/u/my-app_1.0"), "/home/u/my-app_1.0");
        assert_eq!(encode_project("/home/工藤/app"), "/home/%E5%B7%A5%E8%97%A4/app");
        assert_eq!(encode_project("/a b/100%"), "/a%20b/100%25");
    }
}
