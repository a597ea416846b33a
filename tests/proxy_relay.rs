//! mcp-proxy relaying (issue 4, items 5, 6, 9 and 10): in-flight requests outlive stdin
//! EOF and the session is deleted after them; a slow tool call never delays a fast one;
//! bad input and a daemon that cannot be started give the client JSON-RPC errors, never
//! a hang; stdout carries protocol only and every log line is prefixed.
//!
//! The slow upstream is the fake in `proxy_common/fake.rs`: its `slow` tool answers only
//! when the test releases it, so ordering is asserted, never timing.

#[path = "proxy_common/mod.rs"]
mod common;

use common::fake::Fake;
use common::{Proxy, ProxyEnv, eventually, initialize_request, kill_daemon};
use serde_json::{Value, json};

fn slow_call(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"slow","arguments":{}}})
}

fn text_of(reply: &Value) -> &str {
    reply.pointer("/result/content/0/text").and_then(Value::as_str).unwrap_or_else(|| panic!("no text in {reply}"))
}

/// A proxy for target `up`, reached by url at the fake.
async fn proxy_to(fake: &Fake) -> (ProxyEnv, Proxy) {
    let pe = ProxyEnv::bare();
    pe.write_config(&fake.config("up"));
    let proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    (pe, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_lets_three_slow_requests_finish_then_deletes_the_session() {
    let fake = Fake::start().await;
    let (_pe, mut proxy) = proxy_to(&fake).await;
    proxy.initialize().await;
    for id in 1..=3 {
        proxy.send(&slow_call(id)).await;
    }
    eventually("three slow calls held at the upstream", || fake.count("POST fake-1 tools/call slow") == 3).await;

    proxy.close_stdin();
    fake.release(3);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = proxy.next_message().await;
        assert_eq!(text_of(&reply), "slow done", "{reply}");
        ids.push(reply["id"].as_u64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr_text());

    let events = fake.events();
    let deletes: Vec<usize> = (0..events.len()).filter(|&i| events[i].starts_with("DELETE")).collect();
    assert_eq!(deletes.len(), 1, "one DELETE: {events:#?}");
    assert_eq!(events[deletes[0]], "DELETE fake-1", "{events:#?}");
    let answered: Vec<usize> = (0..events.len()).filter(|&i| events[i].starts_with("slow answered")).collect();
    assert_eq!(answered.len(), 3, "{events:#?}");
    assert!(answered.iter().all(|&i| i < deletes[0]), "the session was deleted before its answers: {events:#?}");
    assert!(fake.sessions().is_empty());
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tool_call_does_not_delay_a_fast_one() {
    let fake = Fake::start().await;
    let (_pe, mut proxy) = proxy_to(&fake).await;
    proxy.initialize().await;
    proxy.send(&slow_call(1)).await;
    eventually("the slow call at the upstream", || fake.count("POST fake-1 tools/call slow 1") == 1).await;

    proxy.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fast","arguments":{}}})).await;
    // The slow call is held until released below, so the next message must be the fast answer.
    let first = proxy.next_message().await;
    assert_eq!(first["id"], 2, "the fast call waited for the slow one: {first}");
    assert_eq!(text_of(&first), "fast done");
    assert_eq!(fake.count("slow answered"), 0);

    fake.release(1);
    let slow = proxy.response(1).await;
    assert_eq!(text_of(&slow), "slow done");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_line_gets_a_parse_error_and_the_proxy_goes_on() {
    let fake = Fake::start().await;
    let (_pe, mut proxy) = proxy_to(&fake).await;
    proxy.send_line("this is not json").await;
    let error = proxy.next_message().await;
    assert_eq!(error["id"], Value::Null, "{error}");
    assert_eq!(error["error"]["code"], -32700, "{error}");

    proxy.initialize().await;
    proxy.send_line(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list""#).await; // truncated
    let error = proxy.next_message().await;
    assert_eq!((error["id"].clone(), error["error"]["code"].clone()), (Value::Null, json!(-32700)), "{error}");

    let tools = proxy.request(8, "tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().map(Vec::len), Some(2), "{tools}");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    assert_eq!(fake.count("POST fake-1 tools/list"), 1, "the bad lines never reached the upstream");
    proxy.assert_protocol_only();
}

/// Each way a daemon can fail to start: the client gets a JSON-RPC error for its request
/// naming the daemon, the command and the log file, within the (small) startup timeout
/// rather than hanging, and nothing it started is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_be_started_gives_the_client_an_error() {
    let cases = [
        ("/nonexistent/x", "[]", "could not start"),
        ("false", "[]", "exited"),
        // Runs but never listens: only the startup timeout ends the wait.
        ("sleep", "[\"600\"]", "did not answer"),
    ];
    for (command, args, cause) in cases {
        let pe = ProxyEnv::bare();
        pe.write_config(&format!(
            "[daemons.memory]\nport = {}\ncommand = \"{command}\"\nargs = {args}\nstartup_timeout_ms = 300\n",
            pe.port
        ));
        let mut proxy = pe.spawn(&pe.project("p"));
        proxy.send(&initialize_request(0)).await;
        let reply = proxy.response(0).await;
        let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("{command}: no error: {reply}"));
        let log = pe.runtime().join("memory.log");
        for needle in ["`memory`", command, cause, log.to_str().unwrap()] {
            assert!(message.contains(needle), "{command}: {needle:?} missing from {message:?}");
        }
        assert_eq!(message.matches("`memory`").count(), 1, "the daemon named once: {message:?}");
        // Later requests get the same kind of answer; the proxy goes on.
        let reply = proxy.request(1, "tools/list", json!({})).await;
        assert!(reply["error"]["message"].as_str().is_some_and(|m| m.contains(command)), "{reply}");
        proxy.close_stdin();
        assert_eq!(proxy.wait_exit().await.code(), Some(0), "{command}");
        assert!(log.exists(), "{command}: the log file the error names exists");
        let left: Vec<_> = pe.processes();
        assert!(left.is_empty(), "{command}: processes left running: {left:?}");
        proxy.assert_protocol_only();
    }
}

/// Everything that makes the proxy talk (a cold start, SIGINT, a bad line, a daemon
/// killed and restarted, SIGTERM) and still: every stdout line is a JSON-RPC message
/// and every stderr line starts with `[mcp-proxy:memory]`; the daemon's own output went
/// to its log file, not through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_carries_protocol_only_and_logs_are_prefixed() {
    let pe = ProxyEnv::new();
    let mut proxy = pe.spawn(&pe.project("p"));
    proxy.initialize().await;
    proxy.create_entity(1, "x").await;
    proxy.signal(libc::SIGINT);
    proxy.wait_stderr("SIGINT").await;
    proxy.send_line("{oops").await;
    assert_eq!(proxy.next_message().await["error"]["code"], -32700);
    let daemon = pe.wait_daemon().await;
    kill_daemon(daemon, pe.port).await;
    assert_eq!(proxy.entity_names(2).await, ["x"]);
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit().await.code(), Some(0));

    proxy.assert_protocol_only();
    for expected in ["started the daemon", "SIGINT", "recovering", "SIGTERM"] {
        assert!(proxy.stderr_count(expected) > 0, "no {expected:?} on stderr:\n{}", proxy.stderr_text());
    }
    let log = pe.log_text();
    assert_eq!(log.matches("listening on").count(), 2, "both daemons logged to memory.log:\n{log}");
    assert!(!proxy.stdout_lines().iter().chain(proxy.stderr_lines().iter()).any(|l| l.contains("listening on")));
}
