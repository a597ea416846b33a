//! The daemon against hostile or careless files (SPEC 2.3, 2.4), on the real binary:
//! symbolic links and other users' files are refused and nothing is created at a link's
//! target; what the daemon creates is private whatever its umask; a database deleted
//! under it is replaced before the next write is acknowledged; a project it cannot write
//! keeps a database of its own in the data directory, never mixed and never split; a
//! foreign SQLite file is refused unchanged; a FIFO is refused without hanging; and a
//! project whose open failed works once the cause is fixed.
//!
//! Acting as another user needs root (CI runs as root): those tests say so and fail
//! otherwise rather than pass without checking.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use e2e::{Daemon, Http, PATIENCE, TestEnv, entity_names};
use serde_json::{Value, json};

const NOBODY: u32 = 65534;

fn entities(names: &[&str]) -> Value {
    json!({ "entities": names.iter().map(|n| json!({"name": n, "entityType": "test", "observations": []})).collect::<Vec<_>>() })
}

/// A tool call that must fail: its result's text (the error the model sees).
async fn tool_error(http: &Http, name: &str, arguments: Value) -> String {
    let result = http.call_tool(name, arguments).await;
    assert_eq!(result["isError"], json!(true), "{name} should fail: {result}");
    result["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

async fn create(http: &Http, names: &[&str]) {
    let result = http.call_tool("create_entities", entities(names)).await;
    assert_ne!(result["isError"], json!(true), "create {names:?}: {result}");
}

fn db_entity_names(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut stmt = conn.prepare("SELECT name FROM entities ORDER BY rowid").unwrap();
    stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o777
}

fn require_root(what: &str) {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(root, "{what} needs root to act as another user (CI runs the suite as root)");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// The path's file names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// Links, owners, modes

#[tokio::test]
async fn links_are_never_followed_and_nothing_is_created_at_their_targets() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let victim = env.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let keys = victim.join("authorized_keys");
    let key_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHacker attacker@evil";
    let add_key = json!({ "entities": [{ "name": "k", "entityType": "t", "observations": [key_line] }] });

    // `.claude/memory.db` a dangling link to the victim's authorized_keys.
    let p1 = env.project("db-link");
    std::fs::create_dir(p1.join(".claude")).unwrap();
    std::os::unix::fs::symlink(&keys, p1.join(".claude/memory.db")).unwrap();
    let msg = tool_error(&Http::new(daemon.url()).with_project(&p1), "create_entities", add_key.clone()).await;
    assert!(msg.contains(".claude/memory.db") && msg.contains("symbolic link"), "{msg}");
    assert!(!keys.exists(), "a file was created at the link's target");

    // `.claude` a link to another directory.
    let p2 = env.project("dir-link");
    std::os::unix::fs::symlink(&victim, p2.join(".claude")).unwrap();
    let msg = tool_error(&Http::new(daemon.url()).with_project(&p2), "create_entities", add_key.clone()).await;
    assert!(msg.contains(".claude") && msg.contains("symbolic link"), "{msg}");
    assert_eq!(listing(&victim), Vec::<String>::new(), "nothing was created in the linked directory");

    // The WAL a dangling link (SQLite would create it at the target).
    let p3 = env.project("wal-link");
    std::fs::create_dir(p3.join(".claude")).unwrap();
    std::os::unix::fs::symlink(&keys, p3.join(".claude/memory.db-wal")).unwrap();
    let msg = tool_error(&Http::new(daemon.url()).with_project(&p3), "create_entities", add_key.clone()).await;
    assert!(msg.contains("memory.db-wal") && msg.contains("symbolic link"), "{msg}");
    assert!(!keys.exists(), "a file was created at the WAL link's target");

    // Refused projects mixed nothing into the global memory, and the daemon serves on.
    let global = Http::new(daemon.url());
    assert_eq!(entity_names(&global.read_graph().await), Vec::<String>::new());
    let fine = env.project("fine");
    create(&Http::new(daemon.url()).with_project(&fine), &["served"]).await;
    assert_eq!(db_entity_names(&fine.join(".claude/memory.db")), ["served"]);
}

#[tokio::test]
async fn another_users_directory_claude_or_database_is_refused() {
    require_root("refusing another user's files");
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);

    let theirs = env.project("their-project");
    chown(&theirs, NOBODY);
    let msg = tool_error(&Http::new(daemon.url()).with_project(&theirs), "create_entities", entities(&["x"])).await;
    assert!(msg.contains("their-project") && msg.contains(&format!("owned by uid {NOBODY}")), "{msg}");
    assert!(!theirs.join(".claude").exists());

    let their_claude = env.project("their-claude");
    std::fs::create_dir(their_claude.join(".claude")).unwrap();
    chown(&their_claude.join(".claude"), NOBODY);
    let msg =
        tool_error(&Http::new(daemon.url()).with_project(&their_claude), "create_entities", entities(&["x"])).await;
    assert!(msg.contains(".claude") && msg.contains("owned by uid"), "{msg}");
    assert_eq!(listing(&their_claude.join(".claude")), Vec::<String>::new());

    let their_db = env.project("their-db");
    std::fs::create_dir(their_db.join(".claude")).unwrap();
    std::fs::write(their_db.join(".claude/memory.db"), b"").unwrap();
    chown(&their_db.join(".claude/memory.db"), NOBODY);
    let msg = tool_error(&Http::new(daemon.url()).with_project(&their_db), "create_entities", entities(&["x"])).await;
    assert!(msg.contains("memory.db") && msg.contains("owned by uid"), "{msg}");
    assert_eq!(std::fs::metadata(their_db.join(".claude/memory.db")).unwrap().len(), 0, "their file is untouched");
}

#[tokio::test]
async fn what_the_daemon_creates_is_private_whatever_its_umask() {
    let env = TestEnv::new();
    let daemon = Daemon::start_with(&env, &[], |cmd| {
        // SAFETY: umask(2) in the child before exec; async-signal-safe, cannot fail.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    let project = env.project("private");
    create(&Http::new(daemon.url()).with_project(&project), &["a"]).await;
    create(&Http::new(daemon.url()), &["global"]).await;
    let claude = project.join(".claude");
    assert_eq!(mode(&claude), 0o700);
    for name in ["memory.db", "memory.db-wal", "memory.db-shm"] {
        assert_eq!(mode(&claude.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&env.home().join(".claude")), 0o700);
    assert_eq!(mode(&env.global_db()), 0o600);
}

// ---------------------------------------------------------------------------------------
// Deleted and replaced files

#[tokio::test]
async fn a_deleted_database_is_replaced_before_the_next_write_is_acknowledged() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env, &[]);
    let project = env.project("deleted");
    let http = Http::new(daemon.url()).with_project(&project);
    create(&http, &["before"]).await;

    let db = project.join(".claude/memory.db");
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    create(&http, &["after-rm"]).await;
    assert_eq!(entity_names(&http.read_graph().await), ["after-rm"]);

    // A re-clone: the whole project removed and made again.
    std::fs::remove_dir_all(&project).unwrap();
    std::fs::create_dir(&project).unwrap();
    create(&http, &["after-reclone"]).await;

    // kill -9: nothing checkpointed, nothing flushed by a clean exit. What was
    // acknowledged is in the file at the path.
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(PATIENCE).expect("the daemon dies");
    assert_eq!(db_entity_names(&db), ["after-reclone"]);
    assert_eq!(mode(&project.join(".claude")), 0o700);
    let daemon = Daemon::start(&env, &[]);
    let http = Http::new(daemon.url()).with_project(&project);
    assert_eq!(entity_names(&http.read_graph().await), ["after-reclone"]);
}

// ---------------------------------------------------------------------------------------
// Projects the daemon cannot write

/// Starts the daemon as `nobody` (with a HOME it owns), so that directory modes bind
/// it; with a token, so the test (root) may talk to it.
fn daemon_as_nobody(env: &TestEnv) -> Daemon {
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(env.dir.path().join("projects")).unwrap();
    std::fs::set_permissions(env.dir.path().join("projects"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [env.home(), env.runtime()] {
        chown(&dir, NOBODY);
    }
    Daemon::start_with_token(env, "files-token", &[], |cmd| {
        cmd.uid(NOBODY).gid(NOBODY);
    })
}

fn kept_db(env: &TestEnv, project: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(project).unwrap();
    const SAFE: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');
    let escaped = percent_encoding::utf8_percent_encode(canonical.to_str().unwrap(), SAFE).to_string();
    env.home().join(".claude/projects-memory").join(format!("{escaped}.db"))
}

#[tokio::test]
async fn an_unwritable_project_keeps_its_own_database_and_never_splits() {
    require_root("running the daemon as another user");
    let env = TestEnv::new();
    let daemon = daemon_as_nobody(&env);
    let client = |project: Option<&Path>| {
        let http = Http::new(daemon.url()).with_token("files-token");
        match project {
            Some(p) => http.with_project(p),
            None => http,
        }
    };

    let read_only = env.project("read-only");
    let other = env.project("other-read-only");
    for p in [&read_only, &other] {
        chown(p, NOBODY);
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let kept = kept_db(&env, &read_only);

    // The first answer says where the memory is.
    let mut session = client(Some(&read_only));
    let init = session.initialize("2025-11-25").await;
    let instructions = init.body["result"]["instructions"].as_str().unwrap_or_default().to_owned();
    assert!(instructions.contains(&kept.display().to_string()), "initialize names the database: {}", init.text);

    create(&session, &["kept"]).await;
    create(&client(Some(&other)), &["elsewhere"]).await;
    create(&client(None), &["global"]).await;
    assert_eq!(entity_names(&client(Some(&read_only)).read_graph().await), ["kept"]);
    assert_eq!(entity_names(&client(Some(&other)).read_graph().await), ["elsewhere"], "projects are not mixed");
    assert_eq!(entity_names(&client(None).read_graph().await), ["global"], "nor mixed into the global memory");
    assert_eq!(db_entity_names(&kept), ["kept"]);
    assert_eq!(mode(&kept), 0o600);
    assert_eq!(mode(kept.parent().unwrap()), 0o700);
    assert!(!read_only.join(".claude").exists(), "nothing was created in the read-only project");
    let log = daemon.log_text();
    assert!(log.contains("cannot be written") && log.contains("read-only"), "a log line names the project:\n{log}");

    // Writable later: the project stays with its database rather than splitting.
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
    create(&client(Some(&read_only)), &["still-kept"]).await;
    assert_eq!(db_entity_names(&kept), ["kept", "still-kept"]);
    assert!(!read_only.join(".claude").exists(), "the project did not split into a second file");

    // A project of another user (root, here) is refused, not quietly moved.
    let roots = env.project("roots");
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o555)).unwrap();
    let msg = tool_error(&client(Some(&roots)), "create_entities", entities(&["x"])).await;
    assert!(msg.contains("roots") && msg.contains("owned by uid 0"), "{msg}");
    // Ours, but its `.claude` is another user's (and not writable by us): refused too.
    let foreign_claude = env.project("foreign-claude");
    chown(&foreign_claude, NOBODY);
    std::fs::create_dir(foreign_claude.join(".claude")).unwrap();
    let msg = tool_error(&client(Some(&foreign_claude)), "create_entities", entities(&["x"])).await;
    assert!(msg.contains(".claude") && msg.contains("owned by uid 0"), "{msg}");
    assert!(!kept_db(&env, &foreign_claude).exists(), "not quietly moved to the data directory");
    for p in [&read_only, &other, &roots] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Foreign files, special files, retries

#[tokio::test]
async fn a_foreign_sqlite_file_is_refused_unchanged_and_retried_once_fixed() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    for (name, ddl, table) in [
        (
            "app",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (1, 'a@b.c');",
            "users",
        ),
        ("clash", "CREATE TABLE entities (id INTEGER PRIMARY KEY, label TEXT);", "entities"),
    ] {
        let project = env.project(name);
        std::fs::create_dir(project.join(".claude")).unwrap();
        let db = project.join(".claude/memory.db");
        rusqlite::Connection::open(&db).unwrap().execute_batch(ddl).unwrap();
        let before = std::fs::read(&db).unwrap();
        let http = Http::new(daemon.url()).with_project(&project);
        let msg = tool_error(&http, "create_entities", entities(&["x"])).await;
        assert!(msg.contains(".claude/memory.db") && msg.contains(&format!("`{table}`")), "{name}: {msg}");
        assert_eq!(std::fs::read(&db).unwrap(), before, "{name}: the file changed");
        assert_eq!(listing(&project.join(".claude")), ["memory.db"], "{name}: side files appeared");

        // The cause fixed (the file moved away): the next request opens a fresh database.
        std::fs::rename(&db, project.join("moved.db")).unwrap();
        create(&http, &["fixed"]).await;
        assert_eq!(db_entity_names(&db), ["fixed"]);
    }
}

/// A `memory.db` that is not a database at all (here: text) fails with the file named,
/// untouched, and works once replaced.
#[tokio::test]
async fn a_file_that_is_not_a_database_is_named_and_retried() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("garbage");
    std::fs::create_dir(project.join(".claude")).unwrap();
    let db = project.join(".claude/memory.db");
    let garbage = "this is not a SQLite database, just some text that happens to sit here\n".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let http = Http::new(daemon.url()).with_project(&project);
    let msg = tool_error(&http, "create_entities", entities(&["x"])).await;
    assert!(msg.contains(".claude/memory.db") && msg.contains("not a database"), "{msg}");
    assert_eq!(std::fs::read_to_string(&db).unwrap(), garbage, "the file is untouched");
    std::fs::remove_file(&db).unwrap();
    create(&http, &["replaced"]).await;
    assert_eq!(db_entity_names(&db), ["replaced"]);
}

#[tokio::test]
async fn a_fifo_is_refused_without_hanging() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("fifo");
    std::fs::create_dir(project.join(".claude")).unwrap();
    let fifo = project.join(".claude/memory.db");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let http = Http::new(daemon.url()).with_project(&project);
    let msg = tokio::time::timeout(PATIENCE, tool_error(&http, "read_graph", json!({})))
        .await
        .expect("a FIFO database answered within the bound instead of hanging");
    assert!(msg.contains("FIFO") && msg.contains("memory.db"), "{msg}");
    // Again (a failed open is not cached as a hang either), then fixed.
    let again = tokio::time::timeout(PATIENCE, tool_error(&http, "read_graph", json!({}))).await.expect("answered");
    assert!(again.contains("FIFO"), "{again}");
    std::fs::remove_file(&fifo).unwrap();
    create(&http, &["after-fifo"]).await;
    assert_eq!(entity_names(&http.read_graph().await), ["after-fifo"]);
}
