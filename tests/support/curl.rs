//! `curl` run as the test's own user or, through `setpriv`, as another uid (65534), so
//! tests can check which users a server serves. Changing uid needs root: without it
//! these tests fail with a message saying so rather than skip.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::PATIENCE;

/// The uid the "other user" runs as (`nobody` on Debian and most systems).
pub const OTHER_UID: u32 = 65534;

#[derive(Debug, Clone, Copy)]
pub enum As {
    /// The test process's own user (the user the servers under test run as).
    Me,
    /// [`OTHER_UID`], with its own gid and no supplementary groups.
    Other,
}

pub struct CurlReply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl CurlReply {
    /// `error.message` (memory-server's JSON-RPC errors) or `error` (mcp-manager's).
    pub fn error_message(&self) -> &str {
        self.body["error"]["message"].as_str().or_else(|| self.body["error"].as_str()).unwrap_or_default()
    }
}

/// The effective uid of the test process.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Panics unless the tests run as root, which `setpriv --reuid` and `unshare -m` need.
pub fn require_root(what: &str) {
    assert_eq!(
        my_uid(),
        0,
        "{what} needs root (CI runs the suite as root); run this test as root instead of skipping it"
    );
}

/// Runs `curl [args] url` as `who` and returns the status and body. curl's own
/// `--max-time` bounds it; `output()` reaps it.
pub fn curl(who: As, url: &str, args: &[&str]) -> CurlReply {
    let mut cmd = match who {
        As::Me => Command::new("curl"),
        As::Other => {
            require_root("running curl as another uid through setpriv");
            let mut cmd = Command::new("setpriv");
            let id = OTHER_UID.to_string();
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "curl"]);
            cmd
        }
    };
    let max_time = PATIENCE.as_secs().to_string();
    // -q: no ~/.curlrc of whoever runs the tests; --noproxy: never via a proxy.
    cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", &max_time, "-w", "\n%{http_code}"]).args(args).arg(url);
    cmd.current_dir("/").stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}; the tests need curl and util-linux (setpriv), as .ci/run installs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed ({}): {stderr}", out.status);
    let (text, code) = stdout.rsplit_once('\n').unwrap_or_else(|| panic!("no status line from curl: {stdout:?}"));
    let status = code.trim().parse().unwrap_or_else(|_| panic!("no status from curl: {stdout:?} {stderr}"));
    let body = serde_json::from_str(text).unwrap_or(Value::Null);
    CurlReply { status, body, text: text.to_owned() }
}

/// `curl` arguments for a JSON POST of `body`.
pub fn post_json(body: &str) -> Vec<&str> {
    vec!["-H", "Content-Type: application/json", "--data-raw", body]
}
