//! MCP over stdio: newline-delimited JSON-RPC on stdin/stdout, one process per client.
//! stdout carries protocol only (logs go to stderr); an unparseable line gets a parse
//! error with id null and the loop goes on; EOF ends the process with status 0. A line
//! longer than `--max-body-bytes` is refused without being held (its rest is skipped as
//! it arrives), and a batch's replies go out as they are produced.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mcp_wire::LISTEN;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use crate::dispatch::McpServer;
use crate::project::ProjectPath;
use crate::protocol::{Answer, Incoming, Message, RequestId, RpcError, code, error_response, parse_json, response};
use crate::scope::with_project;
use crate::session::{Session, SessionRegistry};
use crate::stateless;
use crate::streams::StreamKind;

/// Bytes asked of stdin per read; a line is assembled from as many reads as it takes.
const READ_CHUNK: usize = 64 * 1024;

/// The limits of `memory-server stdio`.
#[derive(Debug, Clone, Copy)]
pub struct StdioLimits {
    /// Messages a batch may hold.
    pub max_batch: usize,
    /// Bytes a line may hold, without its newline.
    pub max_line_bytes: usize,
}

/// What the writer task writes: one whole line, or a batch's replies as they come.
enum Out {
    Line(Answer),
    /// The writer holds stdout until the sender is dropped, so nothing interleaves
    /// with the batch's array; a batch that answers nothing writes nothing.
    Batch(mpsc::Receiver<Answer>),
}

/// The writer task is gone (stdout closed); nothing more can be answered.
struct WriterGone;

/// Serves stdin until EOF.
pub async fn run(server: Arc<McpServer>, project: Option<ProjectPath>, limits: StdioLimits) -> std::io::Result<()> {
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let writer = tokio::spawn(write_stdout(out_rx));

    // The client on the other end is the one session of this process: resource
    // subscriptions deliver their notifications through it to stdout.
    let sessions = SessionRegistry::new(std::time::Duration::from_secs(u64::MAX / 4));
    let session = sessions.create(crate::protocol::LATEST_VERSION);
    let mut stream = session.open_stream();
    let notify_tx = out_tx.clone();
    let forward = tokio::spawn(async move {
        while let Some(message) = stream.rx.recv().await {
            if notify_tx.send(Out::Line(message.into())).await.is_err() {
                break;
            }
        }
    });

    let mut listens = Listens { out: out_tx.clone(), tasks: Vec::new() };
    let mut stdin = tokio::io::stdin();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Finds lines and, past the limit, discards the rest of a line as it is read.
    let mut lines = LinesCodec::new_with_max_length(limits.max_line_bytes);
    let mut eof = false;
    loop {
        let decoded = if eof { lines.decode_eof(&mut buf) } else { lines.decode(&mut buf) };
        let served = match decoded {
            Ok(None) if eof => break,
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                eof = stdin.read_buf(&mut buf).await? == 0;
                continue;
            }
            Ok(Some(line)) if line.trim().is_empty() => continue,
            Ok(Some(line)) => match Incoming::parse(Bytes::from(line), limits.max_batch) {
                Err(e) => send(&out_tx, Some(error_response(None, &e).into())).await,
                Ok(Incoming::Single(value)) => {
                    let reply = with_project(project.clone(), handle(&server, &session, &mut listens, value)).await;
                    send(&out_tx, reply).await
                }
                Ok(Incoming::Batch(messages)) => {
                    let batch = serve_batch(&server, &session, &mut listens, messages);
                    with_project(project.clone(), batch).await
                }
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let e = RpcError::invalid_request(format!(
                    "Invalid request: a line may hold at most {} bytes (--max-body-bytes); this one is longer and is \
                     skipped",
                    limits.max_line_bytes
                ));
                send(&out_tx, Some(error_response(None, &e).into())).await
            }
            // The codec's only I/O error: the line (already consumed) is not UTF-8.
            Err(LinesCodecError::Io(_)) => {
                let e = RpcError::parse("Parse error: the line is not valid UTF-8");
                send(&out_tx, Some(error_response(None, &e).into())).await
            }
        };
        if served.is_err() {
            break;
        }
    }
    forward.abort();
    for (_, task) in listens.tasks.drain(..) {
        task.abort();
    }
    drop(listens);
    drop(out_tx);
    drop(sessions);
    writer.await.map_err(std::io::Error::other)?
}

async fn send(out: &mpsc::Sender<Out>, reply: Option<Answer>) -> Result<(), WriterGone> {
    match reply {
        Some(reply) => out.send(Out::Line(reply)).await.map_err(|_| WriterGone),
        None => Ok(()),
    }
}

/// Runs a batch's messages in order, each handed to the writer before the next runs (a
/// channel of one), so about one reply of the batch exists at a time.
async fn serve_batch(
    server: &McpServer,
    session: &Arc<Session>,
    listens: &mut Listens,
    messages: Vec<Bytes>,
) -> Result<(), WriterGone> {
    let (tx, rx) = mpsc::channel(1);
    listens.out.send(Out::Batch(rx)).await.map_err(|_| WriterGone)?;
    for raw in messages {
        let reply = match parse_json(&raw) {
            Err(e) => Some(error_response(None, &e).into()),
            Ok(value) => handle(server, session, listens, value).await,
        };
        if let Some(reply) = reply {
            tx.send(reply).await.map_err(|_| WriterGone)?;
        }
    }
    Ok(())
}

/// The one writer of stdout, so every message is one whole line however many producers
/// there are.
async fn write_stdout(mut out: mpsc::Receiver<Out>) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(item) = out.recv().await {
        match item {
            Out::Line(message) => {
                let mut line = message.to_vec();
                line.push(b'\n');
                stdout.write_all(&line).await?;
            }
            Out::Batch(mut replies) => {
                let mut prefix: &[u8] = b"[";
                let mut answered = false;
                while let Some(reply) = replies.recv().await {
                    for chunk in reply.into_chunks(prefix) {
                        stdout.write_all(&chunk).await?;
                    }
                    prefix = b",";
                    answered = true;
                }
                if answered {
                    stdout.write_all(b"]\n").await?;
                }
            }
        }
        stdout.flush().await?;
    }
    Ok(())
}

/// The open `subscriptions/listen` subscriptions of this stdio client (2026-07-28),
/// each a task writing its notifications to stdout, ended by `notifications/cancelled`.
struct Listens {
    out: mpsc::Sender<Out>,
    tasks: Vec<(RequestId, tokio::task::JoinHandle<()>)>,
}

impl Listens {
    fn cancel(&mut self, id: &Value) {
        self.tasks.retain(|(task_id, task)| {
            let keep = task_id != id && !task.is_finished();
            if task_id == id {
                task.abort();
            }
            keep
        });
    }
}

/// One message (on its own or from a batch).
async fn handle(server: &McpServer, session: &Arc<Session>, listens: &mut Listens, value: Value) -> Option<Answer> {
    match Message::from_value(value) {
        Err((id, e)) => Some(error_response(id.as_ref(), &e).into()),
        Ok(Message::Request { id, method, params }) if stateless::is_stateless(params.as_ref()) => {
            // 2026-07-28 on stdio: the version travels in `_meta`, no handshake needed.
            if let Err(e) = stateless::check_version(params.as_ref()) {
                return Some(error_response(Some(&id), &e).into());
            }
            if method != LISTEN {
                return Some(match server.handle_stateless(&method, params).await {
                    Ok(r) => response(&id, r),
                    Err(e) => error_response(Some(&id), &e).into(),
                });
            }
            // Counted with the daemon's streams, but not limited: this client is the
            // process's only one.
            let permit = match server.streams.open(StreamKind::Listen, usize::MAX) {
                Ok(permit) => permit,
                Err(e) => {
                    return Some(error_response(Some(&id), &RpcError::new(code::SERVER_BUSY, e.to_string())).into());
                }
            };
            match server.listen(&id, params.as_ref(), permit).await {
                Err(e) => Some(error_response(Some(&id), &e).into()),
                Ok(mut listener) => {
                    let out = listens.out.clone();
                    let task = tokio::spawn(async move {
                        loop {
                            let message = listener.next().await;
                            if out.send(Out::Line(message.into())).await.is_err() {
                                return;
                            }
                        }
                    });
                    listens.cancel(&id);
                    listens.tasks.push((id, task));
                    None
                }
            }
        }
        Ok(Message::Notification { method, params }) if method == "notifications/cancelled" => {
            if let Some(id) = params.as_ref().and_then(|p| p.get("requestId")) {
                listens.cancel(id);
            }
            None
        }
        Ok(Message::Request { id, method, params }) => {
            let result = if method == "initialize" {
                server.initialize(params.as_ref()).map(|(result, version)| {
                    let project = crate::scope::current_project();
                    let project = project.as_ref().map(|p| p.as_path().display().to_string());
                    tracing::info!(protocol_version = version, project, "stdio client initialized");
                    result.into()
                })
            } else {
                server.handle(Some(session), &method, params).await
            };
            Some(match result {
                Ok(r) => response(&id, r),
                Err(e) => error_response(Some(&id), &e).into(),
            })
        }
        Ok(Message::Notification { .. } | Message::Response { .. }) => None,
    }
}
