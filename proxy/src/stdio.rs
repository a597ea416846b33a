//! The client side of the proxy: newline-delimited JSON-RPC on stdin/stdout. Messages
//! are forwarded concurrently (a slow tool call never blocks the next request), except
//! the handshake (`initialize`, `notifications/initialized`), each of which completes
//! before anything after it is sent; one writer task owns
//! stdout so every write is one whole line. stdin EOF or SIGTERM: stop reading, let
//! in-flight requests finish (bounded; open `subscriptions/listen` streams are closed),
//! end the daemon-side session.

use std::time::Duration;

use serde_json::{Value, json};
use std::os::fd::AsFd;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::upstream::Upstream;

/// stdin as an async reader. When it is a pipe (as MCP clients start servers) it is read
/// through the reactor like a socket; tokio's own `stdin()` reads on a blocking thread,
/// and that hand-off per line (plus one per written answer) was most of the latency the
/// proxy added. Anything else (a terminal, a file) falls back to `tokio::io::stdin()`.
fn stdin() -> Box<dyn AsyncRead + Unpin + Send> {
    let pipe = std::io::stdin().as_fd().try_clone_to_owned().and_then(pipe::Receiver::from_owned_fd);
    match pipe {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    }
}

/// stdout as an async writer, a pipe through the reactor as for [`stdin`].
fn stdout() -> Box<dyn AsyncWrite + Unpin + Send> {
    let pipe = std::io::stdout().as_fd().try_clone_to_owned().and_then(pipe::Sender::from_owned_fd);
    match pipe {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdout()),
    }
}

/// How long queued answers may take to reach stdout at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the session until stdin closes or SIGTERM arrives. `make_relay` gets the
/// stdout sender and returns the relay for the daemon's transport.
pub async fn run<R: Into<Upstream>>(
    make_relay: impl FnOnce(mpsc::Sender<String>) -> R,
    drain: Duration,
) -> std::io::Result<()> {
    let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = stdout();
        while let Some(mut line) = out_rx.recv().await {
            line.push('\n');
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let relay: Upstream = make_relay(out_tx.clone()).into();
    relay.warm_up();

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut lines = BufReader::new(stdin()).lines();
    let mut in_flight = JoinSet::new();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            _ = sigint.recv() => {
                crate::log(relay.name(), "SIGINT ignored (the session goes on; SIGTERM or closing stdin ends it)");
                continue;
            }
            _ = sigterm.recv() => {
                crate::log(relay.name(), "SIGTERM: finishing in-flight requests");
                break;
            }
        };
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let error =
                    json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":format!("Parse error: {e}")}});
                let _ = out_tx.send(error.to_string()).await;
                continue;
            }
        };
        // Reap finished forwards so the set does not grow over a long session.
        while in_flight.try_join_next().is_some() {}
        // The handshake keeps its order: `initialize`, then `notifications/initialized`,
        // each delivered before anything after it is sent.
        if matches!(message.get("method").and_then(Value::as_str), Some("initialize" | "notifications/initialized")) {
            relay.forward(message, line).await;
        } else {
            let relay = relay.clone();
            in_flight.spawn(async move { relay.forward(message, line).await });
        }
    }
    relay.end_listens();
    let _ = tokio::time::timeout(drain, async { while in_flight.join_next().await.is_some() {} }).await;
    relay.close().await;
    drop(relay);
    drop(out_tx);
    // The writer ends once every sender is gone; a GET-stream task of an upstream that
    // keeps its stream open after DELETE could hold one, so flushing is bounded.
    match tokio::time::timeout(FLUSH_TIMEOUT, writer).await {
        Ok(joined) => joined.map_err(std::io::Error::other)?,
        Err(_) => Ok(()),
    }
}
