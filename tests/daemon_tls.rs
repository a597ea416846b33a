//! memory-server serving HTTPS itself (issue 18 item 7; SPEC 2.12): `--tls-cert` and
//! `--tls-key` with a certificate for `localhost` issued by a CA each test makes
//! (`proxy_common/tls.rs`). mcp-proxy reaches it as a `url = "https://localhost:PORT/mcp"`
//! daemon with that CA as `ca_file`; plain HTTP on the port gets a 400 and the daemon
//! serves on; the Host/Origin guard, the same-user rule and `--max-connections` hold over
//! TLS; files that cannot be used stop it at start-up naming them (exit 2).

#[path = "proxy_common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::TestCa;
use common::{Proxy, ProxyEnv};
use e2e::curl::{As, OTHER_UID, curl, post_json};
use e2e::{PATIENCE, TestEnv, bin, free_port};
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

/// The CA's certificate and the server's certificate and key as files, in a directory
/// every user can read (the other-user check runs curl as uid 65534 with the CA file).
struct TlsFiles {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn tls_files(ca: &TestCa) -> TlsFiles {
    let dir = tempfile::Builder::new().prefix("mcp-e2e-tls-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let (ca_path, cert, key) = (
        write("ca.pem", &ca.ca_pem, 0o644),
        write("cert.pem", &ca.cert_pem, 0o644),
        write("key.pem", &ca.key_pem, 0o600),
    );
    TlsFiles { _dir: dir, ca: ca_path, cert, key }
}

/// A `memory-server serve --tls-cert --tls-key` of `env` on a free port, ready (its
/// `/health` answers over TLS); killed on drop.
struct TlsDaemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TlsDaemon {
    fn start(env: &TestEnv, files: &TlsFiles, extra: &[&str]) -> TlsDaemon {
        for _ in 0..5 {
            let port = free_port();
            let log = env.dir.path().join(format!("daemon-{port}.log"));
            let mut cmd = env.command(&bin("memory-server"));
            cmd.args(["serve", "--port", &port.to_string()])
                .arg("--tls-cert")
                .arg(&files.cert)
                .arg("--tls-key")
                .arg(&files.key)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut daemon = TlsDaemon { child: cmd.spawn().expect("spawn memory-server"), port, log };
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline && daemon.child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && curl(As::Me, &daemon.url("/health"), &["--cacert", files.ca.to_str().unwrap()]).status == 200
                {
                    return daemon;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !daemon.log_text().contains("already in use") {
                panic!("memory-server did not come up over TLS; log:\n{}", daemon.log_text());
            }
        }
        panic!("could not find a free port for memory-server");
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` over plain TCP and reads until the server closes.
fn plain_exchange(port: u16, request: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reaches_an_https_daemon_and_plain_http_is_refused_cleanly() {
    let ca = TestCa::new("daemon test CA");
    let files = tls_files(&ca);
    let pe = ProxyEnv::bare();
    let mut daemon = TlsDaemon::start(&pe.env, &files, &[]);
    assert!(daemon.log_text().contains(&format!("listening on https://127.0.0.1:{}/mcp", daemon.port)));
    pe.write_config(&format!(
        "[daemons.team]\nurl = \"{}\"\nca_file = \"{}\"\n",
        daemon.url("/mcp"),
        files.ca.display()
    ));
    let project = pe.project("app");
    let mut proxy = Proxy::spawn(pe.command("team", &project, &[]), "team");
    let init = proxy.initialize().await;
    assert_eq!(init["serverInfo"]["name"], "memory-server", "{init}");
    let list = proxy.request(1, "tools/list", json!({})).await;
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(9), "{list}");
    proxy.create_entity(2, "over-tls").await;
    assert_eq!(proxy.entity_names(3).await, ["over-tls"]);
    // Routed to the project's own database, as over plain HTTP.
    assert!(project.join(".claude/memory.db").exists());

    // Plain HTTP to the TLS port: a 400 saying to use https://, then the connection closes.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let reply = plain_exchange(
        daemon.port,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("serves HTTPS only") && reply.contains("https://"), "{reply}");
    let reply = curl(As::Me, &format!("http://127.0.0.1:{}/health", daemon.port), &[]);
    assert_eq!(reply.status, 400, "{}", reply.text);
    // A client that connects and sends nothing (its handshake waits in a task of its own,
    // not in the accept loop), and one that is not TLS at all, hold nothing up.
    let silent = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    let garbage = plain_exchange(daemon.port, "\u{16}\u{3}\u{1}garbage that is no ClientHello");
    assert!(!garbage.contains("HTTP/1.1 200"), "{garbage}");

    // The daemon serves on: the same session, and a new TLS client.
    proxy.create_entity(4, "after-plain").await;
    assert_eq!(proxy.entity_names(5).await, ["over-tls", "after-plain"]);
    let ca_arg = files.ca.to_str().unwrap();
    assert_eq!(curl(As::Me, &daemon.url("/health"), &["--cacert", ca_arg]).status, 200);
    // Without the CA a client refuses the certificate; the daemon does not mind.
    let mut untrusting = std::process::Command::new("curl");
    untrusting.args(["-q", "-sS", "--noproxy", "*", "--max-time", "10", &daemon.url("/health")]);
    assert!(!untrusting.output().unwrap().status.success());
    assert_eq!(curl(As::Me, &daemon.url("/health"), &["--cacert", ca_arg]).status, 200);
    drop(silent);
    proxy.assert_protocol_only();
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon is still running");
}

#[test]
fn the_guards_hold_over_tls() {
    let ca = TestCa::new("daemon test CA");
    let files = tls_files(&ca);
    let env = TestEnv::new();
    let daemon = TlsDaemon::start(&env, &files, &[]);
    let ca_arg = files.ca.to_str().unwrap();
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut args = vec!["--cacert", ca_arg];
    args.extend(post_json(ping));
    assert_eq!(curl(As::Me, &daemon.url("/mcp"), &args).status, 200);
    // DNS rebinding: a foreign Host or Origin is refused, TLS or not.
    let reply = curl(As::Me, &daemon.url("/mcp"), &[&args[..], &["-H", "Host: evil.example"]].concat());
    assert_eq!(reply.status, 403, "{}", reply.text);
    let reply = curl(As::Me, &daemon.url("/mcp"), &[&args[..], &["-H", "Origin: https://evil.example"]].concat());
    assert_eq!(reply.status, 403, "{}", reply.text);
    // Without a token only the daemon's own user is served: the owner of the TCP
    // connection is looked up when it is accepted, before its handshake.
    let reply = curl(As::Other, &daemon.url("/mcp"), &args);
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert!(reply.error_message().contains(&format!("uid {OTHER_UID}")), "{}", reply.text);
}

/// A TLS connection to the daemon, handshake done, holding its place.
async fn tls_connection(port: u16, ca: &TestCa) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_over_tls_and_the_refusal_is_readable() {
    let ca = TestCa::new("daemon test CA");
    let files = tls_files(&ca);
    let env = TestEnv::new();
    let daemon = TlsDaemon::start(&env, &files, &["--max-connections", "2"]);
    let ca_arg = files.ca.to_str().unwrap().to_owned();
    let url = daemon.url("/health");
    let health = move || {
        let (url, ca_arg) = (url.clone(), ca_arg.clone());
        async move { tokio::task::spawn_blocking(move || curl(As::Me, &url, &["--cacert", &ca_arg])).await.unwrap() }
    };
    // The curl that checked readiness may still hold its place for a moment.
    let deadline = Instant::now() + PATIENCE;
    let first = tls_connection(daemon.port, &ca).await;
    let second = tls_connection(daemon.port, &ca).await;
    loop {
        let reply = health().await;
        if reply.status == 503 {
            // Told over TLS, so the client reads why.
            assert!(reply.error_message().contains("at most 2 at once (--max-connections)"), "{}", reply.text);
            break;
        }
        assert!(Instant::now() < deadline, "the third connection was never refused: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    while health().await.status != 200 {
        assert!(Instant::now() < deadline, "a freed place was never given to a new connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    assert!(daemon.log_text().contains("too many connections"), "{}", daemon.log_text());
}

#[test]
fn files_that_cannot_be_used_stop_the_daemon_naming_them() {
    let ca = TestCa::new("daemon test CA");
    let other = TestCa::new("another CA");
    let files = tls_files(&ca);
    let env = TestEnv::new();
    let dir = env.dir.path();
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let missing = dir.join("missing.pem");
    let run = |cert: &Path, key: &Path| {
        let out = env
            .command(&bin("memory-server"))
            .args(["serve", "--port", &free_port().to_string()])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_owned())
    };
    let (code, err) = run(&missing, &files.key);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with(&format!("memory-server: --tls-cert {}: cannot read: ", missing.display())), "{err}");
    // A key that is not the certificate's: both files named.
    let (code, err) = run(&files.cert, &other_key);
    assert_eq!(code, Some(2), "{err}");
    let both = format!("memory-server: --tls-cert {} with --tls-key {}: ", files.cert.display(), other_key.display());
    assert!(err.starts_with(&both), "{err}");
    // The key and the certificate swapped.
    let (code, err) = run(&files.key, &files.cert);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("--tls-cert {}: holds no PEM certificate", files.key.display())), "{err}");
    // One without the other: clap's usage error.
    let out = env.command(&bin("memory-server")).args(["serve", "--tls-cert"]).arg(&files.cert).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"), "{}", String::from_utf8_lossy(&out.stderr));
}
