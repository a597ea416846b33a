//! mcp-proxy and signals (issue 4, items 2 and 12): SIGINT, to the proxy or its whole
//! process group, changes nothing; SIGTERM is handled like stdin EOF; Claude Code's
//! end-of-session SIGINT-then-SIGTERM to a proxy's group leaves the daemon and every
//! other session alone.

#[path = "proxy_common/mod.rs"]
mod common;

use std::time::Duration;

use common::fake::Fake;
use common::{Proxy, ProxyEnv, alive, eventually};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_the_proxy_and_to_its_group_mid_session_changes_nothing() {
    let pe = ProxyEnv::new();
    let (transport, proxy, log) = pe.spawn_rmcp(&pe.project("p"));
    let client = ().serve(transport).await.expect("initialize through mcp-proxy");
    let create = |name: &str| {
        let Value::Object(args) = json!({"entities":[{"name":name,"entityType":"t","observations":[]}]}) else {
            unreachable!()
        };
        CallToolRequestParams::new("create_entities").with_arguments(args)
    };
    client.call_tool(create("before")).await.expect("a call before the signals");
    let daemon = pe.wait_daemon().await;

    common::signal(proxy, libc::SIGINT);
    eventually("the first SIGINT logged", || log.lock().unwrap().matches("SIGINT ignored").count() == 1).await;
    common::signal(-proxy, libc::SIGINT);
    eventually("the second SIGINT logged", || log.lock().unwrap().matches("SIGINT ignored").count() == 2).await;

    client.call_tool(create("after")).await.expect("the session goes on after SIGINT");
    let graph = client
        .call_tool(CallToolRequestParams::new("read_graph").with_arguments(serde_json::Map::new()))
        .await
        .unwrap();
    let names = e2e::entity_names(graph.structured_content.as_ref().unwrap());
    assert_eq!(names, ["before", "after"]);

    assert!(alive(proxy));
    assert_eq!(pe.lock_pid(), Some(daemon));
    assert!(alive(daemon), "the daemon is untouched");
    assert_eq!(pe.daemons().len(), 1);
    let text = log.lock().unwrap().clone();
    assert!(!text.contains("recovering"), "the same session went on:\n{text}");
    assert_eq!(pe.log_text().matches("session created").count(), 1, "no new session");
    assert_eq!(pe.health().await["live_sessions"], 1);
    client.cancel().await.expect("close the client");
    common::wait_dead(proxy).await;
    assert!(alive(daemon), "the daemon outlives the proxy");
}

/// SIGINT to the proxy's group while a request is in flight: the request still gets
/// its answer and the session takes more requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_while_a_request_is_in_flight_loses_nothing() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","arguments":{}}})).await;
    eventually("the slow call at the upstream", || fake.count("POST fake-1 tools/call slow") == 1).await;

    proxy.signal_group(libc::SIGINT);
    proxy.wait_stderr("SIGINT ignored").await;
    fake.release(1);
    let reply = proxy.response(1).await;
    assert_eq!(reply.pointer("/result/content/0/text"), Some(&json!("slow done")), "{reply}");
    let reply = proxy.request(2, "tools/call", json!({"name":"fast","arguments":{}})).await;
    assert_eq!(reply.pointer("/result/content/0/text"), Some(&json!("fast done")), "{reply}");
    assert_eq!(fake.sessions(), ["fake-1"], "the same session throughout");
    assert_eq!(fake.count("DELETE"), 0);
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_deletes_the_session() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","arguments":{}}})).await;
    eventually("the slow call at the upstream", || fake.count("POST fake-1 tools/call slow") == 1).await;

    proxy.signal(libc::SIGTERM);
    proxy.wait_stderr("SIGTERM").await;
    assert_eq!(fake.count("DELETE"), 0, "the session was deleted while a request was in flight");
    fake.release(1);
    let reply = proxy.response(1).await;
    assert_eq!(reply.pointer("/result/content/0/text"), Some(&json!("slow done")), "{reply}");
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr_text());
    let events = fake.events();
    assert_eq!(events[events.len() - 2..], ["slow answered 1", "DELETE fake-1"], "{events:#?}");
    proxy.assert_protocol_only();
}

/// What Claude Code does when it ends a session: SIGINT, then SIGTERM about 100 ms later,
/// to the proxy's process group. The proxy that had started the daemon ends cleanly and
/// deletes its session; the daemon keeps running; another proxy's session is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_then_sigterm_to_a_proxy_group_leaves_the_daemon_and_other_sessions() {
    let pe = ProxyEnv::new();
    let project = pe.project("p");
    let mut first = pe.spawn(&project);
    first.initialize().await;
    first.create_entity(1, "from-first").await;
    let daemon = pe.wait_daemon().await;
    let mut other = pe.spawn(&project);
    other.initialize().await;
    other.create_entity(1, "from-other").await;
    pe.wait_live_sessions(2).await;

    first.signal_group(libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(100)).await; // the scenario's gap, not a synchronisation
    first.signal_group(libc::SIGTERM);
    assert_eq!(first.wait_exit().await.code(), Some(0), "{}", first.stderr_text());
    pe.wait_live_sessions(1).await; // its session was DELETEd; the other lives
    assert!(pe.log_text().contains("session deleted"));

    assert!(alive(daemon), "the daemon keeps running");
    assert_eq!(pe.lock_pid(), Some(daemon));
    assert_eq!(other.entity_names(2).await, ["from-first", "from-other"]);
    other.create_entity(3, "later").await;
    assert_eq!(other.stderr_count("recovering"), 0, "the other session never noticed:\n{}", other.stderr_text());
    assert_eq!(pe.daemons().len(), 1);
    other.close_stdin();
    assert_eq!(other.wait_exit().await.code(), Some(0));
    first.assert_protocol_only();
    other.assert_protocol_only();
}
