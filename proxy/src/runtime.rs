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
            self.shift_logs(name);
            let _ = std::fs::rename(&log, self.root.join(format!("{name}.log.1")));
        }
        private_file(&log, true)
    }

    /// Rotates the log of a daemon that is running and holds it open (append mode):
    /// when past 10 MiB, it is copied to `<name>.log.1` and truncated in place, so the
    /// daemon's next write lands at the start of the emptied file. Returns whether it
    /// rotated.
    pub fn rotate_live_log(&self, name: &str) -> std::io::Result<bool> {
        let log = self.log_file(name);
        if !std::fs::metadata(&log).is_ok_and(|m| m.len() >= LOG_ROTATE_BYTES) {
            return Ok(false);
        }
        self.shift_logs(name);
        let first = self.root.join(format!("{name}.log.1"));
        std::io::copy(&mut File::open(&log)?, &mut private_file(&first, false)?)?;
        OpenOptions::new().write(true).open(&log)?.set_len(0)?;
        Ok(true)
    }

    /// `.log.2` → `.log.3`, `.log.1` → `.log.2` (the oldest falls off).
    fn shift_logs(&self, name: &str) {
        for i in (1..LOG_KEEP).rev() {
            let _ = std::fs::rename(
                self.root.join(format!("{name}.log.{i}")),
                self.root.join(format!("{name}.log.{}", i + 1)),
            );
        }
    }

    /// Creates the directory when missing and proves it writable (a probe file), so a
    /// command fails up front with advice instead of half-way through a spawn.
    pub fn check_writable(&self) -> Result<(), RuntimeDirError> {
        self.ensure()?;
        let probe = self.root.join(format!(".probe.{}", std::process::id()));
        let result = private_file(&probe, false);
        let _ = std::fs::remove_file(&probe);
        result.map(drop).map_err(|source| RuntimeDirError { path: self.root.clone(), source })
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

/// Parses the `startedAt` of a lock file (RFC 3339 UTC as [`now_rfc3339`] writes it;
/// fractional seconds optional). None for anything else.
pub fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let t = text.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let millis = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(3).collect();
        digits.parse::<u64>().ok()? * 10u64.pow(3 - digits.len() as u32)
    };
    // Days-from-civil (Howard Hinnant's algorithm), the inverse of `now_rfc3339`.
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs) + std::time::Duration::from_millis(millis))
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
    fn timestamps_parse_back() {
        let now = std::time::SystemTime::now();
        let parsed = parse_rfc3339(&now_rfc3339()).unwrap();
        let diff = now.duration_since(parsed).unwrap_or_else(|e| e.duration());
        assert!(diff < std::time::Duration::from_secs(5), "{diff:?}");
        let epoch = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(epoch, std::time::UNIX_EPOCH);
        let t = parse_rfc3339("2000-03-01T01:02:03.5Z").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(), 951_872_523_500);
        for bad in ["", "yesterday", "2000-13-01T00:00:00Z", "2000-01-01T00:00:00"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn live_logs_rotate_by_copy_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::at(dir.path().to_owned());
        let mut f = rt.open_log("x").unwrap();
        assert!(!rt.rotate_live_log("x").unwrap());
        f.set_len(LOG_ROTATE_BYTES).unwrap();
        assert!(rt.rotate_live_log("x").unwrap());
        assert_eq!(std::fs::metadata(dir.path().join("x.log.1")).unwrap().len(), LOG_ROTATE_BYTES);
        // The holder keeps appending, now at the start of the emptied file.
        f.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(rt.log_file("x")).unwrap(), "after\n");
    }

    #[test]
    fn writability_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RuntimeDir::at(dir.path().join("a/b")).check_writable().is_ok());
        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = RuntimeDir::at(dir.path().join("file/rt")).check_writable().unwrap_err();
        assert!(e.to_string().contains("MCP_SESSION_MANAGER_HOME"), "{e}");
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
