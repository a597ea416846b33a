//! `mcp-manager serve` has no token: its API serves only the user it runs as. `curl` as
//! another uid (through `setpriv`, so this needs root) gets 403 with the reason and
//! changes nothing; the user's own plain `curl` is served as before; and where users
//! cannot be told apart, `serve` does not start.

#[path = "manager_common/mod.rs"]
mod common;

use common::ManagerEnv;
use e2e::curl::{As, OTHER_UID, curl, my_uid, post_json};

#[test]
fn another_user_gets_403_and_the_own_user_is_served() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&[]);
    let api = |path: &str| format!("http://127.0.0.1:{}{path}", mgr.port);

    let refused = curl(As::Other, &api("/status"), &[]);
    assert_eq!(refused.status, 403, "{}", refused.text);
    let message = refused.error_message();
    assert!(
        message.contains(&format!("serves only uid {} (the user it runs as)", my_uid()))
            && message.contains(&format!("this connection belongs to uid {OTHER_UID}"))
            && message.contains("Each user runs their own mcp-manager"),
        "{message}"
    );
    let ensure = curl(As::Other, &api("/ensure"), &post_json(r#"{"name":"memory"}"#));
    assert_eq!(ensure.status, 403, "{}", ensure.text);
    assert!(!env.memory_up(), "a refused /ensure started nothing");

    let ping = curl(As::Me, &api("/ping"), &[]);
    assert_eq!(ping.status, 200, "{}", ping.text);
    assert_eq!(ping.body["service"], "mcp-manager");
    let ensured = curl(As::Me, &api("/ensure"), &post_json(r#"{"name":"memory"}"#));
    assert_eq!(ensured.status, 200, "{}", ensured.text);
    assert_eq!(ensured.body["running"], true);
    assert!(env.memory_up());

    // The daemon it started applies the same rule.
    let health = curl(As::Other, &format!("http://127.0.0.1:{}/health", env.memory_port), &[]);
    assert_eq!(health.status, 403, "{}", health.text);

    assert!(mgr.log_text().contains(&format!("belongs to uid {OTHER_UID}")), "{}", mgr.log_text());
}
