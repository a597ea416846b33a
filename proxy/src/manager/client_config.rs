//! `generate-config`: the MCP client's server entries, one per configured daemon
//! (`{"command": "<abs path of mcp-proxy>", "args": ["--target", name]}`, plus
//! `--config` and `--manager-port` when they are not the defaults: [`ProxyArgs`]), merged
//! into an existing JSON file (Claude Code's `~/.claude.json` or a project's `.mcp.json`)
//! without touching other servers or other top-level keys; a `<file>.bak` is written
//! first and the file is replaced atomically. A file whose parsed JSON already holds the
//! entries is left alone, however it is laid out (Claude Code rewrites `~/.claude.json`
//! in its own layout), so its `.bak` keeps the user's previous version. Or printed, with
//! the equivalent `claude mcp add-json` commands.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::discovery::DEFAULT_MANAGER_PORT;

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: not valid JSON ({message}); fix or move it, then run again")]
    Parse { file: String, message: String },
    #[error("{file}: {message}; fix it, then run again")]
    Shape { file: String, message: String },
    #[error("{file}: cannot write: {source}")]
    Write { file: String, source: std::io::Error },
}

/// What an entry passes to `mcp-proxy` besides `--target`: the config file and the
/// manager port this run used, when the proxy would not find them by default (it reads
/// `$MCP_SESSION_MANAGER_HOME/config.toml` and asks port 3199). The entry says them
/// itself rather than count on this shell's environment reaching the proxy: some
/// clients start servers with a filtered environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyArgs {
    /// `--config <absolute path>`: the file given with `--config`, unless it is the
    /// default one (`$MCP_SESSION_MANAGER_HOME/config.toml`).
    pub config: Option<String>,
    /// `--manager-port <port>`, unless it is the default port.
    pub manager_port: Option<u16>,
}

impl ProxyArgs {
    /// `explicit`: the `--config` this run was given; `default`: the config file the
    /// proxy reads without one. Fails for a path JSON cannot hold (not UTF-8).
    pub fn new(explicit: Option<&Path>, default: &Path, manager_port: u16) -> Result<ProxyArgs, String> {
        let config = match explicit {
            Some(path) if !same_file(path, default) => {
                // Absolute, but links kept: the user named this path, and may re-point it.
                let absolute = std::path::absolute(path)
                    .map_err(|e| format!("cannot make the config path {} absolute: {e}", path.display()))?;
                let text = absolute.to_str().ok_or_else(|| {
                    format!(
                        "the config path {} is not UTF-8, so an MCP client's JSON config cannot name it; move the file",
                        absolute.display()
                    )
                })?;
                Some(text.to_owned())
            }
            _ => None,
        };
        Ok(ProxyArgs { config, manager_port: (manager_port != DEFAULT_MANAGER_PORT).then_some(manager_port) })
    }
}

/// Whether two paths name the same file: the same file once links are resolved, or,
/// when either does not exist, the same absolute path.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => match (std::path::absolute(a), std::path::absolute(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    }
}

/// The `mcpServers` object: one entry per configured daemon.
pub fn servers(config: &Config, proxy: &Path, extra: &ProxyArgs) -> Map<String, Value> {
    config
        .daemons
        .keys()
        .map(|name| {
            let mut args = vec![json!("--target"), json!(name)];
            if let Some(path) = &extra.config {
                args.extend([json!("--config"), json!(path)]);
            }
            if let Some(port) = extra.manager_port {
                args.extend([json!("--manager-port"), json!(port.to_string())]);
            }
            (name.clone(), json!({ "command": proxy.display().to_string(), "args": args }))
        })
        .collect()
}

/// Merges `servers` into the text of an existing file (None or blank: a new file):
/// our entries are set, everything else is kept in its place. Returns the new text
/// (pretty-printed, with a final newline).
pub fn merge(existing: Option<&str>, servers: &Map<String, Value>, file: &str) -> Result<String, ClientConfigError> {
    let (_, merged) = merge_values(existing, servers, file)?;
    Ok(pretty(&merged))
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The existing file's JSON (None when new or blank) and the merged JSON.
fn merge_values(
    existing: Option<&str>,
    servers: &Map<String, Value>,
    file: &str,
) -> Result<(Option<Value>, Value), ClientConfigError> {
    let before = match existing.filter(|t| !t.trim().is_empty()) {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => {
                return Err(ClientConfigError::Shape {
                    file: file.to_owned(),
                    message: "the top level is not a JSON object".into(),
                });
            }
            Err(e) => return Err(ClientConfigError::Parse { file: file.to_owned(), message: e.to_string() }),
        },
    };
    let mut root = before.clone().unwrap_or_default();
    let entry = root.entry("mcpServers").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(existing_servers) = entry else {
        return Err(ClientConfigError::Shape {
            file: file.to_owned(),
            message: "`mcpServers` is not a JSON object".into(),
        });
    };
    for (name, server) in servers {
        existing_servers.insert(name.clone(), server.clone());
    }
    Ok((before.map(Value::Object), Value::Object(root)))
}

/// What [`write_merged`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The file already had exactly these entries; nothing was written.
    Unchanged,
    /// Written; `backup` is the `.bak` of the previous contents, if there were any.
    Updated { backup: Option<PathBuf> },
}

/// Merges `servers` into `path`: reads it (a missing file is new), writes the previous
/// contents to `<file>.bak`, then replaces the file atomically (temp file in the same
/// directory + rename; the file's permissions are kept, a new file is 0600). A symlink
/// is followed, so the link stays a link. Idempotent on content: when the file's parsed
/// JSON already equals the merged JSON (whatever its whitespace and key order), nothing
/// is written, not even a `.bak`.
pub fn write_merged(path: &Path, servers: &Map<String, Value>) -> Result<Written, ClientConfigError> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let file = path.display().to_string();
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(ClientConfigError::Read { file, source }),
    };
    let (before, merged) = merge_values(existing.as_deref(), servers, &file)?;
    // serde_json's maps compare as maps (order-insensitive, also with `preserve_order`).
    if before.as_ref() == Some(&merged) {
        return Ok(Written::Unchanged);
    }
    let merged = pretty(&merged);
    let write_err = |source| ClientConfigError::Write { file: file.clone(), source };
    let mode = std::fs::metadata(&path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let mut backup = None;
    if let Some(old) = &existing {
        let bak = PathBuf::from(format!("{file}.bak"));
        write_file(&bak, old.as_bytes(), 0o600).map_err(write_err)?;
        backup = Some(bak);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let name = path.file_name().map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = write_file(&tmp, merged.as_bytes(), mode).and_then(|()| std::fs::rename(&tmp, &path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)?;
    Ok(Written::Updated { backup })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = crate::runtime::private_file(path, false)?;
    f.write_all(bytes)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

/// `claude mcp add-json --scope user <name> '<json>'`, one line per server, quoted
/// for a POSIX shell.
pub fn add_json_commands(servers: &Map<String, Value>) -> Vec<String> {
    servers
        .iter()
        .map(|(name, server)| {
            format!("claude mcp add-json --scope user {} {}", shell_quote(name), shell_quote(&server.to_string()))
        })
        .collect()
}

/// Single-quotes a word for a POSIX shell unless it is plainly safe.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if safe { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// The `mcp-proxy` installed next to the running executable, as an absolute path.
pub fn proxy_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    let dir = exe.parent().ok_or("the running executable has no directory")?;
    let proxy = dir.join("mcp-proxy");
    if !proxy.is_file() {
        return Err(format!(
            "mcp-proxy not found next to mcp-manager (looked for {}); install both binaries into the same directory",
            proxy.display()
        ));
    }
    Ok(std::fs::canonicalize(&proxy).unwrap_or(proxy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use std::os::unix::ffi::OsStringExt;

    fn servers() -> Map<String, Value> {
        let env = Env { exe_dir: None, home: None, var: Box::new(|_| None) };
        super::servers(&Config::defaults(&env), Path::new("/opt/bin/mcp-proxy"), &ProxyArgs::default())
    }

    #[test]
    fn one_entry_per_daemon() {
        let s = servers();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["ast-grep", "code-index", "memory"]);
        assert_eq!(s["memory"], json!({"command": "/opt/bin/mcp-proxy", "args": ["--target", "memory"]}));
    }

    #[test]
    fn merging_keeps_other_servers_and_keys_in_place() {
        let existing = r#"{
  "numStartups": 42,
  "mcpServers": {
    "github": {"command": "gh-mcp"},
    "memory": {"command": "npx", "args": ["@modelcontextprotocol/server-memory"]}
  },
  "projects": {"/p": {"mcpServers": {"x": {}}}},
  "zeta": [1, 2]
}"#;
        let merged = merge(Some(existing), &servers(), "f").unwrap();
        let v: Value = serde_json::from_str(&merged).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["numStartups", "mcpServers", "projects", "zeta"]);
        assert_eq!(v["numStartups"], 42);
        assert_eq!(v["projects"], json!({"/p": {"mcpServers": {"x": {}}}}));
        let servers: Vec<&String> = v["mcpServers"].as_object().unwrap().keys().collect();
        assert_eq!(servers, ["github", "memory", "ast-grep", "code-index"]);
        assert_eq!(v["mcpServers"]["github"], json!({"command": "gh-mcp"}));
        assert_eq!(v["mcpServers"]["memory"]["command"], "/opt/bin/mcp-proxy");
        // Idempotent.
        assert_eq!(merge(Some(&merged), &super::tests::servers(), "f").unwrap(), merged);
    }

    #[test]
    fn new_and_blank_files_get_just_the_servers() {
        for existing in [None, Some(""), Some("  \n")] {
            let v: Value = serde_json::from_str(&merge(existing, &servers(), "f").unwrap()).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1);
            assert_eq!(v["mcpServers"].as_object().unwrap().len(), 3);
        }
    }

    #[test]
    fn broken_files_are_refused_with_the_file_named() {
        let e = merge(Some("{\"a\": "), &servers(), "/h/.claude.json").unwrap_err().to_string();
        assert!(e.starts_with("/h/.claude.json: not valid JSON"), "{e}");
        let e = merge(Some("[1]"), &servers(), "f").unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = merge(Some("{\"mcpServers\": 3}"), &servers(), "f").unwrap_err().to_string();
        assert!(e.contains("`mcpServers` is not a JSON object"), "{e}");
    }

    #[test]
    fn writes_a_backup_then_replaces_atomically_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claude.json");
        std::fs::write(&path, "{\"keep\": true}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let written = write_merged(&path, &servers()).unwrap();
        let bak = dir.path().join("claude.json.bak");
        assert_eq!(written, Written::Updated { backup: Some(bak.clone()) });
        assert_eq!(std::fs::read_to_string(&bak).unwrap(), "{\"keep\": true}");
        assert_eq!(std::fs::metadata(&bak).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(write_merged(&path, &servers()).unwrap(), Written::Unchanged);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        // No temp files left behind.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_file_with_the_same_content_in_another_layout_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claude.json");
        std::fs::write(&path, "{\"keep\": true}").unwrap();
        write_merged(&path, &servers()).unwrap();
        // As another program would write it back: compact, every object's keys reversed.
        fn reversed(v: &Value) -> Value {
            match v {
                Value::Object(m) => Value::Object(m.iter().rev().map(|(k, v)| (k.clone(), reversed(v))).collect()),
                other => other.clone(),
            }
        }
        let ours: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let relaid = serde_json::to_string(&reversed(&ours)).unwrap();
        assert!(relaid.starts_with("{\"mcpServers\":{\"memory\":{\"args\":"), "{relaid}");
        std::fs::write(&path, &relaid).unwrap();
        std::fs::remove_file(dir.path().join("claude.json.bak")).unwrap();
        assert_eq!(write_merged(&path, &servers()).unwrap(), Written::Unchanged);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), relaid);
        assert!(!dir.path().join("claude.json.bak").exists(), "no backup when nothing changes");
        // A real difference in our entries is still written.
        std::fs::write(&path, relaid.replacen("/opt/bin/mcp-proxy", "/old/mcp-proxy", 1)).unwrap();
        assert!(matches!(write_merged(&path, &servers()).unwrap(), Written::Updated { backup: Some(_) }));
    }

    #[test]
    fn proxy_args_name_only_what_differs_from_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("home/config.toml");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "").unwrap();
        assert_eq!(ProxyArgs::new(None, &default, DEFAULT_MANAGER_PORT).unwrap(), ProxyArgs::default());
        // The default file named explicitly, even through another spelling, is the default.
        let spelled = dir.path().join("home/../home/config.toml");
        std::fs::write(&default, "").unwrap();
        assert_eq!(ProxyArgs::new(Some(&spelled), &default, DEFAULT_MANAGER_PORT).unwrap(), ProxyArgs::default());
        let args = ProxyArgs::new(Some(&other), &default, 4000).unwrap();
        assert_eq!(args.config.as_deref(), other.to_str());
        assert_eq!(args.manager_port, Some(4000));
        // A relative path becomes absolute.
        let relative = ProxyArgs::new(Some(Path::new("cfg/x.toml")), &default, DEFAULT_MANAGER_PORT).unwrap();
        let expected = std::env::current_dir().unwrap().join("cfg/x.toml");
        assert_eq!(relative.config.as_deref(), expected.to_str());
        // JSON cannot name a path that is not UTF-8.
        let odd = std::path::PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/\xff.toml".to_vec()));
        let e = ProxyArgs::new(Some(&odd), &default, DEFAULT_MANAGER_PORT).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");

        let env = Env { exe_dir: None, home: None, var: Box::new(|_| None) };
        let s = super::servers(&Config::defaults(&env), Path::new("/opt/bin/mcp-proxy"), &args);
        let path = other.to_str().unwrap();
        assert_eq!(
            s["memory"],
            json!({"command": "/opt/bin/mcp-proxy",
                   "args": ["--target", "memory", "--config", path, "--manager-port", "4000"]})
        );
    }

    #[test]
    fn a_new_file_is_private_and_has_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/.mcp.json");
        assert_eq!(write_merged(&path, &servers()).unwrap(), Written::Updated { backup: None });
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn symlinks_stay_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_merged(&link, &servers()).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&real).unwrap().contains("mcpServers"));
    }

    #[test]
    fn add_json_commands_are_shell_quoted() {
        let cmds = add_json_commands(&servers());
        assert_eq!(
            cmds[2],
            r#"claude mcp add-json --scope user memory '{"command":"/opt/bin/mcp-proxy","args":["--target","memory"]}'"#
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
