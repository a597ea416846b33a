//! How the streamable relay sends its requests: through reqwest for every daemon but a
//! hosted stdio server, and through hyper's pooled HTTP/1 client itself for mcp-host.
//! reqwest wraps that same client in layers mcp-host has no use for (it never redirects,
//! and the relay sets its own timeouts), and for each request it copied the headers,
//! turned the URL into a URI and, for its redirect policy, back into a URL: half of the
//! proxy's work per call. Both clients keep connections alive and reuse them; the wire
//! is the same (HTTP/1.1, `Host` from the URL, `TCP_NODELAY`).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use sse_stream::{Sse, SseStream};

use crate::relay::error_chain;

/// How long an idle connection is kept for reuse (reqwest's default, kept).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// hyper's client, straight, for mcp-host.
#[derive(Clone)]
pub struct Direct {
    client: Pooled<HttpConnector, String>,
}

impl Direct {
    pub fn new() -> Direct {
        let mut connector = HttpConnector::new();
        // As reqwest sets it: a request is one small write, never held back.
        connector.set_nodelay(true);
        let client = Pooled::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        Direct { client }
    }

    async fn send(&self, method: Method, url: &url::Url, headers: HeaderMap, body: String) -> Result<Reply, String> {
        let uri: hyper::Uri = url.as_str().parse().map_err(|e| format!("{url}: {e}"))?;
        let mut request = hyper::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.client.request(request).await.map(Reply::Direct).map_err(|e| error_chain(&e))
    }
}

impl Default for Direct {
    fn default() -> Direct {
        Direct::new()
    }
}

/// Sends one request with `direct` when given, else with `reqwest`.
pub async fn send(
    reqwest: &reqwest::Client,
    direct: Option<&Direct>,
    method: Method,
    url: &url::Url,
    headers: HeaderMap,
    body: String,
) -> Result<Reply, String> {
    match direct {
        Some(direct) => direct.send(method, url, headers, body).await,
        None => {
            let request = reqwest.request(method, url.clone()).headers(headers);
            // No body at all rather than an empty one, as before.
            let request = if body.is_empty() { request } else { request.body(body) };
            request.send().await.map(Reply::Reqwest).map_err(|e| error_chain(&e))
        }
    }
}

/// A daemon's reply, from whichever client sent the request.
pub enum Reply {
    Reqwest(reqwest::Response),
    Direct(hyper::Response<Incoming>),
}

/// The events of a reply that is an event stream.
pub type Events = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

impl Reply {
    pub fn status(&self) -> StatusCode {
        match self {
            Reply::Reqwest(r) => r.status(),
            Reply::Direct(r) => r.status(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match self {
            Reply::Reqwest(r) => r.headers(),
            Reply::Direct(r) => r.headers(),
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, String> {
        match self {
            Reply::Reqwest(r) => r.bytes().await.map_err(|e| error_chain(&e)),
            Reply::Direct(r) => r.into_body().collect().await.map(|body| body.to_bytes()).map_err(|e| error_chain(&e)),
        }
    }

    /// The body read as an event stream.
    pub fn events(self) -> Events {
        match self {
            Reply::Reqwest(r) => Box::pin(SseStream::from_bytes_stream(r.bytes_stream())),
            Reply::Direct(r) => Box::pin(SseStream::new(r.into_body())),
        }
    }
}
