//! Command-line behaviour of the `memory-server` binary itself. (Being an integration
//! test of this package also makes `cargo test --workspace` build the binary that the
//! end-to-end suite in `tests/` drives.)

use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_memory-server");

#[test]
fn port_in_use_is_one_clear_line_and_a_failure() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["serve", "--port", &port]).env("HOME", home.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("memory-server: port"), "{stderr}");
    assert!(last.contains(&port) && last.contains("already in use"), "{stderr}");
}

#[test]
fn public_bind_without_token_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--bind", "0.0.0.0", "--port", "0"])
        .env("HOME", home.path())
        .env_remove("MEMORY_SERVER_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn max_connections_out_of_range_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--port", "0", "--max-connections", "0"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "memory-server: --max-connections must be between 1 and 1048576, not 0");
}
