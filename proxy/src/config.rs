//! Daemon configuration: `$MCP_SESSION_MANAGER_HOME/config.toml` (or `--config`), one
//! `[daemons.NAME]` table per daemon, or the built-in defaults when there is no file.
//! Parsed once into [`Config`]; errors name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How the proxy talks to a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MCP streamable HTTP (2025-03-26 and later): POST /mcp, optional GET stream.
    StreamableHttp,
    /// The deprecated HTTP+SSE transport (2024-11-05): GET /sse, POST to the announced endpoint.
    Sse,
    /// Plain JSON-RPC over HTTP POST, JSON replies.
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
            Transport::Http => "http",
        }
    }
}

/// One daemon, validated and with `~` and `${VAR}` expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSpec {
    pub name: String,
    pub transport: Transport,
    pub target: Target,
    pub startup_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra HTTP headers on every request (for `url` daemons).
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A daemon on a local port, started by us when it is not running.
    Local { port: u16, launch: Option<Launch> },
    /// A daemon reached by URL, never started by us.
    Remote { url: url::Url },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub command: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl DaemonSpec {
    /// The MCP endpoint URL: `/mcp` for streamable HTTP and plain HTTP, `/sse` for SSE.
    pub fn endpoint(&self) -> url::Url {
        match &self.target {
            Target::Remote { url } => url.clone(),
            Target::Local { port, .. } => {
                let path = if self.transport == Transport::Sse { "sse" } else { "mcp" };
                // A loopback URL with a numeric port always parses.
                url::Url::parse(&format!("http://127.0.0.1:{port}/{path}")).unwrap_or_else(|_| unreachable!())
            }
        }
    }

    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Local { port, .. } => Some(*port),
            Target::Remote { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages ("built-in defaults" when no file).
    pub source: String,
    pub daemons: BTreeMap<String, DaemonSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    #[error("{file}:{line}: daemons.{daemon}.{key}: {message}")]
    Invalid { file: String, line: usize, daemon: String, key: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    daemons: BTreeMap<String, RawDaemon>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    port: Option<u16>,
    transport: Option<Transport>,
    startup_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Looks an environment variable up (injectable for tests).
pub type VarLookup = Box<dyn Fn(&str) -> Option<String>>;

/// What the programs need from the environment to build specs.
pub struct Env {
    /// Directory of the running executable: our `memory-server` is looked for there first.
    pub exe_dir: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub var: VarLookup,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            exe_dir: std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)),
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
            var: Box::new(|name| std::env::var(name).ok()),
        }
    }
}

impl Config {
    /// Loads `path` if it exists; a missing file means the built-in defaults, unless the
    /// path was given explicitly (`required`).
    pub fn load(path: &Path, required: bool, env: &Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &file, env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::defaults(env)),
            Err(source) => Err(ConfigError::Read { file, source }),
        }
    }

    /// The built-in daemons: our memory-server on 3100, code-index on 3101, ast-grep on 3102.
    pub fn defaults(env: &Env) -> Config {
        let text = r#"
[daemons.memory]
port = 3100
transport = "streamable-http"

[daemons.code-index]
command = "uv"
args = ["run", "code-index-mcp", "--transport", "streamable-http", "--port", "3101"]
port = 3101
transport = "streamable-http"

[daemons.ast-grep]
command = "uv"
args = ["run", "python", "main.py", "--transport", "sse", "--port", "3102"]
port = 3102
transport = "sse"
"#;
        match Self::parse(text, "built-in defaults", env) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in defaults are valid: {e}"),
        }
    }

    pub fn parse(text: &str, file: &str, env: &Env) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            // toml's message alone ("invalid type: string \"x\", expected u16") does
            // not say which key; name it from the line the error points at.
            let message = match e.span().and_then(|s| key_at(text, s.start)) {
                Some(key) => format!("{key}: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            };
            ConfigError::Syntax { file: file.to_owned(), line, column, message }
        })?;
        let mut daemons = BTreeMap::new();
        for (name, d) in raw.daemons {
            let line = table_line(text, &name);
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                file: file.to_owned(),
                line,
                daemon: name.clone(),
                key: key.to_owned(),
                message,
            };
            let expand = |key: &str, v: &str| expand_vars(v, &*env.var).map_err(|m| invalid(key, m));
            let transport = d.transport.unwrap_or(Transport::StreamableHttp);
            let target = match (&d.url, d.port) {
                (Some(url), _) => {
                    if d.command.is_some() {
                        return Err(invalid(
                            "command",
                            "a daemon reached by url is never started; remove command".into(),
                        ));
                    }
                    let url = url::Url::parse(&expand("url", url)?).map_err(|e| invalid("url", e.to_string()))?;
                    Target::Remote { url }
                }
                (None, Some(0)) => return Err(invalid("port", "must be 1-65535".into())),
                (None, Some(port)) => {
                    let mut args = Vec::with_capacity(d.args.len());
                    for a in &d.args {
                        args.push(expand("args", a)?);
                    }
                    let mut vars = BTreeMap::new();
                    for (k, v) in &d.env {
                        vars.insert(k.clone(), expand(&format!("env.{k}"), v)?);
                    }
                    let cwd = d.cwd.as_deref().map(|c| expand_home(c, env.home.as_deref()));
                    let launch = match d.command.as_deref() {
                        Some(cmd) => {
                            Some(Launch { command: expand_home(cmd, env.home.as_deref()), args, cwd, env: vars })
                        }
                        None if name == "memory" => Some(Launch {
                            command: memory_server_path(env),
                            args: if args.is_empty() {
                                vec!["serve".into(), "--port".into(), port.to_string()]
                            } else {
                                args
                            },
                            cwd,
                            env: vars,
                        }),
                        None => None,
                    };
                    Target::Local { port, launch }
                }
                (None, None) => return Err(invalid("port", "every daemon needs a port (or a url)".into())),
            };
            let mut headers = BTreeMap::new();
            for (k, v) in &d.headers {
                headers.insert(k.clone(), expand(&format!("headers.{k}"), v)?);
            }
            let spec = DaemonSpec {
                name: name.clone(),
                transport,
                target,
                startup_timeout: d.startup_timeout_ms.map_or(DEFAULT_STARTUP_TIMEOUT, Duration::from_millis),
                request_timeout: d.request_timeout_ms.map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis),
                headers,
            };
            daemons.insert(name, spec);
        }
        Ok(Config { source: file.to_owned(), daemons })
    }

    pub fn names(&self) -> Vec<&str> {
        self.daemons.keys().map(String::as_str).collect()
    }

    /// The daemons we may start (not the `url` ones), by name.
    pub fn local_names(&self) -> Vec<String> {
        self.daemons.values().filter(|s| matches!(s.target, Target::Local { .. })).map(|s| s.name.clone()).collect()
    }
}

/// Our `memory-server`: next to this executable, else whatever `PATH` finds.
fn memory_server_path(env: &Env) -> PathBuf {
    if let Some(dir) = &env.exe_dir {
        let candidate = dir.join("memory-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("memory-server")
}

fn expand_home(value: &str, home: Option<&Path>) -> PathBuf {
    match (value.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(value),
    }
}

/// Replaces every `${VAR}` with the variable's value; an unset variable is an error
/// (a token must never silently become empty).
fn expand_vars(value: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {value:?}"))?;
        let name = &after[..end];
        let v = var(name).ok_or_else(|| format!("uses ${{{name}}}, which is not set in the environment"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The dotted key (`daemons.memory.port`) assigned on the line holding `offset`, when
/// that line is a plain `key = value` under a `[table]` header.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    let table = table.map(|t| t.trim_start_matches('[').split(']').next().unwrap_or_default().trim());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

/// The line of `[daemons.NAME]` (or the first mention of the name), for messages.
fn table_line(text: &str, name: &str) -> usize {
    let header = format!("[daemons.{name}]");
    let quoted = format!("[daemons.\"{name}\"]");
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(&header) || l.starts_with(&quoted)
        })
        .or_else(|| text.lines().position(|l| l.contains(name)))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            exe_dir: None,
            home: Some(PathBuf::from("/home/u")),
            var: Box::new(|name| (name == "TOKEN").then(|| "t0k".to_string())),
        }
    }

    #[test]
    fn defaults_have_the_three_daemons() {
        let c = Config::defaults(&env());
        assert_eq!(c.names(), ["ast-grep", "code-index", "memory"]);
        let memory = &c.daemons["memory"];
        assert_eq!(memory.endpoint().as_str(), "http://127.0.0.1:3100/mcp");
        let Target::Local { launch: Some(l), .. } = &memory.target else { panic!() };
        assert_eq!(l.command, PathBuf::from("memory-server"));
        assert_eq!(l.args, ["serve", "--port", "3100"]);
        assert_eq!(c.daemons["ast-grep"].endpoint().as_str(), "http://127.0.0.1:3102/sse");
    }

    #[test]
    fn expands_home_and_variables() {
        let c = Config::parse(
            r#"
[daemons.x]
command = "~/bin/x"
args = ["--token", "${TOKEN}"]
cwd = "~/tools"
port = 4000
[daemons.team]
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "Bearer ${TOKEN}" }
"#,
            "c.toml",
            &env(),
        )
        .unwrap();
        let Target::Local { launch: Some(l), .. } = &c.daemons["x"].target else { panic!() };
        assert_eq!(l.command, PathBuf::from("/home/u/bin/x"));
        assert_eq!(l.cwd, Some(PathBuf::from("/home/u/tools")));
        assert_eq!(l.args, ["--token", "t0k"]);
        assert_eq!(c.daemons["team"].headers["Authorization"], "Bearer t0k");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = Config::parse("[daemons.memory]\nport = 3100\nprot = 1\n", "c.toml", &env()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("c.toml:3:"), "{msg}");
        assert!(msg.contains("prot"), "{msg}");

        let e = Config::parse("[daemons.a]\ntransport = \"sse\"\n", "c.toml", &env()).unwrap_err();
        assert_eq!(e.to_string(), "c.toml:1: daemons.a.port: every daemon needs a port (or a url)");

        let e = Config::parse("[daemons.a]\nport = 1\nargs = [\"${NOPE}\"]\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().contains("daemons.a.args") && e.to_string().contains("NOPE"), "{e}");

        let e = Config::parse("[daemons.a]\nport = \"x\"\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:"), "{e}");
        assert!(e.to_string().contains("daemons.a.port: "), "{e}");
    }
}
