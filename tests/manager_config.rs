//! `mcp-manager generate-config` (issue 5 item 5): the `mcpServers` entries, printed with
//! the `claude mcp add-json` commands, or merged into `~/.claude.json`, `./.mcp.json` or
//! any file, keeping everything else, with a backup, atomically and idempotently.
//! Issue 16 item 6: idempotent on content (a file re-serialised by Claude Code is left
//! alone), and entries that name a config file and manager port which are not the
//! defaults, for clients that start servers with a filtered environment.

#[path = "manager_common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::{ManagerEnv, Run};
use e2e::{PATIENCE, bin, free_port};
use serde_json::{Value, json};

/// The config has two daemons, so the output has two entries.
fn env() -> ManagerEnv {
    ManagerEnv::with_config("[daemons.team]\nurl = \"http://127.0.0.1:9/mcp\"\n")
}

fn proxy_path() -> String {
    std::fs::canonicalize(bin("mcp-proxy")).unwrap().to_str().unwrap().to_owned()
}

fn expected_servers() -> Value {
    let proxy = proxy_path();
    json!({
        "memory": {"command": proxy, "args": ["--target", "memory"]},
        "team": {"command": proxy, "args": ["--target", "team"]},
    })
}

/// `mcp-manager generate-config args...` with the default manager port (it asks no
/// manager anything), so the entries carry no `--manager-port`.
fn generate(env: &ManagerEnv, cwd: &Path, args: &[&str]) -> Run {
    let mut cmd = env.env.command(&bin("mcp-manager"));
    cmd.current_dir(cwd).arg("generate-config").args(args);
    Run::bounded(cmd)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn without_a_target_it_prints_json_and_add_json_commands_and_writes_nothing() {
    let env = env();
    let project = env.env.project("app");
    let before = (files_in(&env.env.home()), files_in(&project), files_in(&env.runtime()));
    let run = generate(&env, &project, &[]);
    let out = run.ok();

    // The JSON object comes first, then the commands.
    let (json_part, rest) = out.split_once("\n\n").unwrap();
    let printed: Value = serde_json::from_str(json_part).unwrap();
    assert_eq!(printed, json!({ "mcpServers": expected_servers() }));
    assert!(Path::new(printed["mcpServers"]["memory"]["command"].as_str().unwrap()).is_absolute());

    let commands: Vec<&str> = rest.lines().filter(|l| l.starts_with("claude ")).collect();
    assert_eq!(commands.len(), 2, "{out}");
    for (command, name) in commands.iter().zip(["memory", "team"]) {
        let prefix = format!("claude mcp add-json --scope user {name} '");
        let json = command.strip_prefix(&prefix).and_then(|c| c.strip_suffix('\'')).unwrap_or_else(|| {
            panic!("{command}");
        });
        assert_eq!(serde_json::from_str::<Value>(json).unwrap(), expected_servers()[name]);
    }
    assert_eq!((files_in(&env.env.home()), files_in(&project), files_in(&env.runtime())), before);
}

#[test]
fn scope_user_merges_into_claude_json_keeping_everything_else() {
    let env = env();
    let claude_json = env.env.home().join(".claude.json");
    let original = r#"{
  "numStartups": 17,
  "theme": "dark",
  "mcpServers": {
    "github": { "type": "stdio", "command": "github-mcp", "args": [], "env": {"TOKEN": "x"} },
    "memory": { "command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"] }
  },
  "projects": { "/home/u/app": { "allowedTools": [], "mcpServers": { "local": { "command": "x" } } } },
  "oauthAccount": { "emailAddress": "u@example.com" }
}"#;
    std::fs::write(&claude_json, original).unwrap();
    std::fs::set_permissions(&claude_json, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = generate(&env, &env.env.home(), &["--scope", "user"]).ok().to_owned();
    assert!(out.contains(".claude.json") && out.contains("memory, team"), "{out}");

    // The backup holds the original bytes.
    let bak = env.env.home().join(".claude.json.bak");
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), original);
    assert_eq!(std::fs::metadata(&bak).unwrap().permissions().mode() & 0o777, 0o600);

    let before: Value = serde_json::from_str(original).unwrap();
    let after: Value = serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
    let keys: Vec<&String> = after.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["numStartups", "theme", "mcpServers", "projects", "oauthAccount"], "key order kept");
    for key in ["numStartups", "theme", "projects", "oauthAccount"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(after["mcpServers"]["github"], before["mcpServers"]["github"], "unrelated server kept");
    assert_eq!(after["mcpServers"]["memory"], expected_servers()["memory"], "our entry replaces the old one");
    assert_eq!(after["mcpServers"]["team"], expected_servers()["team"]);
    assert_eq!(after["mcpServers"].as_object().unwrap().len(), 3);
    assert_eq!(std::fs::metadata(&claude_json).unwrap().permissions().mode() & 0o777, 0o600);

    // Idempotent: a second run changes nothing (and so writes no new backup).
    let merged = std::fs::read_to_string(&claude_json).unwrap();
    let out = generate(&env, &env.env.home(), &["--scope", "user"]).ok().to_owned();
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(std::fs::read_to_string(&claude_json).unwrap(), merged);
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), original);
    // Replaced atomically: no temp files left next to it.
    let home_files = files_in(&env.env.home());
    assert_eq!(home_files, [".claude.json", ".claude.json.bak"], "{home_files:?}");
}

#[test]
fn scope_project_writes_mcp_json_in_the_current_directory() {
    let env = env();
    let project = env.env.project("app");
    generate(&env, &project, &["--scope", "project"]).ok();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(project.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(written, json!({ "mcpServers": expected_servers() }));
    assert!(!project.join(".mcp.json.bak").exists(), "nothing to back up for a new file");
    assert!(!env.env.home().join(".claude.json").exists());

    // An existing .mcp.json with other servers: merged, backed up.
    std::fs::write(project.join(".mcp.json"), r#"{"mcpServers":{"db":{"command":"db-mcp"}}}"#).unwrap();
    generate(&env, &project, &["--scope", "project"]).ok();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(project.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(written["mcpServers"]["db"], json!({"command": "db-mcp"}));
    assert_eq!(written["mcpServers"]["memory"], expected_servers()["memory"]);
    assert!(project.join(".mcp.json.bak").exists());
}

#[test]
fn output_merges_into_any_file_and_print_shows_without_writing() {
    let env = env();
    let dir = env.env.project("cfg");
    let file = dir.join("servers.json");
    std::fs::write(&file, r#"{"keep": [1, 2, 3]}"#).unwrap();

    let run = generate(&env, &env.env.home(), &["--output", file.to_str().unwrap(), "--print"]);
    let shown: Value = serde_json::from_str(run.ok()).unwrap();
    assert_eq!(shown, json!({"keep": [1, 2, 3], "mcpServers": expected_servers()}));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), r#"{"keep": [1, 2, 3]}"#, "--print writes nothing");
    assert_eq!(files_in(&dir), ["servers.json"]);

    generate(&env, &env.env.home(), &["--output", file.to_str().unwrap()]).ok();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, shown);

    // A file that is not JSON is left alone, with a one-line error.
    std::fs::write(&file, "{ not json").unwrap();
    let run = generate(&env, &env.env.home(), &["--output", file.to_str().unwrap()]);
    let line = run.one_line_error();
    assert!(line.contains("servers.json") && line.contains("not valid JSON"), "{line}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ not json");

    // --output and --scope are exclusive.
    let run = generate(&env, &env.env.home(), &["--output", "x.json", "--scope", "user"]);
    assert_eq!(run.code, Some(2));
}

/// Every object's keys in reverse order, as another program may write them back.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().rev().map(|(k, v)| (k.clone(), reversed(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

/// `value` pretty-printed with four-space indents (ours uses two).
fn four_space(value: &Value) -> String {
    let two = serde_json::to_string_pretty(value).unwrap();
    // Line breaks inside strings are escaped, so every line starts with indentation only.
    two.lines()
        .map(|line| format!("{}{line}", &line[..line.len() - line.trim_start().len()]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Claude Code rewrites `~/.claude.json` in its own layout. A file that already holds
/// our entries, however it is laid out, is "nothing to do": not rewritten (content and
/// mtime unchanged) and no new backup, so `.bak` keeps the user's version from before
/// the first run.
#[test]
fn a_file_rewritten_in_another_layout_with_the_same_entries_is_left_alone() {
    let env = env();
    let claude_json = env.env.home().join(".claude.json");
    let bak = env.env.home().join(".claude.json.bak");
    let original = "{\"numStartups\": 3, \"mcpServers\": {\"github\": {\"command\": \"gh-mcp\", \"args\": []}}}\n";
    std::fs::write(&claude_json, original).unwrap();
    generate(&env, &env.env.home(), &["--scope", "user"]).ok();
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), original);

    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
    let relaid = four_space(&reversed(&ours));
    assert!(relaid.starts_with("{\n    \"mcpServers\": {\n        \"team\": {\n            \"args\""), "{relaid}");
    std::fs::write(&claude_json, &relaid).unwrap();
    // Dated back, so that any write, however quick, shows in the mtime.
    let old = SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(&claude_json).unwrap().set_modified(old).unwrap();
    std::fs::File::options().write(true).open(&bak).unwrap().set_modified(old).unwrap();
    let (file_mtime, bak_mtime) = (mtime(&claude_json), mtime(&bak));

    let out = generate(&env, &env.env.home(), &["--scope", "user"]).ok().to_owned();
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(std::fs::read_to_string(&claude_json).unwrap(), relaid, "not rewritten");
    assert_eq!(mtime(&claude_json), file_mtime, "not rewritten");
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), original, "the backup keeps the user's version");
    assert_eq!(mtime(&bak), bak_mtime, "no new backup");
    assert_eq!(files_in(&env.env.home()), [".claude.json", ".claude.json.bak"]);

    // An entry that really differs is written again, and the backup is the file as it was.
    let mut changed = ours.clone();
    changed["mcpServers"]["memory"]["args"] = json!(["--target", "memory", "--project", "/elsewhere"]);
    let changed = serde_json::to_string(&changed).unwrap();
    std::fs::write(&claude_json, &changed).unwrap();
    let out = generate(&env, &env.env.home(), &["--scope", "user"]).ok().to_owned();
    assert!(out.contains("wrote memory, team"), "{out}");
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), changed);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
    assert_eq!(written, ours);
}

/// The entries' args for each daemon, from a generate-config run's JSON output.
fn printed_args(run: &Run) -> Value {
    let out = run.ok();
    let (json_part, _) = out.split_once("\n\n").unwrap_or_else(|| panic!("{out}"));
    let printed: Value = serde_json::from_str(json_part).unwrap();
    let servers = printed["mcpServers"].as_object().unwrap();
    servers.iter().map(|(name, entry)| (name.clone(), entry["args"].clone())).collect::<serde_json::Map<_, _>>().into()
}

/// An entry names the config file and the manager port the run used when the proxy
/// would not find them by default, and the proxy, started the way the entry says with
/// nothing of the environment but HOME and PATH (as a client that filters the
/// environment starts it), reads that config file.
#[test]
fn entries_name_a_config_file_and_manager_port_that_are_not_the_defaults() {
    let env = env();
    let home = env.env.home();
    // The defaults: the runtime dir's config.toml, port 3199.
    let default_config = env.runtime().join("config.toml");
    for extra in [&[][..], &["--config", default_config.to_str().unwrap()][..]] {
        let args = printed_args(&generate(&env, &home, extra));
        assert_eq!(args, json!({"memory": ["--target", "memory"], "team": ["--target", "team"]}), "{extra:?}");
    }

    // Another port, given on the command line or by the config's `[manager]` table.
    let port = free_port().to_string();
    let args = printed_args(&generate(&env, &home, &["--manager-port", &port]));
    assert_eq!(args["memory"], json!(["--target", "memory", "--manager-port", port]));
    let with_manager = env.runtime().join("with-manager.toml");
    std::fs::write(&with_manager, format!("[manager]\nport = {port}\n[daemons.memory]\nport = {}\n", env.memory_port))
        .unwrap();
    let args = printed_args(&generate(&env, &home, &["--config", with_manager.to_str().unwrap()]));
    assert_eq!(
        args["memory"],
        json!(["--target", "memory", "--config", with_manager.to_str().unwrap(), "--manager-port", port])
    );

    // Another file, given relative to the current directory: named by its absolute path.
    let dir = env.env.project("cfg");
    let unreachable = free_port();
    std::fs::write(
        dir.join("elsewhere.toml"),
        format!("[daemons.elsewhere]\nurl = \"http://127.0.0.1:{unreachable}/mcp\"\n"),
    )
    .unwrap();
    let absolute = std::fs::canonicalize(dir.join("elsewhere.toml")).unwrap();
    let run = generate(&env, &dir, &["--config", "elsewhere.toml", "--port", &port]);
    let args = printed_args(&run);
    assert_eq!(args, json!({"elsewhere": ["--target", "elsewhere", "--config", absolute, "--manager-port", port]}));
    // The add-json commands carry the same entry.
    assert!(run.stdout.contains(&format!("\"--config\",\"{}\"", absolute.display())), "{}", run.stdout);

    // Started as the entry says, under a filtered environment (no MCP_SESSION_MANAGER_HOME),
    // the proxy knows `elsewhere`; it answers initialize with the daemon's error, not
    // "unknown target".
    let out = generate(&env, &dir, &["--config", "elsewhere.toml", "--port", &port, "--output", "client.json"]);
    out.ok();
    let client: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("client.json")).unwrap()).unwrap();
    let entry = &client["mcpServers"]["elsewhere"];
    let argv: Vec<&str> = entry["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let mut cmd = std::process::Command::new(entry["command"].as_str().unwrap());
    cmd.args(&argv)
        .env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(&home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        "{}",
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"filtered","version":"1"}}})
    )
    .unwrap();
    drop(stdin);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mcp-proxy did not exit after stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let message = answer["error"]["message"].as_str().unwrap_or_else(|| panic!("an error answer: {answer}"));
    assert!(message.contains("`elsewhere`"), "{message}");
    assert!(!home.join(".claude.json").exists());
}
