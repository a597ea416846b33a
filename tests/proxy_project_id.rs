//! `project_id = "git-remote"` (issue 18 item 2; SPEC 2.12, 3.2): mcp-proxy sends
//! `Mcp-Project-Id` with the project's normalised `origin` remote, else its path. Real
//! repositories made by `git` (clones at different paths, a linked worktree, a repository
//! without an origin, a plain directory) in front of the recording fake upstream of
//! `proxy_common/fake.rs`, which keeps every POST's header.

#[path = "proxy_common/mod.rs"]
mod common;

use std::path::Path;

use common::fake::Fake;
use common::{Proxy, ProxyEnv};
use e2e::Daemon;
use e2e::postgres::TestPostgres;
use serde_json::json;

/// Runs `git` in `dir` with a configuration of its own (no user or system file can
/// rewrite URLs or refuse the directory).
fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs (tests/proxy_project_id.rs needs git on PATH)");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
}

/// A repository at `dir` whose `origin` is `url` (none without), with one commit.
fn repository(dir: &Path, origin: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    if let Some(url) = origin {
        git(dir, &["remote", "add", "origin", url]);
    }
    git(dir, &["commit", "-q", "--allow-empty", "-m", "start"]);
}

/// Starts a proxy for `target` in `dir`, runs `initialize`, `tools/list` and a tool call,
/// and returns the `Mcp-Project-Id` every POST carried (all alike, checked) and the proxy.
async fn ids_sent(pe: &ProxyEnv, fake: &Fake, target: &str, dir: &Path) -> (Option<String>, Proxy) {
    let before = fake.project_ids().len();
    let mut proxy = Proxy::spawn(pe.command(target, dir, &[]), target);
    let init = proxy.initialize().await;
    assert_eq!(init["serverInfo"]["name"], "fake-upstream", "{init}");
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(2), "{list}");
    let fast = proxy.request(2, "tools/call", json!({"name":"fast","arguments":{}})).await;
    assert_eq!(fast["result"]["content"][0]["text"], "fast done", "{fast}");
    let seen: Vec<_> = fake.project_ids().split_off(before);
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["initialize", "notifications/initialized", "tools/list", "tools/call"], "{seen:?}");
    let first = seen[0].1.clone();
    assert!(seen.iter().all(|(_, id)| *id == first), "every request carries the same id: {seen:?}");
    proxy.assert_protocol_only();
    (first, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_an_id_and_different_repositories_do_not() {
    let fake = Fake::start().await;
    let pe = ProxyEnv::bare();
    pe.write_config(&format!(
        "[daemons.team]\nurl = \"{url}\"\nproject_id = \"git-remote\"\n\n[daemons.plain]\nurl = \"{url}\"\n",
        url = fake.url
    ));
    let base = pe.env.dir.path().join("clones");
    // One repository cloned twice, at different paths, with different spellings of its
    // remote (one of them carrying credentials), and a linked worktree of the first.
    let (a, b, worktree) = (base.join("alice/repo"), base.join("bob/src/checkout"), base.join("alice/repo-fix"));
    repository(&a, Some("git@github.com:org/repo.git"));
    repository(&b, Some("https://bob:s3cret-token@github.com/org/repo"));
    git(&a, &["worktree", "add", "-q", "-b", "fix", worktree.to_str().unwrap()]);
    let other = base.join("alice/other");
    repository(&other, Some("https://github.com/org/other.git"));
    let no_origin = base.join("alice/local-only");
    repository(&no_origin, None);
    let plain = pe.project("plain");

    let (id_a, proxy_a) = ids_sent(&pe, &fake, "team", &a).await;
    assert_eq!(id_a.as_deref(), Some("github.com/org/repo"));
    proxy_a.wait_stderr("Mcp-Project-Id: github.com/org/repo").await;
    let (id_b, proxy_b) = ids_sent(&pe, &fake, "team", &b).await;
    assert_eq!(id_b, id_a, "two clones at different paths send the same id");
    assert!(!proxy_b.stderr_text().contains("s3cret"), "{}", proxy_b.stderr_text());
    let (id_wt, _) = ids_sent(&pe, &fake, "team", &worktree).await;
    assert_eq!(id_wt, id_a, "a linked worktree is the same repository");

    let (id_other, _) = ids_sent(&pe, &fake, "team", &other).await;
    assert_eq!(id_other.as_deref(), Some("github.com/org/other"), "another repository, another id");
    // No origin, or no repository: the project's path (as Mcp-Project-Path sends it).
    let (id_local, _) = ids_sent(&pe, &fake, "team", &no_origin).await;
    assert_eq!(id_local.as_deref(), Some(no_origin.canonicalize().unwrap().to_str().unwrap()));
    let (id_plain, _) = ids_sent(&pe, &fake, "team", &plain).await;
    assert_eq!(id_plain.as_deref(), Some(plain.canonicalize().unwrap().to_str().unwrap()));

    // A daemon configured without project_id gets no id at all.
    let (none, _) = ids_sent(&pe, &fake, "plain", &a).await;
    assert_eq!(none, None);

    assert!(fake.project_ids().iter().all(|(_, id)| !id.as_deref().unwrap_or_default().contains("s3cret")));
}

async fn call(proxy: &mut Proxy, id: u64, name: &str, args: serde_json::Value) -> serde_json::Value {
    proxy.request(id, "tools/call", json!({"name": name, "arguments": args})).await
}

/// The whole chain of issue 18 item 2: proxies in two clones of one repository, at
/// different paths, reach a memory-server on PostgreSQL and share one memory; a proxy in
/// another repository sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_one_memory_on_a_team_daemon() {
    let pg = TestPostgres::start();
    let pe = ProxyEnv::bare();
    let team = Daemon::start(&pe.env, &["--database", &pg.url()]);
    pe.write_config(&format!("[daemons.team]\nurl = \"{}\"\nproject_id = \"git-remote\"\n", team.url()));
    let base = pe.env.dir.path().join("clones");
    let (a, b, other) = (base.join("alice/repo"), base.join("bob/checkout"), base.join("alice/other"));
    repository(&a, Some("git@github.com:org/repo.git"));
    repository(&b, Some("https://github.com/org/repo"));
    repository(&other, Some("https://github.com/org/other.git"));

    let mut alice = Proxy::spawn(pe.command("team", &a, &[]), "team");
    alice.initialize().await;
    let created = call(
        &mut alice,
        1,
        "create_entities",
        json!({"entities":[{"name":"decision","entityType":"adr","observations":["use PostgreSQL"]}]}),
    )
    .await;
    assert_eq!(created["result"]["structuredContent"]["entities"][0]["name"], "decision", "{created}");

    let mut bob = Proxy::spawn(pe.command("team", &b, &[]), "team");
    bob.initialize().await;
    let seen = call(&mut bob, 1, "search_nodes", json!({"query":"postgresql"})).await;
    assert_eq!(
        seen["result"]["structuredContent"]["entities"][0]["observations"],
        json!(["use PostgreSQL"]),
        "the other clone sees the memory: {seen}"
    );
    let mut carol = Proxy::spawn(pe.command("team", &other, &[]), "team");
    carol.initialize().await;
    let seen = call(&mut carol, 1, "read_graph", json!({})).await;
    assert_eq!(seen["result"]["structuredContent"]["entities"], json!([]), "another repository: {seen}");
    assert_eq!(pg.psql("SELECT key FROM memory_projects ORDER BY id"), "github.com/org/repo\ngithub.com/org/other");
    for p in [&alice, &bob, &carol] {
        p.assert_protocol_only();
    }
}
