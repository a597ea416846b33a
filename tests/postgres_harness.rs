//! The throwaway PostgreSQL of `support/postgres.rs`, which the PostgreSQL backend's tests
//! stand on: the role the daemon gets, the extensions it creates, outages and a crash with
//! the data kept, several servers at once, and nothing left behind (not even by a killed test).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::PATIENCE;
use e2e::postgres::TestPostgres;

#[test]
fn one_server_serves_stops_and_comes_back_with_its_data() {
    let started = Instant::now();
    let pg = TestPostgres::start();
    eprintln!("start (initdb, server, role, database): {:?}", started.elapsed());
    let port = pg.port();
    assert_eq!(pg.url(), format!("postgres://memory@127.0.0.1:{port}/memory"));
    assert_eq!(pg.psql("SELECT 1"), "1");

    // The daemon's role: no superuser, owner of its database, which is UTF8.
    assert_eq!(pg.psql("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"), "memory|f");
    assert_eq!(
        pg.psql("SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"),
        "memory|UTF8"
    );
    assert_eq!(pg.psql_admin("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"), "t");
    assert_eq!(pg.psql("SHOW fsync"), "on");
    assert_eq!(pg.psql("SHOW max_connections"), "200");

    // Trusted extensions: the database owner creates them (as the daemon will).
    pg.psql("CREATE EXTENSION IF NOT EXISTS pg_trgm;");
    assert_eq!(pg.psql("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1"), "pg_trgm");
    pg.psql("CREATE TABLE kept (v text);\nINSERT INTO kept VALUES ('before the outage');");

    let t = Instant::now();
    pg.stop();
    eprintln!("stop -m fast: {:?}", t.elapsed());
    pg.stop(); // idempotent
    let err = pg.try_psql("SELECT 1").expect_err("psql must fail while the server is stopped");
    assert!(err.contains(&port.to_string()), "{err}");

    let t = Instant::now();
    pg.start_again();
    eprintln!("start_again: {:?}", t.elapsed());
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT v FROM kept"), "before the outage");

    let t = Instant::now();
    pg.restart();
    eprintln!("restart: {:?}", t.elapsed());
    pg.psql("INSERT INTO kept VALUES ('after a restart');");
    assert_eq!(pg.psql("SELECT count(*) FROM kept"), "2");

    // A crash: SIGKILL the postmaster; the next start recovers the commits from the WAL.
    let pid = pg.postmaster_pid().expect("the server runs");
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + PATIENCE;
    while pg.postmaster_pid().is_some() {
        assert!(Instant::now() < deadline, "postmaster {pid} still counts as running after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    pg.start_again();
    eprintln!("start_again after SIGKILL (crash recovery): {:?}", t.elapsed());
    assert_eq!(pg.psql("SELECT v FROM kept ORDER BY v"), "after a restart\nbefore the outage");
    // A failing statement panics with psql's message; try_psql hands it back.
    let err = pg.try_psql("SELECT * FROM missing_table").expect_err("no such table");
    assert!(err.contains("missing_table"), "{err}");
}

#[test]
fn two_servers_at_once_and_nothing_left_after_drop() {
    let t = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(TestPostgres::start);
        let b = s.spawn(TestPostgres::start);
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    eprintln!("two starts at once: {:?}", t.elapsed());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("CREATE TABLE only_in_a (v int);");
    assert_eq!(b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "0");

    let data = a.data_dir().to_path_buf();
    let name = a.cluster_name();
    let procs = server_processes(&data, &name);
    assert!(procs.len() >= 2, "the postmaster and its helpers: {procs:?}");

    let t = Instant::now();
    drop(a);
    eprintln!("drop: {:?}", t.elapsed());
    assert!(!data.exists(), "{} is still there", data.display());
    assert_eq!(server_processes(&data, &name), Vec::<String>::new());
    assert_eq!(b.psql("SELECT 1"), "1", "the other server is untouched");
}

/// A test process killed before its drops ran leaves its server running; the next
/// `TestPostgres::start` (here, in the parent) stops it and deletes its directory.
#[test]
fn a_server_orphaned_by_a_killed_test_is_swept() {
    let exe = std::env::current_exe().expect("test executable path");
    let mut child = Command::new(exe)
        .args(["orphan_helper", "--exact", "--ignored", "--nocapture"])
        .env("PG_HARNESS_ORPHAN", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the helper");
    let stdout = child.stdout.take().expect("helper stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ORPHAN ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let line = rx.recv_timeout(PATIENCE).expect("the helper started its server");
    let (data, name) = line.split_once(' ').expect("data dir and cluster name");
    let data = Path::new(data).to_path_buf();
    child.kill().expect("SIGKILL the helper");
    child.wait().expect("reap the helper");
    assert!(!server_processes(&data, name).is_empty(), "the orphan outlives its test process");

    let _pg = TestPostgres::start();
    // Another test's start may be the one sweeping it, still under way: wait, bounded.
    let deadline = Instant::now() + PATIENCE;
    while (data.exists() || !server_processes(&data, name).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!data.exists(), "{} is still there", data.display());
    assert_eq!(server_processes(&data, name), Vec::<String>::new());
}

#[test]
#[ignore = "helper process, started by a_server_orphaned_by_a_killed_test_is_swept"]
fn orphan_helper() {
    if std::env::var_os("PG_HARNESS_ORPHAN").is_none() {
        return;
    }
    let pg = TestPostgres::start();
    println!("ORPHAN {} {}", pg.data_dir().display(), pg.cluster_name());
    // Killed by the parent long before this ends.
    std::thread::sleep(PATIENCE);
}

/// Command lines of live processes belonging to the server: the postmaster names its data
/// directory, its helpers show `postgres: <cluster_name>: <role>`.
fn server_processes(data: &Path, cluster_name: &str) -> Vec<String> {
    let data = data.to_string_lossy();
    let helper = format!("postgres: {cluster_name}: ");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&*data) || cmdline.starts_with(&helper) {
            found.push(cmdline.trim_end().to_owned());
        }
    }
    found
}
