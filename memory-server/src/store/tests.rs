//! The store's own tests: commits at once or queued, private files, JavaScript lower-casing,
//! failed writes, cached answers, schema refusals, replaced files and closing.

use super::*;
use crate::store::model::Entity;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn entity(name: &str, ty: &str, obs: &[&str]) -> Entity {
    Entity { name: name.into(), entity_type: ty.into(), observations: obs.iter().map(|s| s.to_string()).collect() }
}

fn busy_timeout_ms(store: &Store) -> i64 {
    store.with_writer(|c| c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))).unwrap()
}

/// A small write commits at once when nothing else writes, with the bookkeeping of
/// any commit (a change notice); when another process holds the lock it is queued
/// instead, commits once the lock is free, and the writer connection keeps its busy
/// timeout either way.
#[tokio::test]
async fn small_writes_run_at_once_or_queue_when_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("m.db")).unwrap());
    let mut changes = store.subscribe_changes();
    let names = |store: &Store| -> Vec<String> {
        store.read(graph::read_graph).unwrap().entities.into_iter().map(|e| e.name).collect()
    };

    let created = store.write_small_async(None, |c| graph::create_entities(c, &[entity("now", "t", &["x"])]));
    assert_eq!(created.await.unwrap().len(), 1);
    assert!(changes.try_recv().is_ok(), "the commit is announced");
    assert_eq!(names(&store), ["now"]);
    assert_eq!(busy_timeout_ms(&store), BUSY_TIMEOUT.as_millis() as i64);

    // Another process holds the write lock.
    let other = Connection::open(store.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writer = store.clone();
    let queued = tokio::spawn(async move {
        writer.write_small_async(None, |c| graph::create_entities(c, &[entity("later", "t", &[])])).await
    });
    // Bounded: until the write has left the async worker for the queue's combiner.
    for _ in 0..10_000 {
        if store.writer.is_busy() {
            break; // the combiner holds the connection, waiting for the lock
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!queued.is_finished(), "committed while another process held the lock");
    other.execute_batch("COMMIT").unwrap();
    let created = tokio::time::timeout(Duration::from_secs(60), queued).await.unwrap().unwrap().unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(names(&store), ["now", "later"]);
    assert_eq!(busy_timeout_ms(&store), BUSY_TIMEOUT.as_millis() as i64);
}

#[test]
fn creates_private_files_and_migrates() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/.claude/memory.db");
    let store = Store::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dmode, 0o700);
    let v = store.read(|c| Ok(migrate::user_version(c)?)).unwrap();
    assert_eq!(v, migrate::latest_version());
}

#[test]
fn js_lower_is_unicode_aware_in_sql() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    let s: String = store.read(|c| Ok(c.query_row("SELECT lower('ÄÖÜ ΟΔΟΣ İ')", [], |r| r.get(0))?)).unwrap();
    assert_eq!(s, "äöü οδος i\u{307}");
}

#[test]
fn failed_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("a", "t", &[])])).unwrap();
    let err = store
        .write(move |c| {
            graph::add_observations(
                c,
                &[
                    model::ObservationAddition { entity_name: "a".into(), contents: vec!["x".into()] },
                    model::ObservationAddition { entity_name: "missing".into(), contents: vec!["y".into()] },
                ],
            )
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "Entity with name missing not found");
    let g = store.read(graph::read_graph).unwrap();
    assert!(g.entities[0].observations.is_empty());
}

/// A cached answer is reused while nothing commits and rebuilt after a commit by
/// this store, by another store on the file (another daemon) and by a plain SQLite
/// connection (another program); a failed write does not invalidate it.
#[test]
fn cached_answers_follow_every_commit() {
    use std::sync::atomic::AtomicUsize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(&path).unwrap();
    let builds = AtomicUsize::new(0);
    let names = || {
        store
            .read_cached("names", |c| {
                builds.fetch_add(1, Ordering::SeqCst);
                let names: String =
                    c.query_row("SELECT coalesce(group_concat(name), '') FROM entities", [], |r| r.get(0))?;
                Ok(Bytes::from(names))
            })
            .unwrap()
    };
    assert_eq!(names(), "");
    assert_eq!(names(), "");
    assert_eq!(builds.load(Ordering::SeqCst), 1, "nothing committed: built once");

    store.write(move |c| graph::create_entities(c, &[entity("a", "t", &[])])).unwrap();
    assert_eq!(names(), "a");
    assert_eq!(builds.load(Ordering::SeqCst), 2);

    let other_daemon = Store::open(&path).unwrap();
    other_daemon.write(move |c| graph::create_entities(c, &[entity("b", "t", &[])])).unwrap();
    assert_eq!(names(), "a,b");

    let other_program = Connection::open(&path).unwrap();
    other_program.execute("INSERT INTO entities (name, entity_type) VALUES ('c', 't')", []).unwrap();
    assert_eq!(names(), "a,b,c");
    assert_eq!(names(), "a,b,c");
    assert_eq!(builds.load(Ordering::SeqCst), 4);

    let failed = store.write(move |c| {
        graph::add_observations(c, &[model::ObservationAddition { entity_name: "zz".into(), contents: vec![] }])
    });
    assert!(failed.is_err());
    assert_eq!(names(), "a,b,c");
    assert_eq!(builds.load(Ordering::SeqCst), 4, "a rolled-back write changes nothing");
}

#[test]
fn refuses_a_newer_schema_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE x(a); PRAGMA user_version = 99;").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("newer"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!dir.path().join("m.db-wal").exists());
}

#[test]
fn refuses_a_newer_wal_mode_schema_without_creating_side_files() {
    let dir = tempfile::tempdir().unwrap();
    // A name that needs escaping in a SQLite URI.
    let path = dir.path().join("a #1?%20 ü.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE x(a); PRAGMA user_version = 99;").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [path.file_name().unwrap()], "no -wal or -shm file appeared");
}

/// A file holding something else (an application's table, a clashing `entities`) is
/// refused with the file and the table named, and left exactly as it was: no WAL
/// switch, no migration, no side files.
#[test]
fn refuses_foreign_files_byte_for_byte_unchanged() {
    for (ddl, named) in [
        ("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (1, 'a@b');", "users"),
        ("CREATE TABLE entities (id INTEGER PRIMARY KEY, label TEXT);", "entities"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        Connection::open(&path).unwrap().execute_batch(ddl).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("app.db") && text.contains(named), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{named}: the file changed");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [path.file_name().unwrap()], "{named}: side files appeared");
    }
}

/// The Node server's file is adopted in one transaction: every migration or none.
#[test]
fn adopts_the_node_servers_file_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/node-sqlite/memory.db"), &path).unwrap();
    let store = Store::open(&path).unwrap();
    let v = store.read(|c| Ok(migrate::user_version(c)?)).unwrap();
    assert_eq!(v, migrate::latest_version());
    assert!(!store.read(graph::read_graph).unwrap().entities.is_empty());
}

/// A database deleted under an open store (`rm memory.db*`, or the whole project
/// removed and made again) is noticed before the next write is acknowledged: that
/// write lands in a fresh file at the path, never in the deleted one.
#[test]
fn a_write_after_the_file_was_deleted_lands_in_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    std::fs::create_dir(&project).unwrap();
    let file = DbFile::in_project(&project);
    let store = Store::open_file(&file).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("before", "t", &[])])).unwrap();

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(open::suffixed(file.path(), suffix));
    }
    let created = store.write(move |c| graph::create_entities(c, &[entity("after", "t", &[])])).unwrap();
    assert_eq!(created.len(), 1);
    let on_disk = Connection::open(file.path()).unwrap();
    let names: Vec<String> = on_disk
        .prepare("SELECT name FROM entities")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, ["after"], "the acknowledged write is in the file at the path");
    let names: Vec<String> = store.read(graph::read_graph).unwrap().entities.into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["after"], "reads follow the new file");

    // The whole project removed and made again (a re-clone): `.claude` comes back private.
    std::fs::remove_dir_all(&project).unwrap();
    std::fs::create_dir(&project).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("recloned", "t", &[])])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(project.join(".claude")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // Gone for good: the write fails, naming the file, instead of being acknowledged.
    std::fs::remove_dir_all(&project).unwrap();
    let err = store.write(move |c| graph::create_entities(c, &[entity("lost", "t", &[])])).unwrap_err();
    assert!(matches!(err, StoreError::Lost { .. }), "{err}");
    assert!(err.to_string().contains("memory.db"), "{err}");
}

/// Closing joins the background work (the idle index update, a checkpoint) before the
/// final index update and checkpoint: afterwards the WAL is empty and nothing waits to
/// be indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_joins_background_work_and_leaves_an_empty_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Arc::new(Store::open(&path).unwrap());
    for i in 0..100 {
        let e = [entity(&format!("e{i}"), "t", &["x"])];
        store.write_async(None, move |c| graph::create_entities(c, &e)).await.unwrap();
    }
    store.close().await;
    assert_eq!(std::fs::metadata(open::suffixed(&path, "-wal")).map(|m| m.len()).unwrap_or(0), 0);
    let conn = Connection::open(&path).unwrap();
    let stale: i64 = conn.query_row("SELECT count(*) FROM search_stale", [], |r| r.get(0)).unwrap();
    assert_eq!(stale, 0);
}

/// Under writes that never pause, a commit lands during every background checkpoint,
/// and SQLite starts the WAL over only when a write begins with every frame copied: so
/// the WAL kept growing until SQLite's automatic checkpoint ran inside a commit. The
/// combiner's finishing step, between two batches, is what lets it start over.
#[test]
fn the_wal_starts_over_under_writes_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(&path).unwrap();
    let big = "x".repeat(3000); // a page of its own, in the table and in its index
    let fill = |round: usize| {
        store.with_writer(|c| {
            let tx = c.transaction().unwrap();
            let entities: Vec<Entity> = (0..3000).map(|i| entity(&format!("{round}-{i}"), "t", &[&big])).collect();
            graph::create_entities(&tx, &entities).unwrap();
            tx.commit().unwrap();
        })
    };
    let wal_bytes = || std::fs::metadata(open::suffixed(&path, "-wal")).unwrap().len();
    // The WAL's last frame: a checkpoint reports it (and copies, which does not matter
    // here: it is the last thing each half asks).
    let wal_frames =
        || -> i64 { store.with_writer(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))).unwrap() };
    // Another connection commits while the background checkpoint runs: it begins
    // before the checkpoint and commits after it. (It stays open: closing it would
    // checkpoint everything, and so would its automatic checkpoint.)
    let other = Connection::open(&path).unwrap();
    other.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    let commit_during_the_checkpoint = |name: &str| {
        other.execute("BEGIN IMMEDIATE", []).unwrap();
        other.execute("INSERT INTO entities (name, entity_type) VALUES (?1, 't')", [name]).unwrap();
        store.checkpoint_in_background(); // outside a runtime it runs on this thread
        other.execute("COMMIT", []).unwrap();
    };

    // Without the finishing step the next write appends to the long WAL.
    fill(0);
    assert!(wal_bytes() > 4096 * 4120, "a WAL past the finishing length: {} bytes", wal_bytes());
    commit_during_the_checkpoint("outside-1");
    assert!(store.upkeep.checkpoint_to_finish.swap(false, Ordering::SeqCst), "the combiner is asked to finish");
    store.with_writer(|c| graph::create_entities(c, &[entity("appended", "t", &[])])).unwrap();
    let appended = wal_frames();
    assert!(appended > 4096, "the WAL went on: {appended} frames");

    // With it (the combiner runs it before the write's batch) the write starts it over.
    fill(1);
    commit_during_the_checkpoint("outside-2");
    assert!(store.upkeep.checkpoint_to_finish.load(Ordering::SeqCst));
    store.write(|c| graph::create_entities(c, &[entity("started-over", "t", &[])])).unwrap();
    assert!(!store.upkeep.checkpoint_to_finish.load(Ordering::SeqCst), "finished");
    let frames = wal_frames();
    assert!(frames < 100, "the WAL started over: {frames} frames");
    let names = store.read(graph::read_graph).unwrap().entities.len();
    assert_eq!(names, 2 * 3000 + 4, "nothing was lost on the way");
}
