//! Accepts the daemon's connections: TCP_NODELAY on each, at most `--max-connections`
//! open at once (one more is answered 503 and closed), and, when only the daemon's own
//! user is served, the uid behind each connection, looked up once when it is accepted.
//! With `--tls-cert`, each connection's TLS handshake runs in a task of its own (bounded
//! in time), never in the accept loop, and the connection is handed to axum once it is
//! done; a plain-HTTP request on the TLS port gets a 400 saying so.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use loopback_guard::peer::Owner;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::protocol::{RpcError, code, error_response};

/// How long a refused connection may take to send its request before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How much of a refused connection's request is read (and dropped) before closing.
const LINGER_BYTES: usize = 64 * 1024;
/// Refused connections being answered at once; beyond it they are answered with what
/// fits in the socket at once and closed, so a flood costs no more than this.
const MAX_LINGERING: usize = 64;
/// At most one warning about refused connections per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long a connection to the TLS port may take to send its first byte and finish the
/// handshake; it holds a place under `--max-connections` meanwhile.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of every TLS connection: a handshake record (its ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Who is at the other end of a connection; every request carries it (`ConnectInfo`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `None` when the rule does not apply (a token is configured) and nobody looked.
    pub owner: Option<Owner>,
}

impl Connected<IncomingStream<'_, ConnectionListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ConnectionListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub struct ConnectionListener {
    tcp: TcpListener,
    local: SocketAddr,
    max: usize,
    permits: Arc<Semaphore>,
    lingering: Arc<Semaphore>,
    look_up_owner: bool,
    busy_reply: Arc<[u8]>,
    refused: RefusalLog,
    /// `--tls-cert`: every connection is TLS.
    tls: Option<Tls>,
}

/// What the TLS handshakes share: the acceptor, the channel on which each handshake's
/// task hands its finished connection to `accept`, and the answer to plain HTTP.
struct Tls {
    acceptor: TlsAcceptor,
    ready_tx: mpsc::UnboundedSender<(Connection, Peer)>,
    ready: mpsc::UnboundedReceiver<(Connection, Peer)>,
    plain_reply: Arc<[u8]>,
}

impl ConnectionListener {
    /// `look_up_owner`: find each connection's uid (only the daemon's own user is served).
    /// `tls`: serve HTTPS only.
    pub fn new(
        tcp: TcpListener,
        max_connections: usize,
        look_up_owner: bool,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let tls = tls.map(|acceptor| {
            let (ready_tx, ready) = mpsc::unbounded_channel();
            Tls { acceptor, ready_tx, ready, plain_reply: plain_http_reply().into() }
        });
        Ok(ConnectionListener {
            local: tcp.local_addr()?,
            tcp,
            max: max_connections,
            permits: Arc::new(Semaphore::new(max_connections)),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
            look_up_owner,
            busy_reply: busy_reply(max_connections).into(),
            refused: RefusalLog::default(),
            tls,
        })
    }

    /// Answers a connection beyond the limit with the 503 (over TLS on the TLS port, so
    /// the client can read it) and closes it.
    fn refuse(&mut self, tcp: TcpStream) {
        self.refused.note(self.max);
        match self.lingering.clone().try_acquire_owned() {
            Ok(permit) => {
                let reply = self.busy_reply.clone();
                let acceptor = self.tls.as_ref().map(|tls| tls.acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => answer_and_close(tcp, &reply).await,
                        Some(acceptor) => {
                            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                answer_and_close(tls, &reply).await;
                            }
                        }
                    }
                    drop(permit);
                });
            }
            // Plain bytes would be noise to a TLS client: it just sees the connection close.
            Err(_) if self.tls.is_some() => {}
            Err(_) => {
                let _ = tcp.try_write(&self.busy_reply);
            }
        }
    }
}

/// One connection to the TLS port, in its own task: its first byte (a TLS handshake
/// record, else plain HTTP, answered 400 and closed), then the handshake, all within
/// [`HANDSHAKE_TIMEOUT`]; a finished connection goes to `accept` through `ready`. A
/// failed one is only logged at debug level (scanners would fill the log), and its place
/// under `--max-connections` (`permit`) is given back as it is dropped.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    peer: Peer,
    ready: mpsc::UnboundedSender<(Connection, Peer)>,
    plain_reply: Arc<[u8]>,
) {
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) => return Err("closed before sending anything".to_owned()),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                answer_and_close(tcp, &plain_reply).await;
                return Err("plain HTTP on the TLS port: answered 400".to_owned());
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        acceptor.accept(tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))
    })
    .await;
    match outcome {
        Ok(Ok(tls)) => {
            // Fails only when the server is shutting down: the connection is then dropped.
            let _ = ready.send((Connection { io: Io::Tls(Box::new(tls)), _permit: permit }, peer));
        }
        Ok(Err(reason)) => tracing::debug!(peer = %peer.addr, reason, "connection closed"),
        Err(_) => tracing::debug!(peer = %peer.addr, "TLS handshake timed out; connection closed"),
    }
}

impl Listener for ConnectionListener {
    type Io = Connection;
    type Addr = Peer;

    async fn accept(&mut self) -> (Connection, Peer) {
        loop {
            // Both cancel-safe: axum drops this future at shutdown.
            let accepted = match &mut self.tls {
                None => self.tcp.accept().await,
                Some(tls) => tokio::select! {
                    accepted = self.tcp.accept() => accepted,
                    Some(ready) = tls.ready.recv() => return ready,
                },
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            };
            // Refused rather than left in the backlog: a client waiting there cannot tell a
            // full daemon from a hung one.
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.refuse(tcp);
                continue;
            };
            // No Nagle delay: an answer sent in parts (head, shared cached result, closing
            // brace) must not wait for the client's delayed ACK before its last byte.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let owner = self.look_up_owner.then(|| Owner::of(addr, tcp.local_addr().unwrap_or(self.local)));
            if let Some(Owner::Unknown(e)) = &owner {
                tracing::warn!(peer = %addr, error = %e, "cannot tell whose connection this is; its requests are refused");
            }
            let peer = Peer { addr, owner };
            match &self.tls {
                None => return (Connection { io: Io::Plain(tcp), _permit: permit }, peer),
                Some(tls) => {
                    let (acceptor, ready, reply) =
                        (tls.acceptor.clone(), tls.ready_tx.clone(), tls.plain_reply.clone());
                    tokio::spawn(handshake(acceptor, tcp, permit, peer, ready, reply));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer { addr: self.local, owner: None })
    }
}

/// As axum's own listener: a failed handshake is the client's business; anything else
/// (out of file descriptors, above all) is logged and waited out, as retrying at once
/// would spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The whole answer to a connection beyond the limit, written before its request is read.
fn busy_reply(max: usize) -> Vec<u8> {
    let message = format!("too many connections: this daemon serves at most {max} at once (--max-connections)");
    fixed_reply("503 Service Unavailable", &RpcError::new(code::SERVER_BUSY, message))
}

/// The answer to plain HTTP on the TLS port, written before its request is read.
fn plain_http_reply() -> Vec<u8> {
    let message = "this daemon serves HTTPS only (--tls-cert): use an https:// URL";
    fixed_reply("400 Bad Request", &RpcError::invalid_request(message))
}

/// A complete HTTP/1.1 response with a JSON-RPC error body that closes the connection.
fn fixed_reply(status: &str, error: &RpcError) -> Vec<u8> {
    let body = error_response(None, error).to_string();
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(body.as_bytes());
    reply
}

/// Closing with the client's request still unread would reset the connection, and a
/// reset can discard the answer before the client reads it: so send it, end our side,
/// and read what the client sends until it closes (bounded in time and bytes).
async fn answer_and_close(mut tcp: impl AsyncRead + AsyncWrite + Unpin, reply: &[u8]) {
    let _ = tokio::time::timeout(LINGER, async {
        tcp.write_all(reply).await?;
        tcp.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Counts refused connections and warns at most once per [`WARN_EVERY`], so a flood
/// does not flood the log as well.
#[derive(Default)]
struct RefusalLog {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, max: usize) {
        self.since_warning += 1;
        if self.last_warning.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            "too many connections: {max} open (--max-connections); refused {} connection(s) with 503 since the \
             last warning (at most one warning a minute)",
            self.since_warning
        );
        self.since_warning = 0;
        self.last_warning = Some(Instant::now());
    }
}

/// An accepted connection (its TLS handshake done, on the TLS port); it holds its place
/// under `--max-connections` until hyper drops it, that is until the connection is closed.
pub struct Connection {
    io: Io,
    _permit: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    // hyper writes a response's head and body parts in one vectored write; without these
    // it would copy them into one buffer first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_reply_is_a_complete_http_response_naming_the_limit() {
        let reply = String::from_utf8(busy_reply(7)).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: application/json") && head.contains("\r\nConnection: close"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message, "too many connections: this daemon serves at most 7 at once (--max-connections)");
        assert_eq!(body["id"], serde_json::Value::Null);
    }

    #[test]
    fn plain_http_on_the_tls_port_is_told_to_use_https() {
        let reply = String::from_utf8(plain_http_reply()).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n") && head.contains("\r\nConnection: close"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("https://"), "{body}");
        assert_eq!(body["error"]["code"], -32600);
    }

    #[test]
    fn refusals_are_counted_between_warnings() {
        let mut log = RefusalLog::default();
        log.note(2);
        assert_eq!(log.since_warning, 0, "the first refusal is reported at once");
        log.note(2);
        log.note(2);
        assert_eq!(log.since_warning, 2, "the next ones wait for the next warning");
    }
}
