//! Tool filters through mcp-proxy (issue 16, item 4; SPEC 3.2: `tools = { allow, deny }`),
//! on every transport the proxy speaks, against our real memory-server: streamable HTTP
//! (the daemon the proxy starts), plain HTTP, the deprecated HTTP+SSE transport (a bridge
//! in `proxy_common/bridge.rs` in front of a memory-server), and a hosted stdio server
//! (`memory-server stdio` run by the mcp-host the proxy starts, which it reaches as
//! streamable HTTP). Plus answers that arrive inside SSE replies (the fake upstream in its
//! SSE mode).
//!
//! Filtered tools are absent from `tools/list`; a call to one gets a JSON-RPC error
//! (-32602) from the proxy naming the daemon and the pattern, and the daemon never sees
//! it: the entity a refused `delete_entities` names is still there afterwards, and the
//! bridge and the fake, which record what they receive, never got the call.

#[path = "proxy_common/mod.rs"]
mod common;

use common::bridge::SseBridge;
use common::fake::Fake;
use common::{Proc, Proxy, ProxyEnv};
use e2e::{Daemon, bin};
use serde_json::{Value, json};

/// The memory-server's nine tools, in its catalog's order.
const ALL: [&str; 9] = [
    "create_entities",
    "create_relations",
    "add_observations",
    "delete_entities",
    "delete_observations",
    "delete_relations",
    "read_graph",
    "search_nodes",
    "open_nodes",
];

fn tool_names(reply: &Value) -> Vec<String> {
    let tools = reply.pointer("/result/tools").and_then(Value::as_array).unwrap_or_else(|| panic!("no tools: {reply}"));
    tools.iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}

fn without(filtered: &[&str]) -> Vec<String> {
    ALL.iter().filter(|t| !filtered.contains(t)).map(|t| t.to_string()).collect()
}

/// Asserts `reply` is the proxy's refusal naming `daemon` and `pattern`.
fn assert_refused(reply: &Value, daemon: &str, pattern: &str) {
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("daemon `{daemon}`")), "{message}");
    assert!(message.contains(pattern), "the message names {pattern}: {message}");
}

/// The check every transport gets, with `tools = { deny = ["delete_*"] }`: the list
/// lacks the three delete tools, a `delete_entities` is refused without reaching the
/// daemon, and the others work.
async fn deny_deletes(proxy: &mut Proxy, daemon: &str) {
    proxy.initialize().await;
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(tool_names(&list), without(&["delete_entities", "delete_observations", "delete_relations"]));
    proxy.create_entity(2, "Ada").await;
    let delete = json!({"name":"delete_entities","arguments":{"entityNames":["Ada"]}});
    let refused = proxy.request(3, "tools/call", delete).await;
    assert_refused(&refused, daemon, "tools.deny pattern \"delete_*\"");
    assert_eq!(proxy.entity_names(4).await, ["Ada"], "the refused call never reached the daemon");
    // A second list, after a refusal, is filtered the same way.
    let again = proxy.request(5, "tools/list", json!({})).await;
    assert_eq!(tool_names(&again).len(), 6, "{again}");
    proxy.assert_protocol_only();
}

const DENY_DELETES: &str = "tools = { deny = [\"delete_*\"] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_hides_and_refuses_denied_tools() {
    let pe = ProxyEnv::bare();
    pe.write_config(&format!("[daemons.memory]\nport = {}\n{DENY_DELETES}", pe.port));
    let mut proxy = pe.spawn(&pe.project("app"));
    deny_deletes(&mut proxy, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_hides_and_refuses_denied_tools() {
    let pe = ProxyEnv::bare();
    pe.write_config(&format!("[daemons.memory]\nport = {}\ntransport = \"http\"\n{DENY_DELETES}", pe.port));
    let mut proxy = pe.spawn(&pe.project("app"));
    deny_deletes(&mut proxy, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_hides_and_refuses_denied_tools() {
    let pe = ProxyEnv::bare();
    let daemon = Daemon::start(&pe.env, &[]);
    let bridge = SseBridge::start(daemon.url()).await;
    pe.write_config(&bridge.config("legacy", DENY_DELETES));
    let mut proxy = Proxy::spawn(pe.command("legacy", &pe.project("app"), &[]), "legacy");
    deny_deletes(&mut proxy, "legacy").await;
    let seen = bridge.seen();
    assert!(seen.contains(&"tools/call create_entities".to_owned()), "{seen:?}");
    assert!(!seen.iter().any(|s| s.starts_with("tools/call delete")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_stdio_hides_and_refuses_denied_tools() {
    let pe = ProxyEnv::bare();
    bin("mcp-host"); // the proxy starts it: fail early, with the harness's hint, when stale
    // `memory-server stdio` run by mcp-host (which the proxy starts and reaches over
    // streamable HTTP on the port the host records in its lock file).
    let server = bin("memory-server").display().to_string();
    pe.write_config(&format!(
        "[daemons.hosted]\ntransport = \"stdio\"\ncommand = '{server}'\nargs = [\"stdio\"]\n{DENY_DELETES}"
    ));
    let mut proxy = Proxy::spawn(pe.command("hosted", &pe.project("app"), &[]), "hosted");
    deny_deletes(&mut proxy, "hosted").await;
    // It went through mcp-host: the host's lock file names a live mcp-host.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(pe.runtime().join("hosted.lock")).unwrap()).unwrap();
    let host = lock["pid"].as_i64().and_then(|pid| Proc::read(pid as i32)).unwrap_or_else(|| panic!("{lock}"));
    assert!(host.cmdline[0].ends_with("mcp-host"), "{host:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_only_the_allowed_and_deny_still_applies() {
    let pe = ProxyEnv::bare();
    pe.write_config(&format!(
        "[daemons.memory]\nport = {}\ntools = {{ allow = [\"read_graph\", \"search_*\", \"open_nodes\"], deny = [\"search_nodes\"] }}\n",
        pe.port
    ));
    let mut proxy = pe.spawn(&pe.project("app"));
    proxy.initialize().await;
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(tool_names(&list), ["read_graph", "open_nodes"]);
    let create =
        json!({"name":"create_entities","arguments":{"entities":[{"name":"Ada","entityType":"p","observations":[]}]}});
    let refused = proxy.request(2, "tools/call", create).await;
    assert_refused(&refused, "memory", "none of tools.allow");
    let search = proxy.request(3, "tools/call", json!({"name":"search_nodes","arguments":{"query":"Ada"}})).await;
    assert_refused(&search, "memory", "tools.deny pattern \"search_nodes\"");
    assert_eq!(proxy.entity_names(4).await, Vec::<String>::new(), "nothing was created");
    // A call of a tool the server does not have, allowed by no pattern, is refused too.
    let unknown = proxy.request(5, "tools/call", json!({"name":"no_such_tool","arguments":{}})).await;
    assert_refused(&unknown, "memory", "none of tools.allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_inside_sse_replies_are_filtered() {
    let fake = Fake::start_sse().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&format!("{}tools = {{ deny = [\"slow\"] }}\n", fake.config("up")));
    let mut proxy = Proxy::spawn(pe.command("up", &pe.project("p"), &[]), "up");
    proxy.initialize().await;
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(tool_names(&list), ["fast"]);
    let note = proxy.next_message().await;
    assert_eq!(note["method"], "notifications/message", "the stream's notification is relayed: {note}");
    let refused = proxy.request(2, "tools/call", json!({"name":"slow","arguments":{}})).await;
    assert_refused(&refused, "up", "\"slow\"");
    let fast = proxy.request(3, "tools/call", json!({"name":"fast","arguments":{}})).await;
    assert_eq!(fast["result"]["content"][0]["text"], "fast done", "{fast}");
    assert_eq!(fake.count("POST fake-1 tools/call slow"), 0, "{:?}", fake.events());
    assert_eq!(fake.count("POST fake-1 tools/call fast"), 1, "{:?}", fake.events());
}
