//! `url` daemons behind `https://` (issue 16, item 6; SPEC 3.2): the proxy's HTTP client
//! speaks TLS with rustls, trusting the system's roots plus the daemon's optional
//! `ca_file` (PEM, possibly several certificates). The upstream is the fake of
//! `proxy_common/fake.rs` served over TLS on loopback with a certificate for `localhost`
//! issued by a CA each test makes afresh (`proxy_common/tls.rs`), so only a `ca_file`
//! holding that CA can make it trusted.

#[path = "proxy_common/mod.rs"]
mod common;

use std::path::Path;

use common::fake::Fake;
use common::tls::TestCa;
use common::{Proxy, ProxyEnv, eventually, initialize_request};
use serde_json::{Value, json};

fn secure_config(fake: &Fake, ca_file: Option<&Path>) -> String {
    let mut text = format!("[daemons.secure]\nurl = \"{}\"\n", fake.url);
    if let Some(path) = ca_file {
        text.push_str(&format!("ca_file = \"{}\"\n", path.display()));
    }
    text
}

fn error_message(reply: &Value) -> &str {
    reply.pointer("/error/message").and_then(Value::as_str).unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_daemon_is_reached_with_the_ca_from_its_ca_file() {
    let ca = TestCa::new("e2e test CA");
    let fake = Fake::start_https(&ca).await;
    assert!(fake.url.starts_with("https://localhost:"), "{}", fake.url);
    let pe = ProxyEnv::bare();
    // A bundle: an unrelated CA first, then the server's; every certificate is trusted.
    let ca_file = pe.env.dir.path().join("cas.pem");
    std::fs::write(&ca_file, format!("{}{}", TestCa::new("unrelated CA").ca_pem, ca.ca_pem)).unwrap();
    pe.write_config(&secure_config(&fake, Some(&ca_file)));
    let mut proxy = Proxy::spawn(pe.command("secure", &pe.project("p"), &[]), "secure");
    let init = proxy.initialize().await;
    assert_eq!(init["serverInfo"]["name"], "fake-upstream", "{init}");
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(2), "{list}");
    let fast = proxy.request(2, "tools/call", json!({"name":"fast","arguments":{}})).await;
    assert_eq!(fast["result"]["content"][0]["text"], "fast done", "{fast}");
    assert!(fake.tls_refusals().is_empty(), "{:?}", fake.tls_refusals());
    proxy.assert_protocol_only();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_client_gets_an_error_naming_the_certificate_problem() {
    let ca = TestCa::new("e2e test CA");
    let fake = Fake::start_https(&ca).await;
    let pe = ProxyEnv::bare();
    pe.write_config(&secure_config(&fake, None));
    let mut proxy = Proxy::spawn(pe.command("secure", &pe.project("p"), &[]), "secure");
    proxy.send(&initialize_request(0)).await;
    let reply = proxy.response(0).await;
    let message = error_message(&reply);
    assert!(message.contains("daemon `secure`") && message.contains("invalid peer certificate"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    // The proxy keeps answering, with the same cause.
    let again = proxy.request(1, "tools/list", json!({})).await;
    assert!(error_message(&again).contains("invalid peer certificate"), "{again}");
    assert!(proxy.child.try_wait().unwrap().is_none(), "the proxy is still running");
    // Nothing got past the handshake, which the server saw refused.
    assert_eq!(fake.count("POST"), 0, "{:?}", fake.events());
    eventually("the server to see a refused handshake", || !fake.tls_refusals().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_cannot_be_read_or_parsed_is_named() {
    let ca = TestCa::new("e2e test CA");
    let fake = Fake::start_https(&ca).await;
    let pe = ProxyEnv::bare();
    let dir = pe.env.dir.path();
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    // A PEM block of the right kind whose contents are no certificate.
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n").unwrap();
    let cases = [(&missing, "cannot read ca_file"), (&garbage, "cannot parse ca_file"), (&broken, "ca_file")];
    for (path, what) in cases {
        pe.write_config(&secure_config(&fake, Some(path)));
        let mut proxy = Proxy::spawn(pe.command("secure", &pe.project("p"), &[]), "secure");
        proxy.send(&initialize_request(0)).await;
        let reply = proxy.response(0).await;
        let message = error_message(&reply);
        assert!(message.contains(what) && message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("daemon `secure`"), "{message}");
        // Logged on stderr too, when the proxy starts.
        proxy.wait_stderr(&path.display().to_string()).await;
        proxy.assert_protocol_only();
    }
    assert_eq!(fake.count("POST"), 0, "nothing was sent: {:?}", fake.events());
}
