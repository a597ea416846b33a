//! The relay a session uses, picked by the daemon's `transport`: streamable HTTP, plain
//! HTTP and hosted stdio servers go through [`Relay`], the deprecated HTTP+SSE transport
//! through [`SseRelay`]. Both have the same surface, which is all `stdio` sees; around
//! them sits what is the same for every transport: the tool filter ([`ToolGate`]: every
//! client message passes [`Upstream::forward`], every line to the client passes
//! [`Link::emit`] or [`Link::emit_line`]).

use std::sync::Arc;

use serde_json::{Value, json};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{DaemonSpec, Transport};
use crate::filter::ToolGate;
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
    /// The tool filter: sees every line written to the client.
    pub gate: Arc<ToolGate>,
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
        let gate = Arc::new(ToolGate::new(&spec.name, spec.tools.clone()));
        Link { spec, runtime, manager_port, client, project, extra_headers, out, gate }
    }

    /// Writes one message to the client as one line (without the filtered tools when it
    /// answers a `tools/list`).
    pub async fn emit(&self, value: &Value) {
        let line = self.gate.outgoing(value).to_string();
        let _ = self.out.send(line).await;
    }

    /// Writes a line that is one JSON message already (see `relay::one_line_json`); the
    /// tool filter looks into it only while a `tools/list` is in flight.
    pub async fn emit_line(&self, line: String) {
        let _ = self.out.send(self.gate.outgoing_line(line)).await;
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
enum Kind {
    Streamable(Arc<Relay>),
    LegacySse(Arc<SseRelay>),
}

#[derive(Clone)]
pub struct Upstream {
    kind: Kind,
    gate: Arc<ToolGate>,
    out: Output,
    name: Arc<str>,
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
        let name: Arc<str> = spec.name.as_str().into();
        let link = Link::new(spec, runtime, manager_port, project, out.clone());
        let gate = link.gate.clone();
        let kind = match transport {
            Transport::Sse => Kind::LegacySse(SseRelay::new(link)),
            Transport::StreamableHttp | Transport::Http | Transport::Stdio => Kind::Streamable(Relay::new(link)),
        };
        Upstream { kind, gate, out, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts finding (or starting) the daemon at once.
    pub fn warm_up(&self) {
        match &self.kind {
            Kind::Streamable(r) => r.warm_up(),
            Kind::LegacySse(r) => r.warm_up(),
        }
    }

    /// Forwards one client message; every answer and stream message goes to stdout. A
    /// call of a filtered tool is answered here and never sent.
    pub async fn forward(&self, message: Value) {
        let admitted = self.gate.admit(message);
        if let Some(refusal) = admitted.refusal {
            let _ = self.out.send(refusal.to_string()).await;
        }
        if let Some(message) = admitted.forward {
            match &self.kind {
                Kind::Streamable(r) => r.forward(message).await,
                Kind::LegacySse(r) => r.forward(message).await,
            }
        }
        // The relays return once the answer is written (or given up on).
        self.gate.release(&admitted.listing);
    }

    /// Closes the open `subscriptions/listen` streams (stdin ended: they never finish).
    pub fn end_listens(&self) {
        match &self.kind {
            Kind::Streamable(r) => r.end_listens(),
            Kind::LegacySse(_) => {}
        }
    }

    /// Ends the daemon-side session (best effort, bounded).
    pub async fn close(&self) {
        match &self.kind {
            Kind::Streamable(r) => r.close().await,
            Kind::LegacySse(r) => r.close().await,
        }
    }
}
