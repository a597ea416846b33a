//! `mcp-proxy` and the manager (issue 5 item 4, SPEC 3.3 step 3): with a manager
//! listening, the proxy asks it (`POST /ensure`) and the manager spawns the daemon; with
//! none, the proxy starts the daemon itself.

#[path = "manager_common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;

use common::{ManagerEnv, alive, poll, ppid};
use e2e::{PATIENCE, bin, free_port};
use serde_json::{Value, json};

/// An `mcp-proxy --target memory` session over its stdio; killed and reaped on drop.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(env: &ManagerEnv, manager_port: u16) -> Session {
        let project = env.env.project("app");
        let mut cmd = env.env.command(&bin("mcp-proxy"));
        cmd.args(["--target", "memory", "--manager-port", &manager_port.to_string()])
            .arg("--project")
            .arg(&project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn mcp-proxy");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session { child, stdin, lines }
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    }

    /// The response with this id (other lines are skipped).
    fn response(&self, id: i64) -> Value {
        loop {
            let line = self.lines.recv_timeout(PATIENCE).expect("a response from mcp-proxy");
            let value: Value = serde_json::from_str(&line).unwrap();
            if value["id"] == id {
                return value;
            }
        }
    }

    /// initialize + initialized + tools/list: the session works end to end.
    fn handshake(&mut self) {
        self.send(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}));
        let init = self.response(1);
        assert_eq!(init["result"]["serverInfo"]["name"], "memory-server", "{init}");
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        self.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}));
        let tools = self.response(2);
        assert!(tools["result"]["tools"].as_array().is_some_and(|t| t.len() == 9), "{tools}");
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_proxy_asks_a_listening_manager_to_start_the_daemon() {
    let env = ManagerEnv::new();
    let mgr = env.serve(&[]);
    let mut session = Session::start(&env, mgr.port);
    session.handshake();

    // The manager was asked and did the spawning: the daemon is its child, not the proxy's.
    let log = mgr.log_text();
    assert!(log.contains("POST /ensure: memory: started"), "{log}");
    let pid = env.lock_pid("memory").unwrap();
    assert_eq!(ppid(pid), Some(mgr.pid()), "the daemon's parent is the manager");
    let status = mgr.status_of("memory");
    assert_eq!((status["pid"].clone(), status["state"].clone()), (json!(pid), json!("running")));

    // A second session finds the running daemon on its own (step 1): no second ensure.
    let mut second = Session::start(&env, mgr.port);
    second.handshake();
    assert_eq!(mgr.log_text().matches("POST /ensure").count(), 1, "{}", mgr.log_text());
    assert_eq!(env.lock_pid("memory"), Some(pid));
}

#[test]
fn the_proxy_starts_the_daemon_itself_when_no_manager_listens() {
    let env = ManagerEnv::new();
    let nobody = free_port();
    let mut session = Session::start(&env, nobody);
    session.handshake();
    let pid = poll(|| env.lock_pid("memory"));
    assert!(alive(pid));
    assert_eq!(ppid(pid), Some(session.pid()), "the proxy spawned it directly");
}
