//! `--max-connections`: with the limit reached, one more connection is answered 503 with
//! a JSON-RPC error naming the limit and closed (not left waiting in the backlog); once
//! one of the open connections closes, new ones are served again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::{Daemon, PATIENCE, TestEnv};
use serde_json::Value;

struct Response {
    status: u16,
    head: String,
    body: Value,
}

/// Sends `GET /health` on `stream` (kept alive) and reads exactly one response.
fn get_health(stream: &mut TcpStream) -> Option<Response> {
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
        .parse()
        .ok()?;
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = serde_json::from_slice(&raw[head_end..head_end + length]).unwrap_or(Value::Null);
    Some(Response { status, head, body })
}

/// A new connection that was served (200) and stays open. Connections closed just
/// before may still hold their places for a moment, so a 503 is retried (bounded).
fn served_connection(port: u16) -> TcpStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        match get_health(&mut stream) {
            Some(r) if r.status == 200 => return stream,
            Some(r) if r.status == 503 => {}
            other => panic!("unexpected answer: {:?}", other.map(|r| r.head)),
        }
        assert!(Instant::now() < deadline, "no connection was served within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn beyond_the_limit_a_connection_gets_503_until_one_closes() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &["--max-connections", "2"]);
    let first = served_connection(daemon.port);
    let mut second = served_connection(daemon.port);

    let mut third = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    let refused = get_health(&mut third).expect("an answer, not a hang");
    assert_eq!(refused.status, 503, "{}", refused.head);
    let head = refused.head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json") && head.contains("connection: close"), "{head}");
    assert_eq!(
        refused.body["error"]["message"],
        "too many connections: this daemon serves at most 2 at once (--max-connections)"
    );
    assert_eq!(refused.body["error"]["code"], -32000, "the server-busy code, as for --max-streams");
    // And it is closed: the next read sees the end of the stream.
    let mut rest = Vec::new();
    assert_eq!(third.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0);

    // The open ones are still served on the same connection.
    assert_eq!(get_health(&mut second).map(|r| r.status), Some(200));
    drop(first);
    let mut fourth = served_connection(daemon.port);
    assert_eq!(get_health(&mut fourth).map(|r| r.status), Some(200));

    let log = daemon.log_text();
    assert!(log.contains("too many connections: 2 open (--max-connections)"), "{log}");
}
