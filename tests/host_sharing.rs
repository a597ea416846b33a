//! mcp-host on the real binaries (issue 16, items 1–3): a `transport = "stdio"` daemon of
//! the config is hosted by `mcp-host`, which mcp-proxy finds or starts like any daemon,
//! and whose child, the real stdio server, is shared by sessions as `share` says.
//!
//! The servers are not ours: the official `@modelcontextprotocol/server-everything`
//! (npm) and a FastMCP server of the official Python SDK (`tests/fixtures/host/
//! stdio_server.py`). Protocol behaviour is checked by an independent client, the Python
//! SDK's `ClientSession` (`tests/fixtures/host/client.py`), and where a test needs precise
//! control of each message (many sessions at once, a session without capabilities, a
//! cancellation), by raw JSON lines through `mcp-proxy`.
//!
//! Every process started here (proxies, the hosts they spawn detached, the hosts' node
//! and python children) carries the environment's `MCP_SESSION_MANAGER_HOME`, and the
//! `ProxyEnv` guard kills them all when a test ends, however it ends. No test waits on
//! the clock for an outcome: a slow call blocks until the test releases it.

#[path = "proxy_common/mod.rs"]
mod common;
mod host_common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Proxy, alive, eventually, wait_dead};
use e2e::{Http, PATIENCE, fixture, free_port};
use futures_util::future::join_all;
use host_common::*;
use serde_json::{Value, json};

/// Waits (bounded) on a raw proxy's stdout for the first message `pred` accepts; returns
/// it and every message seen before it.
async fn until_message(proxy: &mut Proxy, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        assert!(std::time::Instant::now() < deadline, "the awaited message never came; saw {before:?}");
        let m = proxy.next_message().await;
        if pred(&m) {
            return (m, before);
        }
        before.push(m);
    }
}

/// The answer to `id`, if one is on the proxy's stdout already.
fn answered(proxy: &Proxy, id: u64) -> bool {
    proxy.stdout_lines().iter().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("method").is_none() && v.get("id") == Some(&json!(id)))
    })
}

/// `sh` arguments that leave a `sleep` behind in the server's process group (as `npx`
/// leaves `node`), then run the FastMCP fixture in the shell's place.
fn sh_fixture() -> Vec<String> {
    vec![
        "-c".to_owned(),
        "sleep 600 >/dev/null 2>&1 & exec \"$0\" \"$@\"".to_owned(),
        python().display().to_string(),
        fixture("host/stdio_server.py").display().to_string(),
    ]
}

fn share(s: &str) -> String {
    format!("share = \"{s}\"")
}

// ---------------------------------------------------------------------------------------
// Item 1: one host, found or started like any daemon

/// Sixteen proxies started at once start exactly one mcp-host (on an ephemeral port, which
/// it records in `<name>.lock`), which starts one child for all of them; every session gets
/// the child's initialize result (its name from the configured `args`), its calls answered
/// by that one child (which sees the configured `env`). SIGINT to every proxy's process
/// group reaches neither the host nor the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_proxies_at_once_start_one_host_and_one_child() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global")]));
    let mut proxies: Vec<Proxy> = (0..16).map(|i| he.proxy("fs", &he.project(&format!("p{i}")), &[])).collect();
    let inits = join_all(proxies.iter_mut().map(|p| p.initialize())).await;
    for init in &inits {
        assert_eq!(init["serverInfo"]["name"], "fs-server", "{init}");
        assert_eq!(init, &inits[0], "every session gets the child's initialize result");
    }

    let hosts = he.hosts("fs");
    assert_eq!(hosts.len(), 1, "one host for sixteen proxies: {hosts:?}");
    let starters = || proxies.iter().filter(|p| p.stderr_count("started the daemon") > 0).count();
    eventually("a proxy's \"started the daemon\"", || starters() > 0).await;
    assert_eq!(starters(), 1, "one proxy started the host, the others found it");
    assert_eq!(he.log_text("fs").matches("listening on").count(), 1, "{}", he.log_text("fs"));
    let (host, port) = he.host("fs").await;
    assert_eq!(hosts[0].pid, host, "the lock file names the host");
    let config = he.pe.runtime().join("config.toml").display().to_string();
    assert!(hosts[0].cmdline.windows(2).any(|w| w[0] == "--config" && w[1] == config), "{:?}", hosts[0].cmdline);
    assert_eq!(get_json(port, "/health").await["name"], "fs");
    let status = he.status("fs").await;
    assert_eq!(status["sessions"], 16, "{status}");
    let children = child_pids(&status);
    assert_eq!(children.len(), 1, "one child for all sessions: {status}");
    let child = children[0];
    assert_eq!(parent(child), Some(host), "the server runs as the host's child");
    assert_eq!(status["children"][0]["sessions"], 16, "{status}");
    let pythons: Vec<_> =
        he.pe.processes().into_iter().filter(|p| p.cmdline.iter().any(|a| a.ends_with("stdio_server.py"))).collect();
    assert_eq!(pythons.len(), 1, "one server process: {pythons:?}");

    for (i, p) in proxies.iter_mut().enumerate() {
        let me = whoami(p, 1).await;
        assert_eq!(me["pid"], child, "session {i} is answered by the one child");
        assert_eq!(me["tag"], "tag-fs", "the configured env reaches the child");
        // Initialized by the host, once, declaring what any session may bring (these
        // sessions declared nothing).
        assert_eq!(me["client"], "mcp-host", "{me}");
        for capability in ["sampling", "roots", "elicitation"] {
            assert!(me["capabilities"][capability].is_object(), "{capability}: {me}");
        }
    }

    for p in &proxies {
        p.signal_group(libc::SIGINT);
    }
    for p in &proxies {
        p.wait_stderr("SIGINT ignored").await;
    }
    let texts = join_all(proxies.iter_mut().enumerate().map(|(i, p)| async move {
        let t = tool_text(p, 2, "echo", json!({"text": format!("after SIGINT {i}")})).await;
        (i, t)
    }))
    .await;
    for (i, t) in texts {
        assert_eq!(t, format!("after SIGINT {i}"));
    }
    assert!(alive(host) && alive(child), "SIGINT reached neither the host nor its child");
    assert_eq!(he.hosts("fs").len(), 1);
    let status = he.status("fs").await;
    assert_eq!(child_pids(&status), [child], "{status}");
    assert_eq!(status["children"][0]["restarts"], 0, "{status}");
    for p in &proxies {
        p.assert_protocol_only();
    }
}

/// With `port` configured the host listens there, and says so in its lock file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_port_is_where_the_host_listens() {
    let port = free_port();
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global"), &format!("port = {port}")]));
    let mut proxy = he.proxy("fs", &he.project("p"), &[]);
    proxy.initialize().await;
    let (host, locked) = he.host("fs").await;
    assert_eq!(locked, port);
    let health = get_json(port, "/health").await;
    assert_eq!((health["name"].clone(), health["pid"].clone()), (json!("fs"), json!(host)), "{health}");
    assert_eq!(tool_text(&mut proxy, 1, "echo", json!({"text": "hi"})).await, "hi");
}

// ---------------------------------------------------------------------------------------
// Item 2: share = "project", "global", "session"

/// `share` left out is "project": one child per project, whichever way mcp-proxy learnt the
/// project (--project, CLAUDE_PROJECT_DIR, its working directory), working in the project;
/// unless `cwd` is configured. A roots/list no session of the project can answer gets the
/// project's directory; a sampling request nobody can answer gets an error answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_project_one_child_per_project_working_in_it() {
    let he = HostEnv::new("");
    let pinned = he.project("pinned-cwd");
    let config = fixture_daemon("fs", &[])
        + &fixture_daemon("pinned", &[&format!("cwd = {}", lit(&pinned.display().to_string()))]);
    he.pe.write_config(&config);
    let (one, two, elsewhere) = (he.project("one"), he.project("two"), he.project("elsewhere"));
    let one_arg = one.display().to_string();
    let mut a = he.proxy("fs", &elsewhere, &["--project", &one_arg]);
    let mut b = he.proxy_env("fs", &elsewhere, &[("CLAUDE_PROJECT_DIR", &two)]);
    let mut c = he.proxy("fs", &one, &[]);
    for p in [&mut a, &mut b, &mut c] {
        p.initialize().await;
    }
    let (wa, wb, wc) = (whoami(&mut a, 1).await, whoami(&mut b, 1).await, whoami(&mut c, 1).await);
    assert_eq!(wa["cwd"], one.display().to_string(), "--project");
    assert_eq!(wb["cwd"], two.display().to_string(), "CLAUDE_PROJECT_DIR");
    assert_eq!(wc["cwd"], one.display().to_string(), "the proxy's working directory");
    assert_eq!(wa["pid"], wc["pid"], "one child per project");
    assert_ne!(wa["pid"], wb["pid"]);

    let status = he.status("fs").await;
    assert_eq!(status["share"], "project");
    let keys: BTreeSet<String> =
        status["children"].as_array().unwrap().iter().map(|c| c["share_key"].as_str().unwrap().to_owned()).collect();
    let want: BTreeSet<String> = [one.display().to_string(), two.display().to_string()].into();
    assert_eq!(keys, want, "{status}");

    // No session of project one declared roots: the child gets the project.
    let roots = tool_text(&mut a, 2, "ask_roots", json!({})).await;
    assert_eq!(roots, format!("file://{}", one.display()));
    // Nobody declared sampling: an error answer, not a hang.
    let reply = b.request(2, "tools/call", json!({"name": "sample", "arguments": {"prompt": "p"}})).await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    let t = text(&reply["result"]);
    assert!(t.contains("mcp-host") && t.contains("sampling/createMessage"), "{t}");
    // The session goes on.
    assert_eq!(tool_text(&mut b, 3, "echo", json!({"text": "still here"})).await, "still here");

    // A configured cwd wins over the project.
    let mut d = he.proxy("pinned", &one, &[]);
    d.initialize().await;
    let wd = whoami(&mut d, 1).await;
    assert_eq!(wd["cwd"], pinned.display().to_string());
    assert_eq!(he.children("pinned").await[0]["share_key"], one.display().to_string());
}

/// `share = "global"`: sessions of different projects share one child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_global_one_child_for_every_project() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global")]));
    let mut a = he.proxy("fs", &he.project("one"), &[]);
    let mut b = he.proxy("fs", &he.project("two"), &[]);
    a.initialize().await;
    b.initialize().await;
    let (wa, wb) = (whoami(&mut a, 1).await, whoami(&mut b, 1).await);
    assert_eq!(wa["pid"], wb["pid"]);
    // Not whichever project's proxy started the host: the home directory.
    assert_eq!(wa["cwd"], he.pe.env.home().display().to_string());
    let status = he.status("fs").await;
    assert_eq!(status["children"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["children"][0]["share_key"], "*");
}

/// `share = "session"`: one child per session, under the host (SIGINT to the proxies'
/// groups reaches none of them), and stopped with its whole process group when its session
/// ends (the proxy's stdin closes, it DELETEs the session): no orphans. The server is
/// started through `sh`, which leaves a `sleep` behind in the child's group, as `npx`
/// leaves `node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_session_one_child_per_session_gone_with_its_session() {
    let he = HostEnv::new(&stdio_daemon("fs", Path::new("sh"), &sh_fixture(), &[&share("session")]));
    let project = he.project("p");
    let mut a = he.proxy("fs", &project, &[]);
    let mut b = he.proxy("fs", &project, &[]);
    a.initialize().await;
    b.initialize().await;
    let (pa, pb) = (
        whoami(&mut a, 1).await["pid"].as_i64().unwrap() as i32,
        whoami(&mut b, 1).await["pid"].as_i64().unwrap() as i32,
    );
    assert_ne!(pa, pb, "a child per session");
    let (host, _) = he.host("fs").await;
    let status = he.status("fs").await;
    let mut pids = child_pids(&status);
    pids.sort();
    let mut want = vec![pa, pb];
    want.sort();
    assert_eq!(pids, want, "{status}");
    for pid in [pa, pb] {
        assert_eq!(parent(pid), Some(host));
        assert!(group(pid).len() >= 2, "the child and its sleep in group {pid}: {:?}", group(pid));
    }

    for p in [&a, &b] {
        p.signal_group(libc::SIGINT);
    }
    for p in [&a, &b] {
        p.wait_stderr("SIGINT ignored").await;
    }
    assert_eq!(tool_text(&mut a, 2, "echo", json!({"text": "a"})).await, "a");
    assert_eq!(tool_text(&mut b, 2, "echo", json!({"text": "b"})).await, "b");
    assert!(alive(host) && alive(pa) && alive(pb), "SIGINT reached no child");

    a.close_stdin();
    assert_eq!(a.wait_exit().await.code(), Some(0), "{}", a.stderr_text());
    wait_group_gone(pa).await;
    let status = he.wait_status("fs", "one child left", |s| child_pids(s) == [pb]).await;
    assert_eq!(status["sessions"], 1, "{status}");
    assert_eq!(tool_text(&mut b, 3, "echo", json!({"text": "b again"})).await, "b again");
    assert!(alive(pb));

    b.close_stdin();
    assert_eq!(b.wait_exit().await.code(), Some(0), "{}", b.stderr_text());
    wait_group_gone(pb).await;
    he.wait_status("fs", "no child left", |s| child_pids(s).is_empty()).await;
    assert!(alive(host), "the host stays for the next session");
}

/// SIGTERM (what `mcp-manager stop` sends first) while sessions are attached: the host
/// ends them (their open event streams would otherwise hold it up until SIGKILL), stops
/// every child with its process group, removes its lock file and exits. The proxies live
/// on: their next call finds the host gone and starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_host_its_sessions_and_every_child() {
    let he = HostEnv::new(&stdio_daemon("fs", Path::new("sh"), &sh_fixture(), &[&share("session")]));
    let project = he.project("p");
    let mut a = he.proxy("fs", &project, &[]);
    let mut b = he.proxy("fs", &project, &[]);
    a.initialize().await;
    b.initialize().await;
    let (pa, pb) = (
        whoami(&mut a, 1).await["pid"].as_i64().unwrap() as i32,
        whoami(&mut b, 1).await["pid"].as_i64().unwrap() as i32,
    );
    let (host, _) = he.host("fs").await;

    common::signal(host, libc::SIGTERM);
    wait_dead(host).await;
    wait_group_gone(pa).await;
    wait_group_gone(pb).await;
    eventually("the lock file removed", || he.lock("fs").is_none()).await;
    assert!(he.log_text("fs").contains("stopping: ending every child"), "{}", he.log_text("fs"));

    assert_eq!(tool_text(&mut a, 2, "echo", json!({"text": "a new host"})).await, "a new host");
    let (new_host, _) = he.host("fs").await;
    assert_ne!(new_host, host);
    assert_eq!(he.hosts("fs").len(), 1);
}

// ---------------------------------------------------------------------------------------
// Item 3: as if each session had its own server

/// Through the host, the official reference server looks to the Python SDK's client exactly
/// as it does when the client runs it itself: the same initialize result (the child's),
/// tools (those it offers only to clients declaring sampling, elicitation and roots
/// included), prompts and resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_through_the_host_is_indistinguishable() {
    let he = HostEnv::new(&everything_daemon("everything", &[&share("global")]));
    let project = he.project("p");
    let via_host = he.python_client("describe", "everything", &[("A", &project)]).await;
    let (node, args) = everything_command();
    let mut direct_cmd = vec![node.display().to_string()];
    direct_cmd.extend(args);
    let direct_cmd: Vec<&str> = direct_cmd.iter().map(String::as_str).collect();
    let direct = he.python_driver("describe", &[("A", &project)], &direct_cmd).await;
    assert_eq!(via_host["init"], direct["init"]);
    assert_eq!(via_host["tools"], direct["tools"]);
    assert_eq!(via_host["prompts"], direct["prompts"]);
    assert_eq!(via_host["resources"], direct["resources"]);
    for tool in ["trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"] {
        assert!(via_host["tools"].as_array().unwrap().contains(&json!(tool)), "{tool}: {}", via_host["tools"]);
    }
}

/// Two Python SDK sessions share one server-everything child: each session's sampling and
/// elicitation requests reach that session and its answer goes back to the child (the
/// tool's result is that session's answer); both run a long operation at once under the
/// same progress token and each gets exactly its own progress; each subscribes to its own
/// URI and gets only that URI's updates. The child was started (and initialized) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_requests_progress_and_updates_reach_their_session() {
    let he = HostEnv::new(&everything_daemon("everything", &[&share("global")]));
    let project = he.project("p");
    let out = he.python_client("everything", "everything", &[("A", &project), ("B", &project)]).await;
    assert_eq!(out["init"]["A"], out["init"]["B"], "each session gets the child's initialize result");
    assert_eq!(out["init"]["A"]["serverInfo"]["name"], "mcp-servers/everything");
    for (me, other) in [("A", "B"), ("B", "A")] {
        let sampled = out["sampling"][me]["text"].as_str().unwrap();
        assert!(sampled.contains(&format!("sampled by {me}")) && sampled.contains(&format!("model-{me}")), "{sampled}");
        assert!(!sampled.contains(&format!("by {other}")), "{sampled}");
        let elicited = out["elicitation"][me]["text"].as_str().unwrap();
        assert!(elicited.contains(&format!("Name: name-{me}")), "{elicited}");
        let requests = out["server_requests"][me].as_array().unwrap();
        let sampling: Vec<&Value> = requests.iter().filter(|r| r["method"] == "sampling/createMessage").collect();
        assert_eq!(sampling.len(), 1, "{requests:?}");
        assert!(sampling[0]["prompt"].as_str().unwrap().ends_with(&format!("prompt of {me}")), "{requests:?}");
        let modes: Vec<&str> = requests
            .iter()
            .filter(|r| r["method"] == "elicitation/create")
            .map(|r| r["mode"].as_str().unwrap())
            .collect();
        assert_eq!(modes, if me == "A" { vec!["form", "url"] } else { vec!["form"] }, "{requests:?}");
        assert_eq!(out["progress"][me]["progress"], json!([1.0, 2.0, 3.0]), "{}", out["progress"]);
        assert_eq!(out["progress"][me]["result"]["isError"], false);
        assert_eq!(out["progress_seen"][me].as_array().unwrap().len(), 3, "only its own: {}", out["progress_seen"]);
        let updated = out["updated"][me].as_array().unwrap();
        let uri = format!("demo://resource/static/document/{me}.md");
        assert!(updated.len() >= 2 && updated.iter().all(|u| *u == json!(uri)), "{me}: {updated:?}");
    }
    let url = out["url_elicitation"]["text"].as_str().unwrap();
    assert!(url.contains("User completed the URL elicitation flow") && url.contains("https://example.com/A"), "{url}");

    // The Python sessions are gone; a session that declared only form elicitation and no
    // sampling cannot answer the server's requests: an error answer each, never a hang.
    he.wait_status("everything", "the Python sessions ended", |s| s["sessions"] == 0).await;
    let mut raw = he.proxy("everything", &project, &[]);
    raw.request_message(initialize_with(0, json!({"elicitation": {}}))).await;
    raw.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
    for (id, tool, arguments) in [
        (1, "trigger-sampling-request", json!({"prompt": "p"})),
        (2, "trigger-url-elicitation", json!({"url": "https://example.com/", "message": "m"})),
    ] {
        let reply = raw.request_message(call(id, tool, arguments)).await;
        let failure = reply["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| text(&reply["result"]));
        assert!(reply["error"].is_object() || reply["result"]["isError"] == true, "{tool}: {reply}");
        assert!(failure.contains("mcp-host: no session attached"), "{tool}: {reply}");
    }

    let status = he.status("everything").await;
    assert_eq!(status["children"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["children"][0]["restarts"], 0, "{status}");
    assert_eq!(he.log_text("everything").matches("] started `").count(), 1, "{}", he.log_text("everything"));
}

/// Two Python SDK sessions of one project share one FastMCP child: roots/list, sampling and
/// elicitation go to the session whose call caused them; list_changed reaches both; each
/// session's logging/setLevel is honoured for it (the server itself filters nothing);
/// concurrent progress under one token reaches each its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastmcp_roots_logs_and_notifications_per_session() {
    let he = HostEnv::new(&fixture_daemon("fs", &[]));
    let project = he.project("p");
    let out = he.python_client("fastmcp", "fs", &[("A", &project), ("B", &project)]).await;
    for me in ["A", "B"] {
        assert_eq!(out["roots"][me]["text"], format!("file:///roots/{me}"), "{}", out["roots"]);
        assert_eq!(out["sample"][me]["text"], format!("sampled by {me}"));
        let elicited: Value = serde_json::from_str(out["elicit"][me]["text"].as_str().unwrap()).unwrap();
        assert_eq!(elicited, json!({"action": "accept", "content": {"name": format!("name-{me}")}}));
        let methods: Vec<&str> =
            out["server_requests"][me].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["roots/list", "sampling/createMessage", "elicitation/create"]);
        assert_eq!(out["progress"][me]["progress"], json!([1.0, 2.0, 3.0]), "{}", out["progress"]);
        assert_eq!(out["progress_seen"][me].as_array().unwrap().len(), 3, "{}", out["progress_seen"]);
    }
    assert_eq!(out["logs"]["A"], json!(["error-1"]), "A asked for errors only");
    assert_eq!(out["logs"]["B"], json!(["info-1", "error-1"]), "B asked for everything");
    let status = he.status("fs").await;
    assert_eq!(status["children"].as_array().unwrap().len(), 1, "{status}");
}

/// Eight sessions call at once, each several calls under the same ids as the others: every
/// call gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_sessions_calling_at_once_each_get_their_own_answers() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global")]));
    let project = he.project("p");
    let mut proxies: Vec<Proxy> = (0..8).map(|_| he.proxy("fs", &project, &[])).collect();
    join_all(proxies.iter_mut().map(|p| p.initialize())).await;
    let results = join_all(proxies.iter_mut().enumerate().map(|(s, p)| async move {
        for id in 1..=4u64 {
            p.send(&call(id, "echo", json!({"text": format!("session {s} call {id}")}))).await;
        }
        let mut texts = Vec::new();
        for id in 1..=4u64 {
            let reply = p.response(id).await;
            texts.push((id, text(&reply["result"])));
        }
        (s, texts)
    }))
    .await;
    for (s, texts) in results {
        for (id, t) in texts {
            assert_eq!(t, format!("session {s} call {id}"));
        }
    }
    assert_eq!(he.children("fs").await.len(), 1);
}

/// A call blocked in the child (until the test releases it) delays no other session's
/// call; a session's notifications/cancelled reaches the child for that session's request
/// only (another session's request under the same id goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_delays_no_one_and_cancellation_is_per_session() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global")]));
    let project = he.project("p");
    let (mut a, mut b, mut c) =
        (he.proxy("fs", &project, &[]), he.proxy("fs", &project, &[]), he.proxy("fs", &project, &[]));
    for p in [&mut a, &mut b, &mut c] {
        p.initialize().await;
    }
    let dir = he.pe.env.dir.path();
    let (gate_a, gate_c) = (dir.join("gate-a"), dir.join("gate-c"));
    a.send(&call(7, "block", json!({"path": gate_a}))).await;
    c.send(&call(7, "block", json!({"path": gate_c}))).await;
    he.wait_status("fs", "both calls in the child", |s| s["children"][0]["in_flight"] == 2).await;

    assert_eq!(tool_text(&mut b, 7, "echo", json!({"text": "not delayed"})).await, "not delayed");
    assert!(!answered(&a, 7) && !answered(&c, 7), "the blocked calls are still blocked");

    c.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"test"}})).await;
    let cancelled = |gate: &Path| Path::new(&format!("{}.cancelled", gate.display())).exists();
    eventually("C's call cancelled in the child", || cancelled(&gate_c)).await;
    he.wait_status("fs", "A's call alone in the child", |s| s["children"][0]["in_flight"] == 1).await;
    assert!(!cancelled(&gate_a), "A's request under the same id was not cancelled");
    assert!(!answered(&a, 7));

    std::fs::write(&gate_a, "go").unwrap();
    let reply = a.response(7).await;
    assert_eq!(text(&reply["result"]), "released", "{reply}");
    a.assert_protocol_only();
    b.assert_protocol_only();
}

/// A child killed with SIGKILL: the call in flight gets a JSON-RPC error naming the server
/// and its log; the child is restarted, initialized again and re-subscribed (once per URI
/// for two subscribers); later calls work; resources/updated reaches the URI's subscribers
/// only; the child is unsubscribed when the URI's last subscriber unsubscribes or leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_is_restarted_and_resubscribed() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global")]));
    let project = he.project("p");
    let (mut a, mut b, mut c) =
        (he.proxy("fs", &project, &[]), he.proxy("fs", &project, &[]), he.proxy("fs", &project, &[]));
    for p in [&mut a, &mut b, &mut c] {
        p.initialize().await;
    }
    let uri = "x://shared";
    for p in [&mut a, &mut b] {
        let reply = p.request(1, "resources/subscribe", json!({"uri": uri})).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    assert_eq!(seen(&mut c, 1).await["subscribe"], json!({uri: 1}), "the child is subscribed once per URI");

    let reply = b.request(2, "logging/setLevel", json!({"level": "warning"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let (host, _) = he.host("fs").await;
    let old = child_pids(&he.status("fs").await)[0];
    a.send(&call(2, "block", json!({"path": he.pe.env.dir.path().join("never")}))).await;
    he.wait_status("fs", "the call in the child", |s| s["children"][0]["in_flight"] == 1).await;
    common::signal(old, libc::SIGKILL);

    let reply = a.response(2).await;
    let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("not an error: {reply}"));
    assert!(message.contains("`fs`"), "names the server: {message}");
    assert!(message.contains(&he.log_file("fs").display().to_string()), "names its log: {message}");
    let status = he
        .wait_status("fs", "a new child", |s| {
            child_pids(s).len() == 1 && child_pids(s)[0] != old && s["children"][0]["state"] == "running"
        })
        .await;
    assert_eq!(status["children"][0]["restarts"], 1, "{status}");
    wait_dead(old).await;
    assert!(alive(host));
    assert_eq!(he.log_text("fs").matches("] started `").count(), 2, "started again:\n{}", he.log_text("fs"));

    // The new child: subscribed again, once, its log level set again (after it answered
    // the handshake, so asked until done); later calls work.
    let again = seen_until(&mut c, 100, |s| s["levels"] != json!([])).await;
    assert_eq!(again["subscribe"], json!({uri: 1}), "re-subscribed once: {again}");
    assert_eq!(again["levels"], json!(["warning"]), "{again}");
    assert_eq!(tool_text(&mut a, 3, "echo", json!({"text": "after the restart"})).await, "after the restart");

    // An update of the URI reaches A and B; C, not subscribed, gets only the list_changed
    // sent after it (so an update routed to C would have come first).
    tool_text(&mut c, 3, "touch", json!({"uri": uri})).await;
    tool_text(&mut c, 4, "announce", json!({})).await;
    for p in [&mut a, &mut b] {
        until_message(p, |m| is_notification(m, "notifications/resources/updated") && m["params"]["uri"] == uri).await;
    }
    let (_, before) = until_message(&mut c, |m| is_notification(m, "notifications/tools/list_changed")).await;
    assert!(
        !before.iter().any(|m| is_notification(m, "notifications/resources/updated")),
        "C is not subscribed: {before:?}"
    );

    // Unsubscribed when the last subscriber unsubscribes, or leaves.
    a.request(4, "resources/unsubscribe", json!({"uri": uri})).await;
    assert_eq!(seen(&mut c, 5).await["unsubscribe"], json!({}), "B is still subscribed");
    b.request(4, "resources/unsubscribe", json!({"uri": uri})).await;
    assert_eq!(seen(&mut c, 6).await["unsubscribe"], json!({uri: 1}));
    b.request(5, "resources/subscribe", json!({"uri": "x://b-only"})).await;
    b.close_stdin();
    assert_eq!(b.wait_exit().await.code(), Some(0));
    seen_until(&mut c, 200, |s| s["unsubscribe"]["x://b-only"] == 1).await;
}

/// The fixture's `seen`, asked (under ids from `first_id` on) until `done` holds (bounded).
async fn seen_until(proxy: &mut Proxy, first_id: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut id = first_id;
    loop {
        let s = seen(proxy, id).await;
        if done(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "timed out; the child has seen {s}");
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A server that keeps dying is not restarted in a tight loop: after two quick deaths,
/// the next start waits (a session is told, with the server named), and the host lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_server_is_restarted_with_backoff() {
    let he = HostEnv::new(&fixture_daemon("crashy", &[&share("global"), "env = { FIXTURE_CRASH = \"1\" }"]));
    let mut proxy = he.proxy("crashy", &he.project("p"), &[]);
    proxy.send(&common::initialize_request(0)).await;
    let reply = proxy.response(0).await;
    let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("not an error: {reply}"));
    assert!(message.contains("crashy"), "{message}");
    let (host, port) = he.host("crashy").await;

    let mut told = None;
    for _ in 0..30 {
        let mut http = Http::new(format!("http://127.0.0.1:{port}/mcp"));
        let reply = http.initialize(common::VERSION).await;
        let message = reply.body["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("`crashy`"), "every attempt fails, naming the server: {}", reply.text);
        if message.contains("keeps exiting") {
            told = Some(message);
            break;
        }
    }
    let told = told.expect("no attempt was told to wait");
    assert!(told.contains(&he.log_file("crashy").display().to_string()), "{told}");
    assert!(alive(host));
    let status = he.status("crashy").await;
    assert!(status["children"][0]["restarts"].as_u64().unwrap() >= 2, "{status}");
}

/// A child without sessions for `idle_stop_secs` is stopped; the next session starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_child_is_stopped_and_started_again() {
    let he = HostEnv::new(&fixture_daemon("fs", &[&share("global"), "idle_stop_secs = 1"]));
    let project = he.project("p");
    let mut a = he.proxy("fs", &project, &[]);
    a.initialize().await;
    let first = whoami(&mut a, 1).await["pid"].as_i64().unwrap() as i32;
    a.close_stdin();
    assert_eq!(a.wait_exit().await.code(), Some(0));
    he.wait_status("fs", "the idle child stopped", |s| child_pids(s).is_empty()).await;
    wait_dead(first).await;

    let mut b = he.proxy("fs", &project, &[]);
    b.initialize().await;
    let second = whoami(&mut b, 1).await["pid"].as_i64().unwrap() as i32;
    assert_ne!(first, second);
    assert_eq!(child_pids(&he.status("fs").await), [second]);
}
