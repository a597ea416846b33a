//! mcp-proxy recovery (issue 4, item 4): the daemon killed with SIGKILL mid-session, or
//! answering 404 for a session it no longer knows: the client's next call succeeds without
//! the client doing anything, because the proxy finds or restarts the daemon, replays the
//! recorded `initialize` and `notifications/initialized`, and retries once.
//!
//! And the session's setup (issue 16, item 6): its `resources/subscribe` and last
//! `logging/setLevel` are replayed after the handshake, and a subscriber that sends
//! nothing more still hears `notifications/resources/updated` for writes made by other
//! sessions after the daemon was killed or forgot its session.

#[path = "proxy_common/mod.rs"]
mod common;

use std::path::Path;

use common::fake::Fake;
use common::{Proxy, ProxyEnv, alive, eventually, kill_daemon};
use e2e::Http;
use serde_json::{Value, json};

/// The memory daemon's one resource (`mcp_wire::GRAPH_RESOURCE_URI`), spelled out: the
/// test checks the wire, not the constant.
const GRAPH: &str = "memory://knowledge-graph";

/// Ends the daemon's newest session with `DELETE`, as its idle expiry would; its next
/// request gets `404 Session not found`.
async fn end_newest_session(pe: &ProxyEnv) {
    let log = pe.log_text();
    let created: Vec<&str> = log.lines().filter(|l| l.contains("session created")).collect();
    let line = created.last().unwrap_or_else(|| panic!("no session in the log:\n{log}"));
    let session = line.split("session=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    let session = session.trim_matches('"');
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .delete(format!("http://127.0.0.1:{}/mcp", pe.port))
        .header("mcp-session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Another client, with a session of its own, writes an entity into `project`.
async fn write_from_another_session(pe: &ProxyEnv, project: &Path, name: &str) {
    let mut other = Http::new(format!("http://127.0.0.1:{}/mcp", pe.port)).with_project(project);
    assert_eq!(other.initialize(common::VERSION).await.status, 200);
    let entities = json!({"entities":[{"name":name,"entityType":"test","observations":[]}]});
    let result = other.call_tool("create_entities", entities).await;
    assert_ne!(result["isError"], json!(true), "{result}");
}

/// Reads the proxy's stdout up to the next `notifications/resources/updated`; nothing
/// else may come first (an answer to a replayed request would).
async fn next_update(proxy: &mut Proxy) -> Value {
    let message = proxy.next_message().await;
    assert_eq!(message["method"], "notifications/resources/updated", "{message}\nstderr:\n{}", proxy.stderr_text());
    assert_eq!(message["params"]["uri"], GRAPH, "{message}");
    message
}

/// `initialize`, then `resources/subscribe` to the graph and `logging/setLevel`.
async fn subscribed_proxy(pe: &ProxyEnv, project: &Path) -> Proxy {
    let mut proxy = pe.spawn(project);
    proxy.initialize().await;
    let reply = proxy.request(1, "resources/subscribe", json!({"uri": GRAPH})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let reply = proxy.request(2, "logging/setLevel", json!({"level": "warning"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    proxy
}

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

    assert_eq!(pe.log_text().matches("session created").count(), 1);
    end_newest_session(&pe).await;
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

/// The daemon is killed under a client that subscribed and then only listens. The
/// proxy's lost event stream is enough: it restarts the daemon, replays the handshake,
/// the subscription and the log level, reopens the stream, and a write by another
/// session reaches the client as `notifications/resources/updated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_updates_again_after_the_daemon_is_killed() {
    let pe = ProxyEnv::new();
    let project = pe.project("p");
    let mut proxy = subscribed_proxy(&pe, &project).await;
    let old = pe.wait_daemon().await;
    // Only the proxy's session has an event stream (the writer below opens none).
    pe.wait_health("event_streams", 1).await;
    write_from_another_session(&pe, &project, "before").await;
    next_update(&mut proxy).await;

    kill_daemon(old, pe.port).await;
    // The client sends nothing. The stream reopens only after the setup was replayed,
    // so from here on a write must be heard.
    proxy.wait_stderr("event stream reopened").await;
    let new = pe.wait_daemon().await;
    assert_ne!(new, old, "a new daemon");
    assert_eq!(proxy.stderr_count("started the daemon"), 2, "{}", proxy.stderr_text());
    assert_eq!(
        proxy.stderr_count("new session: replayed the handshake and 1 subscription and the log level"),
        1,
        "{}",
        proxy.stderr_text()
    );
    pe.wait_health("event_streams", 1).await;
    write_from_another_session(&pe, &project, "after").await;
    next_update(&mut proxy).await;

    // And the session serves calls as before, on the same database.
    assert_eq!(proxy.entity_names(3).await, ["before", "after"]);
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    // initialize, subscribe, setLevel, two updates, read_graph: no replayed answer.
    assert_eq!(proxy.stdout_lines().len(), 6, "{:#?}", proxy.stdout_lines());
    proxy.assert_protocol_only();
}

/// The daemon forgets the session of a client that subscribed and then only listens:
/// the event stream ends, the proxy's reconnection gets 404, and it sets up a new
/// session with the subscription on the same daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_session_was_forgotten_hears_updates_again() {
    let pe = ProxyEnv::new();
    let project = pe.project("p");
    let mut proxy = subscribed_proxy(&pe, &project).await;
    let daemon = pe.wait_daemon().await;
    pe.wait_health("event_streams", 1).await;

    end_newest_session(&pe).await;
    proxy.wait_stderr("event stream reopened").await;
    assert!(proxy.stderr_count("HTTP 404") >= 1, "{}", proxy.stderr_text());
    assert_eq!(pe.lock_pid(), Some(daemon), "same daemon");
    assert_eq!(proxy.stderr_count("started the daemon"), 1);
    assert_eq!(pe.log_text().matches("session created").count(), 2, "a new session");
    pe.wait_health("event_streams", 1).await;
    write_from_another_session(&pe, &project, "heard").await;
    next_update(&mut proxy).await;

    assert_eq!(proxy.entity_names(3).await, ["heard"]);
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    // initialize, subscribe, setLevel, the update, read_graph: no replayed answer.
    assert_eq!(proxy.stdout_lines().len(), 5, "{:#?}", proxy.stdout_lines());
    proxy.assert_protocol_only();
}

/// The exact sequence the upstream sees after a 404 once the client subscribed,
/// unsubscribed and set log levels: the handshake, then what is still set up (the
/// subscription left, the last level) under the proxy's own ids, then the retried call;
/// and none of the replayed answers reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_404_the_subscriptions_and_log_level_follow_the_handshake() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    let setup = [
        (1, "resources/subscribe", json!({"uri":"memory://a"})),
        (2, "resources/subscribe", json!({"uri":"memory://b"})),
        (3, "logging/setLevel", json!({"level":"debug"})),
        (4, "resources/unsubscribe", json!({"uri":"memory://a"})),
        (5, "logging/setLevel", json!({"level":"error"})),
    ];
    for (id, method, params) in setup {
        let reply = proxy.request(id, method, params).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }

    fake.expire("fake-1");
    let before = fake.events().len();
    let reply = proxy.request(6, "tools/call", json!({"name":"fast","arguments":{}})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(
        fake.events()[before..],
        [
            "404 fake-1 tools/call",
            "POST - initialize",
            "POST fake-2 notifications/initialized",
            "POST fake-2 resources/subscribe memory://b \"mcp-proxy-replay-1-1\"",
            "POST fake-2 logging/setLevel error \"mcp-proxy-replay-1-2\"",
            "POST fake-2 tools/call fast 6"
        ]
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    assert_eq!(proxy.stdout_lines().len(), 7, "initialize, five setup answers, the call: {:#?}", proxy.stdout_lines());
    proxy.assert_protocol_only();
}

/// A recovery that cannot set the session up again (the restarted daemon refuses
/// `initialize` at first): the message that started it gets an error, and the next
/// message finishes the recovery (handshake, subscription, then the message on the new
/// session) instead of going out without a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_whose_replay_failed_is_finished_by_the_next_message() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    let reply = proxy.request(1, "resources/subscribe", json!({"uri":"memory://a"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");

    fake.expire("fake-1");
    fake.refuse_initialize(1);
    let before = fake.events().len();
    let fast = json!({"name":"fast","arguments":{}});
    let reply = proxy.request(2, "tools/call", fast.clone()).await;
    let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("an error answer: {reply}"));
    assert!(
        message.contains("`up`") && message.contains("replayed initialize: ") && message.contains("not ready"),
        "{message}"
    );
    let reply = proxy.request(3, "tools/call", fast).await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(
        fake.events()[before..],
        [
            "404 fake-1 tools/call",
            "503 initialize",
            "POST - initialize",
            "POST fake-2 notifications/initialized",
            "POST fake-2 resources/subscribe memory://a \"mcp-proxy-replay-2-1\"",
            "POST fake-2 tools/call fast 3"
        ]
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}
