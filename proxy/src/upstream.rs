//! The relay a session uses, picked by the daemon's `transport`: streamable HTTP, plain
//! HTTP and hosted stdio servers go through [`Relay`], the deprecated HTTP+SSE transport
//! through [`SseRelay`]. Both have the same surface, which is all `stdio` sees; around
//! them sits what is the same for every transport: the tool filter ([`ToolGate`]: every
//! client message passes [`Upstream::forward`], every line to the client passes
//! [`Link::emit`] or [`Link::emit_line`]) and the HTTP client with its TLS roots.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use mcp_wire::{PROJECT_HEADER, PROJECT_ID_HEADER};
use serde_json::{Value, json};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder};

use crate::config::{DaemonSpec, ProjectId, Target, Transport};
use crate::filter::ToolGate;
use crate::http_client::{Direct, Reply};
use crate::legacy_sse::SseRelay;
use crate::relay::{Output, Relay, RelayError, encode_project, error_chain};
use crate::runtime::RuntimeDir;

const PROJECT: HeaderName = HeaderName::from_static(PROJECT_HEADER);
const PROJECT_ID: HeaderName = HeaderName::from_static(PROJECT_ID_HEADER);

/// What every relay needs: the daemon and how to find or start it, an HTTP client with
/// the request headers every message carries, and the client's stdout.
pub struct Link {
    pub spec: DaemonSpec,
    pub runtime: RuntimeDir,
    pub manager_port: u16,
    pub client: reqwest::Client,
    /// For a hosted stdio server (mcp-host): hyper's client itself, which the streamable
    /// relay sends with instead of `client` (`http_client`).
    pub direct: Option<Direct>,
    /// `Mcp-Project-Path`, percent-encoded.
    pub project: Option<HeaderValue>,
    /// `Mcp-Project-Id` (`project_id = "git-remote"`), percent-encoded: worked out once, on
    /// a blocking thread started with the proxy, so it reads the repository while
    /// discovery pings the daemon rather than before; a request awaits it (at once, after
    /// the first).
    project_id: Option<Shared<BoxFuture<'static, Option<HeaderValue>>>>,
    /// The daemon's configured `headers` (for `url` daemons).
    pub extra_headers: HeaderMap,
    pub out: Output,
    /// The tool filter: sees every line written to the client.
    pub gate: Arc<ToolGate>,
    /// Why no request can reach the daemon as configured (a `ca_file` that cannot be
    /// read or parsed), when so: every request is answered with it.
    pub unusable: Option<String>,
}

impl Link {
    pub fn new(spec: DaemonSpec, runtime: RuntimeDir, manager_port: u16, project: Option<&str>, out: Output) -> Link {
        let project_id = match (spec.project_id, project) {
            (Some(ProjectId::GitRemote), Some(dir)) => Some(project_identity(&spec.name, dir)),
            _ => None,
        };
        let project = project.and_then(|p| HeaderValue::from_str(&encode_project(p)).ok());
        let mut extra_headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                extra_headers.insert(k, v);
            }
        }
        let (client, unusable) = match http_client(&spec) {
            Ok(client) => (client, None),
            Err(problem) => (plain_client(), Some(problem)),
        };
        let gate = Arc::new(ToolGate::new(&spec.name, spec.tools.clone()));
        let direct = (spec.transport == Transport::Stdio).then(Direct::new);
        Link { spec, runtime, manager_port, client, direct, project, project_id, extra_headers, out, gate, unusable }
    }

    /// `req` with the project's headers: `Mcp-Project-Path`, and `Mcp-Project-Id` when
    /// configured.
    pub async fn with_project(&self, mut req: RequestBuilder) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        self.project_headers(&mut headers).await;
        for (name, value) in headers {
            if let Some(name) = name {
                req = req.header(name, value);
            }
        }
        req
    }

    /// Adds the project's headers (see [`Link::with_project`]) to `headers`.
    pub async fn project_headers(&self, headers: &mut HeaderMap) {
        if let Some(p) = &self.project {
            headers.insert(PROJECT, p.clone());
        }
        if let Some(id) = &self.project_id
            && let Some(id) = id.clone().await
        {
            headers.insert(PROJECT_ID, id);
        }
    }

    /// Sends one request of the streamable relay (`headers` as they go, the configured
    /// ones among them), with `direct` when the daemon is hosted, else with `client`.
    pub async fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: String,
    ) -> Result<Reply, String> {
        crate::http_client::send(&self.client, self.direct.as_ref(), method, url, headers, body).await
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

/// Starts working out `Mcp-Project-Id` for `dir` on a blocking thread (file reads, see
/// `project_id.rs`), logging the id once.
fn project_identity(name: &str, dir: &str) -> Shared<BoxFuture<'static, Option<HeaderValue>>> {
    let (name, dir) = (name.to_owned(), dir.to_owned());
    let task = tokio::task::spawn_blocking(move || {
        let id = crate::project_id::identity(&dir);
        crate::log(&name, &format!("Mcp-Project-Id: {id}"));
        HeaderValue::from_str(&encode_project(&id)).ok()
    });
    task.map(|joined| joined.ok().flatten()).boxed().shared()
}

/// The HTTP client for a daemon. Only an `https://` url daemon gets TLS roots: the
/// system's (rustls-platform-verifier reads them when the client is built) plus its
/// `ca_file`, every certificate of which is trusted beside them. Everything else is plain
/// HTTP, so reading the system's root store would only cost start-up time (and fail on a
/// machine that has none). `Err` names the `ca_file` (or the TLS set-up) that is unusable.
fn http_client(spec: &DaemonSpec) -> Result<reqwest::Client, String> {
    let https = matches!(&spec.target, Target::Remote { url } if url.scheme() == "https");
    if !https {
        return Ok(plain_client());
    }
    // Never through a proxy from the environment: the daemon is the one configured.
    let builder = reqwest::Client::builder().no_proxy();
    let Some(path) = &spec.ca_file else {
        return builder.build().map_err(|e| format!("cannot set up TLS: {}", error_chain(&e)));
    };
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {shown}: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("cannot parse ca_file {shown}: {}", error_chain(&e)))?;
    if certs.is_empty() {
        return Err(format!("cannot parse ca_file {shown}: it holds no PEM certificate"));
    }
    // The verifier parses each certificate when the client is built: a PEM block whose
    // contents are not a certificate is refused there.
    builder.tls_certs_merge(certs).build().map_err(|e| format!("cannot use ca_file {shown}: {}", error_chain(&e)))
}

/// A client that never speaks TLS (no roots at all, so building it reads nothing from
/// the system and cannot fail on the environment's account).
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().tls_certs_only([]).build().unwrap_or_else(|_| reqwest::Client::new())
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
    /// `Link::unusable`: every request is answered with it, nothing is sent.
    unusable: Option<Arc<str>>,
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
        let unusable = link.unusable.as_deref().map(Arc::from);
        let kind = match transport {
            Transport::Sse => Kind::LegacySse(SseRelay::new(link)),
            Transport::StreamableHttp | Transport::Http | Transport::Stdio => Kind::Streamable(Relay::new(link)),
        };
        Upstream { kind, gate, out, name, unusable }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts finding (or starting) the daemon at once.
    pub fn warm_up(&self) {
        if let Some(problem) = &self.unusable {
            crate::log(&self.name, problem);
            return;
        }
        match &self.kind {
            Kind::Streamable(r) => r.warm_up(),
            Kind::LegacySse(r) => r.warm_up(),
        }
    }

    /// Forwards one client message (`line`: its text as the client wrote it); every
    /// answer and stream message goes to stdout. A call of a filtered tool is answered
    /// here and never sent.
    pub async fn forward(&self, message: Value, line: String) {
        if let Some(problem) = &self.unusable {
            if let Some(answer) =
                answer_requests(&message, -32603, &format!("mcp-proxy: daemon `{}`: {problem}", self.name))
            {
                let _ = self.out.send(answer.to_string()).await;
            }
            return;
        }
        // The gate passes a single message whole or not at all (only a batch can lose
        // some of its calls), so a single one goes as the client wrote it.
        let text = (!message.is_array()).then_some(line);
        let admitted = self.gate.admit(message);
        if let Some(refusal) = admitted.refusal {
            let _ = self.out.send(refusal.to_string()).await;
        }
        if let Some(message) = admitted.forward {
            match &self.kind {
                Kind::Streamable(r) => r.forward(message, text).await,
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

/// The error answer (`code`, `message`) for every request in `message` (a batch gets an
/// array); `None` when it holds no request (notifications and client responses).
fn answer_requests(message: &Value, code: i64, text: &str) -> Option<Value> {
    let answer = |m: &Value| {
        let id = m.get("id").filter(|id| !id.is_null() && m.get("method").is_some())?;
        Some(json!({"jsonrpc":"2.0","id":id,"error":{"code":code,"message":text}}))
    };
    match message {
        Value::Array(batch) => {
            let answers: Vec<Value> = batch.iter().filter_map(answer).collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        m => answer(m),
    }
}
