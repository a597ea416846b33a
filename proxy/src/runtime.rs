//! The runtime directory (`$MCP_SESSION_MANAGER_HOME`, default `~/.mcp-session-manager`,
//! mode 0700) and the files in it: `config.toml`, `<name>.lock`, `<name>.spawn.lock`,
//! `<name>.log` (rotated at 10 MiB to `.log.1` … `.log.3`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
const LOG_KEEP: u32 = 3;

#[derive(Debug, Clone)]
pub struct RuntimeDir {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("runtime directory {path}: {source} (set MCP_SESSION_MANAGER_HOME to a writable directory)")]
pub struct RuntimeDirError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The contents of `<name>.lock`: who runs the daemon and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub port: u16,
    pub transport: String,
    #[serde(rename = "startedAt")]
    pub started_at: String,
}

impl RuntimeDir {
    /// `MCP_SESSION_MANAGER_HOME`, else `~/.mcp-session-manager`. Not created yet.
    pub fn from_env() -> Option<RuntimeDir> {
        if let Some(p) = std::env::var_os("MCP_SESSION_MANAGER_HOME").filter(|p| !p.is_empty()) {
            return Some(RuntimeDir { root: PathBuf::from(p) });
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(RuntimeDir { root: PathBuf::from(home).join(".mcp-session-manager") })
    }

    pub fn at(root: PathBuf) -> RuntimeDir {
        RuntimeDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory (0700) when missing.
    pub fn ensure(&self) -> Result<(), RuntimeDirError> {
        if self.root.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|source| RuntimeDirError { path: self.root.clone(), source })
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.lock"))
    }

    pub fn spawn_lock_file(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.spawn.lock"))
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }

    pub fn read_lock(&self, name: &str) -> Option<LockInfo> {
        let text = std::fs::read_to_string(self.lock_file(name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `<name>.lock` atomically (temp file + rename), readable by the user only.
    pub fn write_lock(&self, name: &str, info: &LockInfo) -> std::io::Result<()> {
        let tmp = self.root.join(format!(".{name}.lock.{}", std::process::id()));
        let mut f = private_file(&tmp, false)?;
        f.write_all(serde_json::to_string(info).map_err(std::io::Error::other)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.lock_file(name))
    }

    pub fn remove_lock(&self, name: &str) {
        let _ = std::fs::remove_file(self.lock_file(name));
    }

    /// Opens `<name>.log` for appending, rotating it first when it has grown past 10 MiB.
    pub fn open_log(&self, name: &str) -> std::io::Result<File> {
        let log = self.log_file(name);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() >= LOG_ROTATE_BYTES) {
            for i in (1..LOG_KEEP).rev() {
                let _ = std::fs::rename(
                    self.root.join(format!("{name}.log.{i}")),
                    self.root.join(format!("{name}.log.{}", i + 1)),
                );
            }
            let _ = std::fs::rename(&log, self.root.join(format!("{name}.log.1")));
        }
        private_file(&log, true)
    }
}

/// Opens (creating with mode 0600) a file for writing or appending.
pub fn private_file(path: &Path, append: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// Whether a process with this pid exists (a zombie counts as dead only once reaped,
/// which is why spawners reap their children).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Now as an RFC 3339 UTC timestamp with milliseconds (`2026-11-25T16:50:33.123Z`),
/// the `startedAt` format of the Node original's lock files.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trip_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::at(dir.path().join("rt"));
        rt.ensure().unwrap();
        assert_eq!(std::fs::metadata(rt.root()).unwrap().permissions().mode() & 0o777, 0o700);
        let info = LockInfo { pid: 42, port: 3100, transport: "streamable-http".into(), started_at: now_rfc3339() };
        rt.write_lock("memory", &info).unwrap();
        assert_eq!(rt.read_lock("memory"), Some(info));
        assert_eq!(std::fs::metadata(rt.lock_file("memory")).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(rt.lock_file("memory")).unwrap();
        assert!(text.contains("\"startedAt\""));
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn logs_rotate_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::at(dir.path().to_owned());
        let f = rt.open_log("x").unwrap();
        f.set_len(LOG_ROTATE_BYTES).unwrap();
        drop(f);
        rt.open_log("x").unwrap();
        assert!(dir.path().join("x.log.1").exists());
        assert_eq!(std::fs::metadata(rt.log_file("x")).unwrap().len(), 0);
    }

    #[test]
    fn our_own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
