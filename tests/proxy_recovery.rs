//! mcp-proxy recovery (issue 4, item 4): the daemon killed with SIGKILL mid-session, or
//! answering 404 for a session it no longer knows: the client's next call succeeds without
//! the client doing anything, because the proxy finds or restarts the daemon, replays the
//! recorded `initialize` and `notifications/initialized`, and retries once.

#[path = "proxy_common/mod.rs"]
mod common;

use common::fake::Fake;
use common::{Proxy, ProxyEnv, alive, eventually, kill_daemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_session_is_restarted_and_the_next_call_succeeds() {
    let pe = ProxyEnv::new();
    let mut proxy = pe.spawn(&pe.project("p"));
    proxy.initialize().await;
    proxy.create_entity(1, "before").await;
    let old = pe.wait_daemon().await;

    kill_daemon(old, pe.port).await;
    // Nothing from the client but its next call.
    assert_eq!(proxy.entity_names(2).await, ["before"], "the restarted daemon serves the same database");
    proxy.create_entity(3, "after").await;

    let new = pe.lock_pid().expect("lock file");
    assert_ne!(new, old, "a new daemon");
    assert!(alive(new));
    let daemons: Vec<i32> = pe.daemons().iter().map(|p| p.pid).collect();
    assert_eq!(daemons, [new], "exactly one daemon runs");
    assert_eq!(proxy.stderr_count("started the daemon"), 2, "{}", proxy.stderr_text());
    assert!(proxy.stderr_count("recovering") >= 1, "{}", proxy.stderr_text());
    pe.wait_live_sessions(1).await;
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}

/// The session ends at the daemon while the proxy still uses it. Idle expiry cannot be
/// waited for here: the proxy holds the session's GET stream open, and a session with an
/// open stream never counts as idle (SPEC 2.2). So the session is ended the other way the
/// daemon ends sessions, `DELETE`, which yields the same `404 Session not found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_daemon_no_longer_knows_is_replaced_and_the_next_call_succeeds() {
    let pe = ProxyEnv::new();
    let mut proxy = pe.spawn(&pe.project("p"));
    proxy.initialize().await;
    proxy.create_entity(1, "kept").await;
    let daemon = pe.wait_daemon().await;
    pe.wait_live_sessions(1).await;

    let log = pe.log_text();
    let created: Vec<&str> = log.lines().filter(|l| l.contains("session created")).collect();
    assert_eq!(created.len(), 1, "{log}");
    let session = created[0].split("session=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    let session = session.trim_matches('"');
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .delete(format!("http://127.0.0.1:{}/mcp", pe.port))
        .header("mcp-session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    pe.wait_live_sessions(0).await;

    assert_eq!(proxy.entity_names(2).await, ["kept"]);
    assert!(proxy.stderr_count("HTTP 404") >= 1, "{}", proxy.stderr_text());
    assert_eq!(pe.lock_pid(), Some(daemon), "same daemon");
    assert_eq!(proxy.stderr_count("started the daemon"), 1);
    assert_eq!(pe.log_text().matches("session created").count(), 2, "a new session");
    pe.wait_live_sessions(1).await;
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}

/// The exact sequence the upstream sees after a 404: the failed call, the client's own
/// `initialize` replayed, `notifications/initialized` on the new session, the retried
/// call on the new session; and the replayed handshake's answer never reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_404_the_handshake_is_replayed_before_the_retry() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    eventually("notifications/initialized at the upstream", || {
        fake.count("POST fake-1 notifications/initialized") == 1
    })
    .await;
    let fast = json!({"name":"fast","arguments":{}});
    assert!(proxy.request(1, "tools/call", fast.clone()).await.get("result").is_some());

    fake.expire("fake-1");
    let before = fake.events().len();
    let reply = proxy.request(2, "tools/call", fast).await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(
        fake.events()[before..],
        [
            "404 fake-1 tools/call",
            "POST - initialize",
            "POST fake-2 notifications/initialized",
            "POST fake-2 tools/call fast 2"
        ]
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    assert_eq!(proxy.stdout_lines().len(), 3, "initialize, call 1, call 2: {:#?}", proxy.stdout_lines());
    assert_eq!(fake.events().last().map(String::as_str), Some("DELETE fake-2"));
    proxy.assert_protocol_only();
}
