//! `mcp-manager generate-config` (issue 5 item 5): the `mcpServers` entries, printed with
//! the `claude mcp add-json` commands, or merged into `~/.claude.json`, `./.mcp.json` or
//! any file, keeping everything else, with a backup, atomically and idempotently.

#[path = "manager_common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ManagerEnv, Run};
use e2e::bin;
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

fn generate(env: &ManagerEnv, cwd: &Path, args: &[&str]) -> Run {
    let mut cmd = env.manager_command();
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
