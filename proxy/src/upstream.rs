//! The relay a session uses, picked by the daemon's `transport`: streamable HTTP and
//! plain HTTP go through [`Relay`], the deprecated HTTP+SSE transport through
//! [`SseRelay`]. Both have the same surface, which is all `stdio` sees.

use std::sync::Arc;

use serde_json::{Value, json};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{DaemonSpec, Transport};
use crate::legacy_sse::SseRelay;
use crate::relay::{Output, Relay, RelayError, encode_project};
use crate::runtime::RuntimeDir;

/// What every relay needs: the daemon and how to find or start it, an HTTP client with
/// the request headers every message carries, and the client's stdout.
pub struct Link {
    pub spec: DaemonSpec,
    pub runtime: RuntimeDir,
    pub manager_port: u16,
    pub client: reqwest::Client,
    /// `Mcp-Project-Path`, percent-encoded.
    pub project: Option<HeaderValue>,
    /// The daemon's configured `headers` (for `url` daemons).
    pub extra_headers: HeaderMap,
    pub out: Output,
}

impl Link {
    pub fn new(spec: DaemonSpec, runtime: RuntimeDir, manager_port: u16, project: Option<&str>, out: Output) -> Link {
        let project = project.and_then(|p| HeaderValue::from_str(&encode_project(p)).ok());
        let mut extra_headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                extra_headers.insert(k, v);
            }
        }
        let client = reqwest::Client::builder().no_proxy().build().unwrap_or_else(|_| reqwest::Client::new());
        Link { spec, runtime, manager_port, client, project, extra_headers, out }
    }

    /// Writes one message to the client as one line.
    pub async fn emit(&self, value: &Value) {
        self.emit_line(value.to_string()).await;
    }

    /// Writes a line that is one JSON message already (see `relay::one_line_json`).
    pub async fn emit_line(&self, line: String) {
        let _ = self.out.send(line).await;
    }

    /// Logs a message that could not be relayed and, for a request, answers the client
    /// with a JSON-RPC error for its id naming the daemon and the cause.
    pub async fn report_failure(&self, method: Option<&str>, id: Option<Value>, e: &RelayError) {
        crate::log(&self.spec.name, &format!("{}: {e}", method.unwrap_or("response")));
        if let (Some(id), Some(_)) = (id, method) {
            // Discovery errors already name the daemon.
            let message = match e {
                RelayError::Discovery(_) => format!("mcp-proxy: {e}"),
                _ => format!("mcp-proxy: daemon `{}`: {e}", self.spec.name),
            };
            self.emit(&json!({"jsonrpc":"2.0","id":id,"error":{"code":-32603,"message":message}})).await;
        }
    }
}

#[derive(Clone)]
pub enum Upstream {
    Streamable(Arc<Relay>),
    LegacySse(Arc<SseRelay>),
}

impl Upstream {
    pub fn new(
        spec: DaemonSpec,
        runtime: RuntimeDir,
        manager_port: u16,
        project: Option<&str>,
        out: Output,
    ) -> Upstream {
        let transport = spec.wire_transport();
        let link = Link::new(spec, runtime, manager_port, project, out);
        match transport {
            Transport::Sse => Upstream::LegacySse(SseRelay::new(link)),
            Transport::StreamableHttp | Transport::Http | Transport::Stdio => Upstream::Streamable(Relay::new(link)),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Upstream::Streamable(r) => r.name(),
            Upstream::LegacySse(r) => r.name(),
        }
    }

    /// Starts finding (or starting) the daemon at once.
    pub fn warm_up(&self) {
        match self {
            Upstream::Streamable(r) => r.warm_up(),
            Upstream::LegacySse(r) => r.warm_up(),
        }
    }

    /// Forwards one client message; every answer and stream message goes to stdout.
    pub async fn forward(&self, message: Value) {
        match self {
            Upstream::Streamable(r) => r.forward(message).await,
            Upstream::LegacySse(r) => r.forward(message).await,
        }
    }

    /// Closes the open `subscriptions/listen` streams (stdin ended: they never finish).
    pub fn end_listens(&self) {
        match self {
            Upstream::Streamable(r) => r.end_listens(),
            Upstream::LegacySse(_) => {}
        }
    }

    /// Ends the daemon-side session (best effort, bounded).
    pub async fn close(&self) {
        match self {
            Upstream::Streamable(r) => r.close().await,
            Upstream::LegacySse(r) => r.close().await,
        }
    }
}

impl From<Arc<Relay>> for Upstream {
    fn from(relay: Arc<Relay>) -> Upstream {
        Upstream::Streamable(relay)
    }
}

impl From<Arc<SseRelay>> for Upstream {
    fn from(relay: Arc<SseRelay>) -> Upstream {
        Upstream::LegacySse(relay)
    }
}
