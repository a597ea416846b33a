//! HTTP framing of the stateless revision 2026-07-28 (SPEC 2.9) on the shared `/mcp`:
//! the required headers checked against the body (`HeaderMismatch`, 400), the version
//! (`UnsupportedProtocolVersion`, 400), unknown methods (404), no session read or issued,
//! request replies as JSON or as an SSE stream whose closing cancels the request, and
//! `subscriptions/listen` as a long-lived SSE stream. What is decided here is decided in
//! `crate::stateless`; errors still become responses only in `http::rpc_error_response`.

use std::convert::Infallible;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use mcp_wire::{LISTEN, METHOD_HEADER, NAME_HEADER, VERSION_HEADER};
use serde_json::Value;

use super::http::{AppState, ReplyFormat, accepts, rpc_error_response, too_many_streams};
use crate::protocol::{Answer, Incoming, Message, RequestId, RpcError, error_response, meta_version, response};
use crate::stateless::{self, Listener};
use crate::streams::StreamKind;

/// Serves one POST of the stateless revision (the body already parsed).
pub(super) async fn post(
    st: &AppState,
    headers: &HeaderMap,
    parsed: Result<Incoming, RpcError>,
    reply_as: ReplyFormat,
) -> Response {
    let value = match parsed {
        Ok(Incoming::Single(v)) => v,
        Ok(Incoming::Batch(_)) => {
            let e = RpcError::invalid_request("Invalid request: protocol version 2026-07-28 does not allow batches");
            return rpc_error_response(StatusCode::BAD_REQUEST, None, &e);
        }
        Err(e) => return rpc_error_response(StatusCode::BAD_REQUEST, None, &e),
    };
    let (id, method, params) = match Message::from_value(value) {
        Err((id, e)) => return rpc_error_response(StatusCode::BAD_REQUEST, id.as_ref(), &e),
        Ok(Message::Request { id, method, params }) => (id, method, params),
        // The revision defines no client notifications over HTTP; accept and ignore them.
        Ok(Message::Notification { .. }) => return StatusCode::ACCEPTED.into_response(),
        Ok(Message::Response { id }) => {
            let e = RpcError::invalid_request("Invalid request: clients of 2026-07-28 send no responses");
            return rpc_error_response(StatusCode::BAD_REQUEST, Some(&id), &e);
        }
    };
    if let Err((status, e)) = validate(headers, &method, params.as_ref()) {
        return rpc_error_response(status, Some(&id), &e);
    }
    tracing::debug!(%method, "stateless request");
    if method == LISTEN {
        return listen(st, headers, id, params).await;
    }
    match reply_as {
        ReplyFormat::Json => {
            let reply = reply(&id, st.server.handle_stateless(&method, params).await);
            reply_as.respond(StatusCode::OK, &reply)
        }
        ReplyFormat::EventStream => {
            // The work runs in its own task; the response stream owns it, so a client
            // that closes the stream aborts the request (the revision's cancellation).
            let server = st.server.clone();
            // A spawned task does not inherit the request's task-local project.
            let scope = crate::scope::capture();
            let task = AbortOnDrop(tokio::spawn(crate::scope::within(
                scope,
                crate::scope::cancellable(async move {
                    let result = server.handle_stateless(&method, params).await;
                    reply(&id, result)
                }),
            )));
            let events = stream::unfold(Some(task), |task| async move {
                let mut task = task?;
                let message = (&mut task.0).await.unwrap_or_else(|e| {
                    error_response(None, &RpcError::internal(format!("request failed: {e}"))).into()
                });
                Some((Ok::<_, Infallible>(Event::default().event("message").data(message.to_string())), None))
            });
            sse(Sse::new(events).keep_alive(KeepAlive::new().interval(st.config.keep_alive)))
        }
    }
}

fn reply(id: &RequestId, result: Result<Answer, RpcError>) -> Answer {
    match result {
        Ok(result) => response(id, result),
        Err(e) => error_response(Some(id), &e).into(),
    }
}

/// The revision's Server Validation, in order: the version header (present, equal to
/// the body), the version itself, `Mcp-Method`, the method, `Mcp-Name`.
fn validate(headers: &HeaderMap, method: &str, params: Option<&Value>) -> Result<(), (StatusCode, RpcError)> {
    let bad = |e: RpcError| (StatusCode::BAD_REQUEST, e);
    let header_version = header_text(headers, VERSION_HEADER, "MCP-Protocol-Version").map_err(bad)?;
    match (header_version, meta_version(params)) {
        (None, _) => return Err(bad(RpcError::header_mismatch("the required MCP-Protocol-Version header is missing"))),
        (Some(h), Some(Ok(b))) if h != b => {
            return Err(bad(RpcError::header_mismatch(format!(
                "MCP-Protocol-Version header value '{h}' does not match body value '{b}'"
            ))));
        }
        _ => {}
    }
    stateless::check_version(params).map_err(bad)?;
    match header_text(headers, METHOD_HEADER, "Mcp-Method").map_err(bad)? {
        None => return Err(bad(RpcError::header_mismatch("the required Mcp-Method header is missing"))),
        Some(h) if h != method => {
            return Err(bad(RpcError::header_mismatch(format!(
                "Mcp-Method header value '{h}' does not match body value '{method}'"
            ))));
        }
        Some(_) => {}
    }
    if !stateless::METHODS.contains(&method) {
        return Err((StatusCode::NOT_FOUND, RpcError::method_not_found(method)));
    }
    if let Some(body_name) = stateless::name_source(method, params) {
        let Some(raw) = header_text(headers, NAME_HEADER, "Mcp-Name").map_err(bad)? else {
            return Err(bad(RpcError::header_mismatch(format!("the Mcp-Name header is required for {method}"))));
        };
        let name = stateless::decode_header_value(raw).map_err(bad)?;
        if Some(name.as_str()) != body_name {
            return Err(bad(RpcError::header_mismatch(format!(
                "Mcp-Name header value '{name}' does not match body value '{}'",
                body_name.unwrap_or("(none)")
            ))));
        }
    }
    Ok(())
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str, display: &str) -> Result<Option<&'a str>, RpcError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| RpcError::header_mismatch(format!("the {display} header contains invalid characters"))),
    }
}

/// `subscriptions/listen`: the acknowledgement, then the opted-in notifications, with
/// keep-alive comments, until the client closes the stream (which drops the
/// subscription) or the daemon shuts down (which sends the closing response first).
async fn listen(st: &AppState, headers: &HeaderMap, id: RequestId, params: Option<Value>) -> Response {
    if !accepts(headers, "text/event-stream") {
        let e = RpcError::invalid_request("Not Acceptable: subscriptions/listen needs Accept: text/event-stream");
        return rpc_error_response(StatusCode::NOT_ACCEPTABLE, Some(&id), &e);
    }
    let permit = match st.server.streams.open(StreamKind::Listen, st.config.max_streams) {
        Ok(permit) => permit,
        Err(e) => return too_many_streams(Some(&id), &e),
    };
    let listener = match st.server.listen(&id, params.as_ref(), permit).await {
        Ok(l) => l,
        Err(e) => return ReplyFormat::Json.respond(StatusCode::OK, &error_response(Some(&id), &e).into()),
    };
    let shutdown = st.server.shutdown.clone();
    sse(Sse::new(listen_events(listener, shutdown)).keep_alive(KeepAlive::new().interval(st.config.keep_alive)))
}

fn listen_events(
    listener: Listener,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(listener), move |listener| {
        let shutdown = shutdown.clone();
        async move {
            let mut listener = listener?;
            let (message, next) = tokio::select! {
                message = listener.next() => (message, Some(listener)),
                () = shutdown.cancelled() => (listener.closing_response(), None),
            };
            Some((Ok(Event::default().event("message").data(message.to_string())), next))
        }
    })
}

fn sse<S>(sse: Sse<S>) -> Response
where
    Sse<S>: IntoResponse,
{
    let mut resp = sse.into_response();
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            tracing::info!("request cancelled: the client closed its response stream");
        }
        self.0.abort();
    }
}
