//! Daemon configuration: `$MCP_SESSION_MANAGER_HOME/config.toml` (or `--config`), one
//! `[daemons.NAME]` table per daemon, or the built-in defaults when there is no file.
//! Parsed once into [`Config`]; errors name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a hosted stdio server may run without sessions before mcp-host stops it.
pub const DEFAULT_IDLE_STOP: Duration = Duration::from_secs(600);

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
    /// A server that speaks only stdio: hosted by `mcp-host`, which serves streamable
    /// HTTP to the proxies and runs the server as its child (SPEC 3.6).
    Stdio,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
            Transport::Http => "http",
            Transport::Stdio => "stdio",
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
    /// Extra root certificates (PEM) trusted for an `https://` url, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Which of its tools sessions see (`tools = { allow, deny }`).
    pub tools: ToolFilter,
    /// For `transport = "stdio"`: the server mcp-host runs and how it is shared.
    pub hosted: Option<Hosted>,
    /// Send `Mcp-Project-Id` with every request (`project_id = "git-remote"`).
    pub project_id: Option<ProjectId>,
    /// Why this daemon cannot be used as configured (a `${VAR}` that is not set), when
    /// so. Only this daemon is broken: the others load and run (SPEC 3.2).
    pub misconfigured: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A daemon on a local port, started by us when it is not running. A hosted stdio
    /// server may leave the port to the host (`None`): it is then read from the lock file.
    Local { port: Option<u16>, launch: Option<Launch> },
    /// A daemon reached by URL, never started by us.
    Remote { url: url::Url },
}

/// A stdio server as mcp-host runs it (SPEC 3.6).
#[derive(Debug, Clone, PartialEq)]
pub struct Hosted {
    /// The server's own command line (the daemon's `launch` is mcp-host itself).
    pub server: Launch,
    pub share: Share,
    /// A child without sessions this long is stopped.
    pub idle_stop: Duration,
}

/// Which sessions share one child of a hosted stdio server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// One child for every session.
    Global,
    /// One child per project (`Mcp-Project-Path`), started in the project's directory.
    Project,
    /// One child per session, stopped when the session ends.
    Session,
}

impl Share {
    pub fn as_str(self) -> &'static str {
        match self {
            Share::Global => "global",
            Share::Project => "project",
            Share::Session => "session",
        }
    }
}

/// `project_id`: how the proxy names the project across machines in `Mcp-Project-Id`
/// (SPEC 2.12), for a daemon shared by a team; without it only `Mcp-Project-Path` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectId {
    /// The project's normalised `origin` remote (`github.com/org/repo`), else its path
    /// (`project_id.rs`).
    GitRemote,
}

/// `tools = { allow = [...], deny = [...] }`: glob patterns over tool names. A tool is
/// shown when some `allow` pattern matches it (or `allow` is empty) and no `deny` does.
#[derive(Debug, Clone, Default)]
pub struct ToolFilter {
    allow: Vec<String>,
    deny: Vec<String>,
    allow_set: Option<globset::GlobSet>,
    deny_set: Option<globset::GlobSet>,
}

impl PartialEq for ToolFilter {
    fn eq(&self, other: &ToolFilter) -> bool {
        self.allow == other.allow && self.deny == other.deny
    }
}

impl ToolFilter {
    fn new(allow: Vec<String>, deny: Vec<String>) -> Result<ToolFilter, (&'static str, String)> {
        let build =
            |key: &'static str, patterns: &[String]| -> Result<Option<globset::GlobSet>, (&'static str, String)> {
                if patterns.is_empty() {
                    return Ok(None);
                }
                let mut set = globset::GlobSetBuilder::new();
                for p in patterns {
                    let glob = globset::GlobBuilder::new(p)
                        .literal_separator(false)
                        .build()
                        .map_err(|e| (key, format!("pattern {p:?}: {e}")))?;
                    set.add(glob);
                }
                set.build().map(Some).map_err(|e| (key, e.to_string()))
            };
        let allow_set = build("tools.allow", &allow)?;
        let deny_set = build("tools.deny", &deny)?;
        Ok(ToolFilter { allow, deny, allow_set, deny_set })
    }

    /// Whether no tool is filtered out.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// `Err` with the reason, naming the pattern, when `tool` is filtered out.
    pub fn check(&self, tool: &str) -> Result<(), String> {
        if let Some(deny) = &self.deny_set
            && let Some(i) = deny.matches(tool).first()
        {
            return Err(format!("tool `{tool}` is filtered out by tools.deny pattern {:?}", self.deny[*i]));
        }
        if let Some(allow) = &self.allow_set
            && !allow.is_match(tool)
        {
            return Err(format!(
                "tool `{tool}` is filtered out: it matches none of tools.allow ({})",
                self.allow.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(())
    }

    pub fn allows(&self, tool: &str) -> bool {
        self.check(tool).is_ok()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub command: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl DaemonSpec {
    /// The MCP endpoint URL: `/mcp` for streamable HTTP, plain HTTP and hosted stdio
    /// servers, `/sse` for SSE; a local daemon at `port` (where discovery found it).
    pub fn endpoint(&self, port: Option<u16>) -> url::Url {
        match &self.target {
            Target::Remote { url } => url.clone(),
            Target::Local { port: configured, .. } => {
                let path = if self.transport == Transport::Sse { "sse" } else { "mcp" };
                let port = port.or(*configured).unwrap_or(0);
                // A loopback URL with a numeric port always parses.
                url::Url::parse(&format!("http://127.0.0.1:{port}/{path}")).unwrap_or_else(|_| unreachable!())
            }
        }
    }

    /// The configured port (none for `url` daemons and for hosts on an ephemeral port).
    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Local { port, .. } => *port,
            Target::Remote { .. } => None,
        }
    }

    /// The transport the proxy speaks to it: a hosted stdio server is reached over
    /// mcp-host's streamable HTTP.
    pub fn wire_transport(&self) -> Transport {
        match self.transport {
            Transport::Stdio => Transport::StreamableHttp,
            t => t,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages ("built-in defaults" when no file).
    pub source: String,
    /// `[manager] port`: mcp-manager's API port for every program, when set.
    pub manager_port: Option<u16>,
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
    manager: Option<RawManager>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManager {
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTools {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
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
    ca_file: Option<String>,
    tools: Option<RawTools>,
    share: Option<Share>,
    idle_stop_secs: Option<u64>,
    project_id: Option<ProjectId>,
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
            let spec = daemon_spec(&name, d, env, Path::new(file)).map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                line,
                daemon: name.clone(),
                key,
                message,
            })?;
            daemons.insert(name, spec);
        }
        let manager_port = match raw.manager.and_then(|m| m.port) {
            Some(0) => {
                return Err(ConfigError::Syntax {
                    file: file.to_owned(),
                    line: text.lines().position(|l| l.trim_start().starts_with("[manager]")).map_or(1, |i| i + 1),
                    column: 1,
                    message: "manager.port: must be 1-65535".into(),
                });
            }
            p => p,
        };
        Ok(Config { source: file.to_owned(), manager_port, daemons })
    }

    pub fn names(&self) -> Vec<&str> {
        self.daemons.keys().map(String::as_str).collect()
    }

    /// The daemons we may start (not the `url` ones), by name.
    pub fn local_names(&self) -> Vec<String> {
        self.daemons.values().filter(|s| matches!(s.target, Target::Local { .. })).map(|s| s.name.clone()).collect()
    }
}

/// Validates one `[daemons.NAME]` table; an error is the key and the message. A `${VAR}`
/// that is not set does not fail the file: it makes this one daemon `misconfigured`.
fn daemon_spec(name: &str, d: RawDaemon, env: &Env, file: &Path) -> Result<DaemonSpec, (String, String)> {
    let invalid = |key: &str, message: &str| (key.to_owned(), message.to_owned());
    let mut unset: Option<String> = None;
    let mut expand = |key: &str, v: &str| -> Result<String, (String, String)> {
        match expand_vars(v, &*env.var) {
            Ok(v) => Ok(v),
            Err(VarError::Unset(var)) => {
                unset.get_or_insert_with(|| {
                    format!("daemons.{name}.{key} uses ${{{var}}}, which is not set in the environment")
                });
                Ok(v.to_owned())
            }
            Err(VarError::Syntax(message)) => Err((key.to_owned(), message)),
        }
    };
    let transport = d.transport.unwrap_or(Transport::StreamableHttp);
    let stdio = transport == Transport::Stdio;
    if !stdio {
        for (key, set) in [("share", d.share.is_some()), ("idle_stop_secs", d.idle_stop_secs.is_some())] {
            if set {
                return Err(invalid(key, "applies only to transport = \"stdio\""));
            }
        }
    }
    if stdio && d.project_id.is_some() {
        // mcp-host shares a child per project by its path; it has no use for the id.
        return Err(invalid("project_id", "applies only to a daemon reached over HTTP, not transport = \"stdio\""));
    }
    if d.ca_file.is_some() && d.url.is_none() {
        return Err(invalid("ca_file", "applies only to a daemon reached by an https:// url"));
    }
    let mut args = Vec::with_capacity(d.args.len());
    for a in &d.args {
        args.push(expand("args", a)?);
    }
    let mut vars = BTreeMap::new();
    for (k, v) in &d.env {
        vars.insert(k.clone(), expand(&format!("env.{k}"), v)?);
    }
    let mut headers = BTreeMap::new();
    for (k, v) in &d.headers {
        headers.insert(k.clone(), expand(&format!("headers.{k}"), v)?);
    }
    let cwd = d.cwd.as_deref().map(|c| expand_home(c, env.home.as_deref()));
    let mut hosted = None;
    let target = match (&d.url, d.port) {
        (Some(_), _) if stdio => {
            return Err(invalid("url", "a stdio server is started by mcp-host; remove url (or the transport)"));
        }
        (Some(url), _) => {
            if d.command.is_some() {
                return Err(invalid("command", "a daemon reached by url is never started; remove command"));
            }
            let expanded = expand("url", url)?;
            let url = match url::Url::parse(&expanded) {
                Ok(url) => url,
                // Unusable until the variable is set; nothing reads it while misconfigured.
                Err(_) if unset.is_some() => {
                    url::Url::parse("http://unset.invalid/").unwrap_or_else(|_| unreachable!())
                }
                Err(e) => return Err(invalid("url", &e.to_string())),
            };
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid("url", &format!("must be http:// or https://, not {}://", url.scheme())));
            }
            Target::Remote { url }
        }
        (None, Some(0)) => return Err(invalid("port", "must be 1-65535")),
        (None, port) if stdio => {
            let Some(command) = d.command.as_deref() else {
                return Err(invalid("command", "a stdio server needs the command that starts it"));
            };
            hosted = Some(Hosted {
                server: Launch { command: expand_home(command, env.home.as_deref()), args, cwd, env: vars },
                share: d.share.unwrap_or(Share::Project),
                idle_stop: d.idle_stop_secs.map_or(DEFAULT_IDLE_STOP, Duration::from_secs),
            });
            let config = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            let mut host_args = vec!["--target".to_owned(), name.to_owned(), "--config".to_owned()];
            host_args.push(config.display().to_string());
            Target::Local {
                port,
                launch: Some(Launch {
                    command: sibling(env, "mcp-host"),
                    args: host_args,
                    cwd: None,
                    env: BTreeMap::new(),
                }),
            }
        }
        (None, Some(port)) => {
            let launch = match d.command.as_deref() {
                Some(cmd) => Some(Launch { command: expand_home(cmd, env.home.as_deref()), args, cwd, env: vars }),
                None if name == "memory" => Some(Launch {
                    command: sibling(env, "memory-server"),
                    args: if args.is_empty() { vec!["serve".into(), "--port".into(), port.to_string()] } else { args },
                    cwd,
                    env: vars,
                }),
                None => None,
            };
            Target::Local { port: Some(port), launch }
        }
        (None, None) => return Err(invalid("port", "every daemon needs a port (or a url)")),
    };
    let tools = d.tools.unwrap_or_default();
    let tools = ToolFilter::new(tools.allow, tools.deny).map_err(|(key, message)| (key.to_owned(), message))?;
    Ok(DaemonSpec {
        name: name.to_owned(),
        transport,
        target,
        startup_timeout: d.startup_timeout_ms.map_or(DEFAULT_STARTUP_TIMEOUT, Duration::from_millis),
        request_timeout: d.request_timeout_ms.map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis),
        headers,
        ca_file: d.ca_file.as_deref().map(|c| expand_home(c, env.home.as_deref())),
        tools,
        hosted,
        project_id: d.project_id,
        misconfigured: unset,
    })
}

/// One of our programs: next to this executable, else whatever `PATH` finds.
fn sibling(env: &Env, program: &str) -> PathBuf {
    if let Some(dir) = &env.exe_dir {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}

fn expand_home(value: &str, home: Option<&Path>) -> PathBuf {
    match (value.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(value),
    }
}

enum VarError {
    /// `${` without its `}`: a mistake in the file.
    Syntax(String),
    /// The variable named is not set: the daemon is unusable until it is.
    Unset(String),
}

/// Replaces every `${VAR}` with the variable's value; an unset variable is an error
/// (a token must never silently become empty).
fn expand_vars(value: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, VarError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| VarError::Syntax(format!("unterminated ${{ in {value:?}")))?;
        let name = &after[..end];
        let v = var(name).ok_or_else(|| VarError::Unset(name.to_owned()))?;
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
        assert_eq!(memory.endpoint(None).as_str(), "http://127.0.0.1:3100/mcp");
        let Target::Local { launch: Some(l), .. } = &memory.target else { panic!() };
        assert_eq!(l.command, PathBuf::from("memory-server"));
        assert_eq!(l.args, ["serve", "--port", "3100"]);
        assert_eq!(c.daemons["ast-grep"].endpoint(None).as_str(), "http://127.0.0.1:3102/sse");
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
        assert_eq!(c.daemons["team"].project_id, None);
    }

    #[test]
    fn project_id_git_remote() {
        let c = Config::parse(
            "[daemons.team]\nurl = \"https://memory.example/mcp\"\nproject_id = \"git-remote\"\n[daemons.m]\nport = 1\nproject_id = \"git-remote\"\n",
            "c.toml",
            &env(),
        )
        .unwrap();
        assert_eq!(c.daemons["team"].project_id, Some(ProjectId::GitRemote));
        assert_eq!(c.daemons["m"].project_id, Some(ProjectId::GitRemote));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = Config::parse("[daemons.memory]\nport = 3100\nprot = 1\n", "c.toml", &env()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("c.toml:3:"), "{msg}");
        assert!(msg.contains("prot"), "{msg}");

        let e = Config::parse("[daemons.a]\ntransport = \"sse\"\n", "c.toml", &env()).unwrap_err();
        assert_eq!(e.to_string(), "c.toml:1: daemons.a.port: every daemon needs a port (or a url)");

        let e = Config::parse("[daemons.a]\nport = 1\nargs = [\"${NOPE\"]\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().contains("daemons.a.args") && e.to_string().contains("unterminated"), "{e}");

        let e = Config::parse("[daemons.a]\nport = 1\nshare = \"global\"\n", "c.toml", &env()).unwrap_err();
        assert_eq!(e.to_string(), "c.toml:1: daemons.a.share: applies only to transport = \"stdio\"");
        let e = Config::parse("[daemons.a]\ntransport = \"stdio\"\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().contains("daemons.a.command"), "{e}");
        let e = Config::parse("[daemons.a]\nport = 1\ntools = { deny = [\"[\"] }\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().contains("daemons.a.tools.deny") && e.to_string().contains("\"[\""), "{e}");
        let e = Config::parse("[manager]\nport = 0\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().contains("manager.port"), "{e}");

        let e = Config::parse("[daemons.a]\nport = 1\n\nproject_id = \"git\"\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:4:"), "{e}");
        assert!(e.to_string().contains("daemons.a.project_id: ") && e.to_string().contains("git-remote"), "{e}");
        let e = Config::parse(
            "[daemons.a]\ntransport = \"stdio\"\ncommand = \"x\"\nproject_id = \"git-remote\"\n",
            "c.toml",
            &env(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("c.toml:1: daemons.a.project_id: applies only"), "{e}");

        let e = Config::parse("[daemons.a]\nport = \"x\"\n", "c.toml", &env()).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:"), "{e}");
        assert!(e.to_string().contains("daemons.a.port: "), "{e}");
    }

    #[test]
    fn an_unset_variable_breaks_only_its_own_daemon() {
        let c = Config::parse(
            r#"
[daemons.memory]
port = 3100
[daemons.team-memory]
url = "https://memory.example.internal/mcp"
headers = { Authorization = "Bearer ${TEAM_MEMORY_TOKEN}" }
[daemons.remote]
url = "${NOPE_URL}/mcp"
"#,
            "c.toml",
            &env(),
        )
        .unwrap();
        assert_eq!(c.daemons["memory"].misconfigured, None);
        assert_eq!(
            c.daemons["team-memory"].misconfigured.as_deref(),
            Some(
                "daemons.team-memory.headers.Authorization uses ${TEAM_MEMORY_TOKEN}, which is not set in the environment"
            )
        );
        assert!(c.daemons["remote"].misconfigured.as_deref().is_some_and(|m| m.contains("${NOPE_URL}")));
    }

    #[test]
    fn a_stdio_server_is_hosted_by_mcp_host() {
        let c = Config::parse(
            r#"
[manager]
port = 4199
[daemons.files]
transport = "stdio"
command = "npx"
args = ["-y", "server-filesystem", "${TOKEN}"]
env = { X = "1" }
share = "global"
idle_stop_secs = 30
tools = { allow = ["read_*", "list_*"], deny = ["*_media_*"] }
[daemons.browser]
transport = "stdio"
command = "~/bin/browser"
port = 4001
"#,
            "/etc/c.toml",
            &env(),
        )
        .unwrap();
        assert_eq!(c.manager_port, Some(4199));
        let files = &c.daemons["files"];
        assert_eq!(files.port(), None);
        assert_eq!(files.wire_transport(), Transport::StreamableHttp);
        let Target::Local { launch: Some(host), .. } = &files.target else { panic!() };
        assert_eq!(host.command, PathBuf::from("mcp-host"));
        assert_eq!(host.args, ["--target", "files", "--config", "/etc/c.toml"]);
        let hosted = files.hosted.as_ref().unwrap();
        assert_eq!(hosted.server.command, PathBuf::from("npx"));
        assert_eq!(hosted.server.args, ["-y", "server-filesystem", "t0k"]);
        assert_eq!(hosted.share, Share::Global);
        assert_eq!(hosted.idle_stop, Duration::from_secs(30));
        assert!(files.tools.allows("read_file"));
        assert!(!files.tools.allows("write_file"));
        assert!(files.tools.check("write_file").unwrap_err().contains("tools.allow"));
        assert!(files.tools.check("read_media_file").unwrap_err().contains("\"*_media_*\""));

        let browser = &c.daemons["browser"];
        assert_eq!(browser.port(), Some(4001));
        let hosted = browser.hosted.as_ref().unwrap();
        assert_eq!(hosted.share, Share::Project);
        assert_eq!(hosted.idle_stop, DEFAULT_IDLE_STOP);
        assert_eq!(hosted.server.command, PathBuf::from("/home/u/bin/browser"));
        assert!(browser.tools.is_empty());
    }
}
