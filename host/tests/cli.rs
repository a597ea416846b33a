//! The `mcp-host` command line before it serves anything: an unknown `--target`, or one
//! that is not a stdio server, is reported on stderr in one line and exits 2. Being an
//! integration test of this package, it also makes `cargo test --workspace` build the
//! `mcp-host` binary that the end-to-end tests (`tests/host_*.rs`) run.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A fresh directory for one test, holding HOME and the runtime dir with `config`.
fn env_with_config(test: &str, config: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("host-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::fs::create_dir_all(dir.join("runtime")).unwrap();
    std::fs::write(dir.join("runtime/config.toml"), config).unwrap();
    dir
}

/// `mcp-host ARGS` with HOME and the runtime dir inside `dir`, stdin closed.
fn run(dir: &PathBuf, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-host"))
        .args(args)
        .env("HOME", dir.join("home"))
        .env("MCP_SESSION_MANAGER_HOME", dir.join("runtime"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-host");
    let _ = std::fs::remove_dir_all(dir);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_target_exits_2_listing_the_configured_targets() {
    let dir = env_with_config(
        "unknown",
        "[daemons.memory]\nport = 3100\n\n[daemons.files]\ntransport = \"stdio\"\ncommand = \"files-mcp\"\n",
    );
    let out = run(&dir, &["--target", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for needle in ["[mcp-host:nope]", "nope", "memory", "files", "config.toml"] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
}

#[test]
fn a_target_that_is_not_a_stdio_server_exits_2() {
    let dir = env_with_config("not-stdio", "[daemons.memory]\nport = 3100\n");
    let out = run(&dir, &["--target", "memory"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("`memory` is not a stdio server"), "{err}");
}
