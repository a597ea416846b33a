//! The `mcp-proxy` command line before any session starts: an unknown `--target` and a
//! broken `config.toml` are reported on stderr in one line and exit 2, with nothing on
//! stdout (which belongs to the protocol). Being an integration test of this package,
//! it also makes `cargo test --workspace` build the `mcp-proxy` binary the end-to-end
//! tests run.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `mcp-proxy ARGS` with HOME and the runtime dir inside `dir`, stdin closed.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcp-proxy"))
        .args(args)
        .env("HOME", dir.join("home"))
        .env("MCP_SESSION_MANAGER_HOME", dir.join("runtime"))
        .env_remove("CLAUDE_PROJECT_DIR")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-proxy")
}

fn env_with_config(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    std::fs::create_dir_all(dir.path().join("runtime")).unwrap();
    std::fs::write(dir.path().join("runtime/config.toml"), config).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_target_exits_2_listing_the_configured_targets() {
    let dir = env_with_config(
        "[daemons.memory]\nport = 3100\n\n[daemons.team-notes]\nurl = \"http://127.0.0.1:9/mcp\"\n\n\
         [daemons.code-index]\ncommand = \"uv\"\nport = 3101\n",
    );
    let out = run(dir.path(), &["--target", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "stdout is for the protocol only");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for needle in ["nope", "memory", "team-notes", "code-index", "config.toml"] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
}

#[test]
fn without_a_config_file_the_built_in_targets_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--target", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in ["ast-grep", "code-index", "memory"] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
}

#[test]
fn a_broken_config_is_reported_with_file_line_and_key() {
    // (config text, the line it must name, the key it must name)
    let cases = [
        ("[daemons.memory]\nport = 3100\nprot = 3101\n", 3, "prot"),
        ("[daemons.memory]\ntransport = \"streamable-http\"\nport = \"x\"\n", 3, "port"),
        ("[daemons.memory]\nport = 3100\n\n[daemons.other]\ntransport = \"sse\"\n", 4, "daemons.other.port"),
        // (An unset variable is not a broken file: it breaks only the daemon using it.)
        ("[daemons.memory]\nport = 3100\nargs = [\"${MCP_PROXY_TEST_UNTERMINATED\"]\n", 1, "daemons.memory.args"),
        ("[daemons.memory]\nport = 3100\ntransport = \"carrier-pigeon\"\n", 3, "transport"),
    ];
    for (config, line, key) in cases {
        let dir = env_with_config(config);
        let file = dir.path().join("runtime/config.toml");
        let out = run(dir.path(), &["--target", "memory"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{config:?}: {err}");
        assert!(out.stdout.is_empty(), "{config:?}: stdout is for the protocol only");
        let location = format!("{}:{line}:", file.display());
        assert!(err.contains(&location), "{config:?}: {location:?} missing from {err:?}");
        assert!(err.contains(key), "{config:?}: {key:?} missing from {err:?}");
    }
}

#[test]
fn an_explicit_config_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = run(dir.path(), &["--target", "memory", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));
}
