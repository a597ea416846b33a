//! On loopback without `--token`, `memory-server serve` serves only the user it runs as:
//! `curl` run as another uid (through `setpriv`, so these tests need root) gets 403 with
//! the reason, on `/health` as on `/mcp`; the daemon's own user needs nothing new; with
//! `--token` the token decides instead; and where users cannot be told apart the daemon
//! does not start without a token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::curl::{As, OTHER_UID, curl, my_uid, post_json, require_root};
use e2e::{Daemon, PATIENCE, TestEnv, bin, free_port};

const CREATE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_entities","arguments":{"entities":[{"name":"Ada","entityType":"person","observations":["wrote the first program"]}]}}}"#;
const READ: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_graph","arguments":{}}}"#;

fn entity_names(reply: &e2e::curl::CurlReply) -> Vec<String> {
    e2e::entity_names(&reply.body["result"]["structuredContent"])
}

#[test]
fn another_user_gets_403_with_the_reason_and_the_own_user_is_served() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let health = format!("http://127.0.0.1:{}/health", daemon.port);

    let refused = curl(As::Other, &health, &[]);
    assert_eq!(refused.status, 403, "{}", refused.text);
    let message = refused.error_message();
    assert!(
        message.contains(&format!("this daemon serves only uid {} (the user it runs as)", my_uid()))
            && message.contains(&format!("this connection belongs to uid {OTHER_UID}"))
            && message.contains("--token"),
        "{message}"
    );
    let write = curl(As::Other, &daemon.url(), &post_json(CREATE));
    assert_eq!(write.status, 403, "{}", write.text);
    assert!(write.error_message().contains(&format!("belongs to uid {OTHER_UID}")), "{}", write.text);

    // The user's own plain curl needs nothing new.
    let ok = curl(As::Me, &health, &[]);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["status"], "ok");
    let read = curl(As::Me, &daemon.url(), &post_json(READ));
    assert_eq!(read.status, 200, "{}", read.text);
    assert!(entity_names(&read).is_empty(), "the refused write wrote nothing: {}", read.text);
    let created = curl(As::Me, &daemon.url(), &post_json(CREATE));
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(entity_names(&curl(As::Me, &daemon.url(), &post_json(READ))), ["Ada"]);

    assert!(daemon.log_text().contains(&format!("belongs to uid {OTHER_UID}")), "{}", daemon.log_text());
}

#[test]
fn the_rule_holds_on_ipv6_loopback_too() {
    let env = TestEnv::new();
    let port = free_port();
    let log = env.dir.path().join("daemon-v6.log");
    let child = env
        .command(&bin("memory-server"))
        .args(["serve", "--bind", "::1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn memory-server");
    let mut daemon = Daemon { child, port, log };
    let health = format!("http://[::1]:{port}/health");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("memory-server --bind ::1 exited ({status}): {}", daemon.log_text());
        }
        if std::net::TcpStream::connect(("::1", port)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "memory-server --bind ::1 did not listen: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(curl(As::Me, &health, &[]).status, 200);
    let refused = curl(As::Other, &health, &[]);
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.error_message().contains(&format!("belongs to uid {OTHER_UID}")), "{}", refused.text);
}

#[test]
fn with_a_token_another_user_with_the_token_is_served() {
    let env = TestEnv::new();
    let token = "e2e-shared-secret";
    let daemon = Daemon::start_with_token(&env, token, &[], |_| {});
    let health = format!("http://127.0.0.1:{}/health", daemon.port);
    let bearer = format!("Authorization: Bearer {token}");

    let without = curl(As::Other, &health, &[]);
    assert_eq!(without.status, 401, "the token rule, not the uid rule: {}", without.text);
    let with = curl(As::Other, &health, &["-H", &bearer]);
    assert_eq!(with.status, 200, "{}", with.text);
    let mut create = post_json(CREATE);
    create.extend(["-H", &bearer]);
    assert_eq!(curl(As::Other, &daemon.url(), &create).status, 200);
    let mut read = post_json(READ);
    read.extend(["-H", &bearer]);
    assert_eq!(entity_names(&curl(As::Me, &daemon.url(), &read)), ["Ada"]);
}

/// `memory-server ARGS` in a private mount namespace whose `/proc` is an empty tmpfs, so
/// no socket table can be read (as on a system without them).
fn without_proc(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.command(Path::new("unshare"));
    cmd.args(["--mount", "sh", "-c", r#"mount -t tmpfs none /proc && exec "$0" "$@""#])
        .arg(bin("memory-server"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// With no socket table to read (`/proc` hidden), the daemon asks the kernel about each
/// connection directly (`sock_diag`), so it starts without a token and the rule holds.
/// (Where neither answers, it refuses to start without a token: `loopback-guard`'s
/// `the_probe_fails_where_users_cannot_be_told_apart`.)
#[test]
fn without_proc_the_kernel_is_asked_directly_and_the_rule_holds() {
    require_root("hiding /proc in a private mount namespace (unshare --mount)");
    let env = TestEnv::new();
    let port = free_port().to_string();
    let log = env.dir.path().join("daemon-no-proc.log");
    let child = without_proc(&env, &["serve", "--port", &port])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn unshare");
    let mut daemon = Daemon { child, port: port.parse().unwrap(), log };
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", daemon.port)).is_err() {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("memory-server exited ({status}): {}", daemon.log_text());
        }
        assert!(Instant::now() < deadline, "memory-server did not listen: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = format!("http://127.0.0.1:{port}/health");
    assert_eq!(curl(As::Other, &health, &[]).status, 403);
    assert_eq!(curl(As::Me, &health, &[]).status, 200);
}
