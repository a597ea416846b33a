//! MCP over stdio: newline-delimited JSON-RPC on stdin/stdout, one process per client.
//! stdout carries protocol only (logs go to stderr); an unparseable line gets a parse
//! error with id null and the loop goes on; EOF ends the process with status 0.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::dispatch::McpServer;
use crate::project::ProjectPath;
use crate::protocol::{Answer, Message, RawJson, RequestId, error_response, parse_json, response};
use crate::scope::with_project;
use crate::session::{Session, SessionRegistry};
use crate::stateless::{self, LISTEN};

/// Serves stdin until EOF.
pub async fn run(server: Arc<McpServer>, project: Option<ProjectPath>) -> std::io::Result<()> {
    let (out_tx, mut out_rx) = mpsc::channel::<Answer>(256);
    // One writer task, so every message is one whole line however many producers there are.
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(message) = out_rx.recv().await {
            let mut line = message.to_vec();
            line.push(b'\n');
            stdout.write_all(&line).await?;
            stdout.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });

    // The client on the other end is the one session of this process: resource
    // subscriptions deliver their notifications through it to stdout.
    let sessions = SessionRegistry::new(std::time::Duration::from_secs(u64::MAX / 4));
    let session = sessions.create(crate::protocol::LATEST_VERSION);
    let mut stream = session.open_stream();
    let notify_tx = out_tx.clone();
    let forward = tokio::spawn(async move {
        while let Some(message) = stream.rx.recv().await {
            if notify_tx.send(message.into()).await.is_err() {
                break;
            }
        }
    });

    let mut listens = Listens { out: out_tx.clone(), tasks: Vec::new() };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match parse_json(line.as_bytes()) {
            Err(e) => Some(error_response(None, &e).into()),
            Ok(value) => with_project(project.clone(), handle(&server, &session, &mut listens, value)).await,
        };
        if let Some(reply) = reply
            && out_tx.send(reply).await.is_err()
        {
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

/// The open `subscriptions/listen` subscriptions of this stdio client (2026-07-28),
/// each a task writing its notifications to stdout, ended by `notifications/cancelled`.
struct Listens {
    out: mpsc::Sender<Answer>,
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

async fn handle(server: &McpServer, session: &Arc<Session>, listens: &mut Listens, value: Value) -> Option<Answer> {
    if let Value::Array(items) = value {
        let mut replies = Vec::new();
        for item in items {
            if let Some(r) = Box::pin(handle(server, session, listens, item)).await {
                replies.push(r);
            }
        }
        // Written as one array without parsing raw results back into values.
        return (!replies.is_empty()).then(|| Answer::Raw(RawJson::trusted(Answer::batch_to_vec(&replies))));
    }
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
            match server.listen(&id, params.as_ref()).await {
                Err(e) => Some(error_response(Some(&id), &e).into()),
                Ok(mut listener) => {
                    let out = listens.out.clone();
                    let task = tokio::spawn(async move {
                        loop {
                            let message = listener.next().await;
                            if out.send(message.into()).await.is_err() {
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
                server.initialize(params.as_ref()).map(|(result, _)| result.into())
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
