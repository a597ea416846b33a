//! A throwaway PostgreSQL server for tests: its own data directory under `target/tmp/pg`,
//! an ephemeral loopback port, a `memory` role owning a `memory` database, stopped and
//! deleted on drop.
//!
//! Only the standard library is used, so the bench binary can include this file as it is
//! (`#[path = "../../tests/support/postgres.rs"] mod postgres;`) without the e2e crate's
//! dependencies. The server binaries are Debian's `postgresql` package (`.ci/run` installs it).
//! initdb and the server refuse to run as root, and the suite runs as root: they are then run
//! as the package's `postgres` user through `setpriv` (util-linux, which the suite already
//! needs), which changes uid for one command without a login shell or PAM.

// The bench binary includes this file and uses only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `pg_ctl -w -t` seconds: the bound on every start and stop.
const PG_CTL_WAIT_SECS: u64 = 30;
/// The bound on any one command we run (initdb, psql, pg_ctl beyond its own `-t`).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// Starts on a fresh port before giving up (another process may take the port we picked
/// between our probe and the server's bind).
const PORT_ATTEMPTS: usize = 5;
/// The database and role the daemon under test uses.
const APP_ROLE: &str = "memory";
/// The superuser initdb creates.
const ADMIN_ROLE: &str = "postgres";

/// Instances made by this process, so names never collide between concurrent tests.
static SERIAL: AtomicU32 = AtomicU32::new(0);

/// One running (or deliberately stopped) PostgreSQL server. `Sync`: tests may share one
/// between threads.
pub struct TestPostgres {
    /// The temp dir holding everything below; removed on drop.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bins: Bins,
    runner: Runner,
    port: u16,
}

impl TestPostgres {
    /// initdb, start on a free port, create role and database `memory`. Panics saying why
    /// when it cannot (missing binaries, initdb's output, the server log's tail).
    pub fn start() -> TestPostgres {
        let bins = Bins::find();
        let runner = Runner::current();
        let dir = new_instance_dir(&bins, &runner);
        // From here on the struct owns the directory, so a panic below still cleans up.
        let mut pg = TestPostgres { data: dir.join("data"), log: dir.join("server.log"), dir, bins, runner, port: 0 };
        pg.initdb();
        pg.write_config();
        pg.start_on_free_port();
        pg.psql_admin(&format!("CREATE ROLE {APP_ROLE} LOGIN;\nCREATE DATABASE {APP_ROLE} OWNER {APP_ROLE};"));
        pg.check_extensions(&["pg_trgm"]);
        pg
    }

    /// The daemon's URL: role `memory` (not a superuser), owner of database `memory`.
    pub fn url(&self) -> String {
        format!("postgres://{APP_ROLE}@127.0.0.1:{}/{APP_ROLE}", self.port)
    }

    /// A superuser URL, for tests that need one.
    pub fn admin_url(&self) -> String {
        format!("postgres://{ADMIN_ROLE}@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (its path is in the postmaster's command line).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The `cluster_name`, which every server process shows in its command line.
    pub fn cluster_name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The postmaster's pid while one runs (from `postmaster.pid`), for crash tests that
    /// SIGKILL it; `start_again` then recovers from the WAL.
    pub fn postmaster_pid(&self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// The server's log (every start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `pg_ctl stop -m fast`, for outage tests. Does nothing when the server is not running.
    pub fn stop(&self) {
        if !self.is_running() {
            return;
        }
        let out = self.pg_ctl(&["stop", "-m", "fast"]);
        if !out.status.success() && self.is_running() {
            panic!("pg_ctl stop failed: {}{}", output_text(&out), self.log_tail());
        }
    }

    /// Starts the stopped server again: same data directory, same port. Waits until it
    /// accepts connections. Does nothing when it is running.
    pub fn start_again(&self) {
        if self.is_running() {
            return;
        }
        // The port must stay the same (the daemon under test holds the URL), so a port taken
        // meanwhile is waited out, not replaced; so are the backends of a killed postmaster.
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_WAIT_SECS);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(Failure::Busy(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Err(Failure::Busy(text) | Failure::Other(text)) => {
                    panic!("PostgreSQL did not start again on port {}: {text}{}", self.port, self.log_tail())
                }
            }
        }
    }

    /// `stop` then `start_again`.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Runs `sql` as role `memory` on database `memory` and returns stdout (rows only,
    /// `|`-separated, no trailing newline). Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}{}", self.log_tail()))
    }

    /// `psql` as the superuser on database `postgres`.
    pub fn psql_admin(&self, sql: &str) -> String {
        self.try_psql_as(&self.admin_url(), sql).unwrap_or_else(|e| panic!("{e}{}", self.log_tail()))
    }

    /// `psql` that returns the failure instead of panicking (for outage tests).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_as(&self.url(), sql)
    }

    /// The script is read from stdin (`-f -`): each statement commits on its own, as in a
    /// file, so `CREATE DATABASE` may follow other statements; `-q` leaves out command tags
    /// so the output is the rows alone.
    fn try_psql_as(&self, url: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d", url]);
        clean_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        let out = run_bounded(&mut cmd, Some(sql), COMMAND_LIMIT)?;
        if !out.status.success() {
            return Err(format!("psql ({url}) failed ({}) on:\n{sql}\n{}", out.status, output_text(&out)));
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        while text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// `pg_ctl status` exits 0 only while a server runs on this data directory.
    fn is_running(&self) -> bool {
        self.pg_ctl(&["status"]).status.success()
    }

    fn initdb(&self) {
        let mut failures = String::new();
        // C.UTF-8 where the system has it; `--no-locale` (the C locale) accepts UTF8 too.
        for locale in ["--locale=C.UTF-8", "--no-locale"] {
            let mut cmd = self.runner.command(&self.bins.initdb, &self.dir);
            cmd.arg("-D").arg(&self.data);
            // --no-sync: a throwaway cluster need not survive an OS crash; the server
            // itself runs with fsync=on.
            cmd.args(["-A", "trust", "--encoding=UTF8", locale, "-U", ADMIN_ROLE, "--no-sync"]);
            match run_bounded(&mut cmd, None, COMMAND_LIMIT) {
                Ok(out) if out.status.success() => return,
                Ok(out) => {
                    failures.push_str(&format!("\ninitdb {locale} failed ({}):\n{}", out.status, output_text(&out)))
                }
                Err(e) => failures.push_str(&format!("\ninitdb {locale}: {e}")),
            }
            // A failed initdb may leave a partial data directory behind.
            let _ = std::fs::remove_dir_all(&self.data);
        }
        panic!("initdb could not create a cluster in {}:{failures}", self.data.display());
    }

    /// Settings appended to the generated `postgresql.conf` (the port is given at each
    /// start, since a taken port means another one).
    fn write_config(&self) {
        let sock = self.dir.join("sock");
        mkdir_for(&sock, &self.runner);
        let settings = [
            ("listen_addresses", quote("127.0.0.1")),
            ("unix_socket_directories", quote(&sock.to_string_lossy())),
            // Durability tests kill the server and expect committed rows back.
            ("fsync", "on".to_string()),
            // After a crash the server first syncs the data directory: one syncfs(2) instead
            // of an fsync per file (measured: 3.9 s of fsyncs on a busy disk).
            ("recovery_init_sync_method", "syncfs".to_string()),
            // Several daemons with connection pools share one server.
            ("max_connections", "200".to_string()),
            ("shared_buffers", quote("32MB")),
            // Every server process shows it in its command line, so a test can find them.
            ("cluster_name", quote(&self.cluster_name())),
        ];
        let mut text = String::from("\n# Set by tests/support/postgres.rs\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        let conf = self.data.join("postgresql.conf");
        let written =
            std::fs::OpenOptions::new().append(true).open(&conf).and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            panic!("cannot append to {}: {e}", conf.display());
        }
    }

    /// Serves TLS with `cert_pem` and `key_pem` and takes TCP connections only over TLS
    /// (`hostssl` lines in place of `host`), so a client that gets in at all spoke TLS.
    /// Restarts the server.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.data.join(name);
            let written = std::fs::write(&path, text)
                .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)));
            if let Err(e) = written {
                panic!("cannot write {}: {e}", path.display());
            }
            self.runner.chown(&path);
        }
        let hba = self.data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap_or_else(|e| panic!("cannot read {}: {e}", hba.display()));
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ").or_else(|| l.strip_prefix("host\t")) {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        let conf = self.data.join("postgresql.conf");
        let written = std::fs::write(&hba, text).and_then(|()| {
            let mut f = std::fs::OpenOptions::new().append(true).open(&conf)?;
            f.write_all(b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        });
        if let Err(e) = written {
            panic!("cannot configure TLS in {}: {e}", self.data.display());
        }
        self.restart();
    }

    fn start_on_free_port(&mut self) {
        let mut tried = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.try_start() {
                Ok(()) => return,
                Err(Failure::Busy(_)) => tried.push(self.port),
                Err(Failure::Other(text)) => panic!("PostgreSQL did not start: {text}{}", self.log_tail()),
            }
        }
        panic!("PostgreSQL found every port it tried taken ({tried:?}){}", self.log_tail());
    }

    /// `pg_ctl start -w`; tells a taken port (worth another try) from other failures by the
    /// lines this start added to the log.
    fn try_start(&self) -> Result<(), Failure> {
        let log_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let port_opt = format!("-p {}", self.port);
        let mut args = vec!["start", "-o", port_opt.as_str(), "-l"];
        let log = self.log.to_string_lossy().into_owned();
        args.push(&log);
        let out = self.pg_ctl(&args);
        if out.status.success() {
            return Ok(());
        }
        let added = read_from(&self.log, log_len);
        let text = format!("pg_ctl start failed ({}):\n{}\nlog of this start:\n{added}", out.status, output_text(&out));
        // pg_ctl may give up while a slow server is still coming up: never leave one behind.
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        if added.contains("Address already in use") || added.contains("pre-existing shared memory block") {
            Err(Failure::Busy(text))
        } else {
            Err(Failure::Other(text))
        }
    }

    fn check_extensions(&self, wanted: &[&str]) {
        let have = self.psql("SELECT name FROM pg_available_extensions");
        let have: Vec<&str> = have.lines().collect();
        for ext in wanted {
            if !have.contains(ext) {
                panic!(
                    "PostgreSQL in {} has no extension {ext} (the daemon creates it); Debian's postgresql-NN \
                     package ships it with the server",
                    self.bins.dir.display()
                );
            }
        }
    }

    /// `pg_ctl -D data -w -t 30 ARGS` as the server's user. Never panics (Drop uses it).
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.runner.command(&self.bins.pg_ctl, &self.dir);
        cmd.arg("-D").arg(&self.data).args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()]).args(args);
        run_bounded(&mut cmd, None, COMMAND_LIMIT).unwrap_or_else(|e| failed_output(&e))
    }

    /// The last lines of the server log, for panic messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("\n--- server log {} (tail) ---\n{tail}", self.log.display())
    }
}

impl Drop for TestPostgres {
    /// `-m immediate`: nothing of a throwaway cluster needs a clean shutdown. Never panics.
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let out = self.pg_ctl(&["stop", "-m", "immediate"]);
            if !out.status.success() && self.is_running() {
                eprintln!("TestPostgres: pg_ctl stop failed: {}", output_text(&out));
                kill_postmaster(&self.data);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("TestPostgres: cannot remove {}: {e}", self.dir.display());
        }
    }
}

enum Failure {
    /// Worth another try: the port is taken, or (after a killed postmaster) its old
    /// backends still hold the shared memory for a moment.
    Busy(String),
    Other(String),
}

/// The server's binaries: `/usr/lib/postgresql/<highest version>/bin`, else `PATH`.
struct Bins {
    dir: PathBuf,
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: PathBuf,
}

impl Bins {
    fn find() -> Bins {
        let dir = debian_bin_dir().or_else(|| which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)));
        let Some(dir) = dir else {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) are neither in /usr/lib/postgresql/*/bin \
                 nor on PATH: `apt-get install postgresql` (.ci/run does)"
            );
        };
        for tool in ["initdb", "pg_ctl", "postgres"] {
            if !dir.join(tool).is_file() {
                panic!("{} has no {tool}: `apt-get install postgresql`", dir.display());
            }
        }
        let psql = Some(dir.join("psql")).filter(|p| p.is_file()).or_else(|| which("psql"));
        let Some(psql) = psql else {
            panic!("psql is neither in {} nor on PATH: `apt-get install postgresql-client`", dir.display());
        };
        Bins { initdb: dir.join("initdb"), pg_ctl: dir.join("pg_ctl"), psql, dir }
    }
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` holding an initdb.
fn debian_bin_dir() -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> { name.split('.').map(|p| p.parse().ok()).collect() };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((version(e.file_name().to_str()?)?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max()
        .map(|(_, bin)| bin)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Who runs initdb, pg_ctl and the server: ourselves, or (as root) the `postgres` user.
#[derive(Clone, Copy)]
enum Runner {
    Me,
    As { uid: u32, gid: u32 },
}

impl Runner {
    fn current() -> Runner {
        if effective_uid() != Some(0) {
            return Runner::Me;
        }
        match passwd_entry("postgres") {
            Some((uid, gid)) => Runner::As { uid, gid },
            None => panic!(
                "running as root, where initdb refuses to run, and there is no `postgres` user to run it as: \
                 `apt-get install postgresql` creates one"
            ),
        }
    }

    /// `program` run as this user, in `cwd` (one the user can enter: initdb warns otherwise).
    fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = match *self {
            Runner::Me => Command::new(program),
            Runner::As { uid, gid } => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg("--");
                cmd.arg(program);
                cmd
            }
        };
        clean_env(&mut cmd);
        cmd.current_dir(cwd);
        cmd
    }

    fn chown(&self, path: &Path) {
        if let Runner::As { uid, gid } = *self
            && let Err(e) = std::os::unix::fs::chown(path, Some(uid), Some(gid))
        {
            panic!("cannot give {} to uid {uid}: {e}", path.display());
        }
    }

    /// Can this user reach (search) `dir`, judged by the modes of it and its ancestors?
    fn can_enter(&self, dir: &Path) -> bool {
        let Runner::As { uid, gid } = *self else {
            return true;
        };
        dir.ancestors().all(|d| {
            std::fs::metadata(d).is_ok_and(|m| {
                let mode = m.mode();
                (m.uid() == uid && mode & 0o100 != 0) || (m.gid() == gid && mode & 0o010 != 0) || mode & 0o001 != 0
            })
        })
    }
}

/// The effective uid, from `/proc/self/status` (std has no `geteuid`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// uid and gid of `user` from `/etc/passwd`.
fn passwd_entry(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == user).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

/// A fresh `pg-<pid>-<n>` directory, 0700, owned by the server's user, in the first of
/// `<target>/tmp/pg` and `$TMPDIR/mcp-e2e-pg-<uid>` that we can write, the server's user
/// can enter, and whose socket paths fit in `sun_path` (107 bytes). The pid lets a later
/// run tell an abandoned directory (its test process is gone) from a live one.
fn new_instance_dir(bins: &Bins, runner: &Runner) -> PathBuf {
    let uid = effective_uid().map_or_else(|| "unknown".to_string(), |u| u.to_string());
    let candidates = target_dir().map(|t| t.join("tmp").join("pg")).into_iter();
    let candidates = candidates.chain([std::env::temp_dir().join(format!("mcp-e2e-pg-{uid}"))]);
    let mut refused = Vec::new();
    'bases: for base in candidates {
        if let Err(e) = std::fs::create_dir_all(&base) {
            refused.push(format!("{}: {e}", base.display()));
            continue;
        }
        // The server's user passes through it to its own directory, whatever umask made it.
        if matches!(runner, Runner::As { .. }) {
            let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
        }
        // `<base>/pg-<pid>-<n>/sock/.s.PGSQL.<port>.lock`
        let longest = base.as_os_str().len() + "/pg-4194304-4294967295/sock/.s.PGSQL.65535.lock".len();
        if longest > 107 {
            refused.push(format!("{}: too long for a unix socket path", base.display()));
            continue;
        }
        if !runner.can_enter(&base) {
            refused.push(format!("{}: the postgres user cannot enter it", base.display()));
            continue;
        }
        sweep_stale(&base, bins, runner);
        loop {
            let n = SERIAL.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("pg-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                    runner.chown(&dir);
                    return dir;
                }
                // Left by an earlier process with our pid, not yet swept.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    refused.push(format!("{}: {e}", dir.display()));
                    continue 'bases;
                }
            }
        }
    }
    panic!("no directory for a test PostgreSQL: {}", refused.join("; "));
}

/// The cargo target directory holding this executable (it has cargo's `CACHEDIR.TAG`);
/// found by walking up, so it works for `target/debug/deps/<test>` and `target/release/bench`.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf)
}

fn mkdir_for(dir: &Path, runner: &Runner) {
    if let Err(e) = std::fs::create_dir(dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    runner.chown(dir);
}

/// Servers outlive a test process killed before its drops ran (pg_ctl detaches them):
/// stop those whose process is gone and delete their directories.
fn sweep_stale(base: &Path, bins: &Bins, runner: &Runner) {
    // Without /proc every owner would look gone.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pg-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut cmd = runner.command(&bins.pg_ctl, &dir);
            cmd.arg("-D").arg(&data).args(["-w", "-t", "10", "stop", "-m", "immediate"]);
            let stopped = run_bounded(&mut cmd, None, COMMAND_LIMIT).is_ok_and(|o| o.status.success());
            if !stopped {
                kill_postmaster(&data);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Last resort when pg_ctl cannot stop a server: SIGKILL the postmaster named in
/// `postmaster.pid` if its command line still names this data directory (its children
/// exit when it dies).
fn kill_postmaster(data: &Path) {
    let Ok(pidfile) = std::fs::read_to_string(data.join("postmaster.pid")) else { return };
    let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy()) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// A free loopback port: bound, then released for the server (a collision is retried).
fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
    }
}

/// libpq and the server read `PG*` variables; the caller's must not steer ours.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// A postgresql.conf string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Runs `cmd` to completion within `limit` (killed after), feeding it `stdin`; both
/// outputs read on threads so a full pipe never stalls it.
fn run_bounded(cmd: &mut Command, stdin: Option<&str>, limit: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        // A broken pipe here shows up as the command's own failure.
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {limit:?} and was killed"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// An `Output` standing for a command that could not be run, so callers see one shape.
fn failed_output(reason: &str) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: std::process::ExitStatus::from_raw(1 << 8),
        stdout: Vec::new(),
        stderr: reason.as_bytes().to_vec(),
    }
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The file's text from byte `offset` on.
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Seek;
        if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}
