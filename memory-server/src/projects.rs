//! The projects this daemon has served, for the graph browser's list (SPEC 2.11): the
//! global database first, then every project a request has named, each with its
//! database, the time of its last write and its last counts. Kept in
//! `<runtime dir>/memory-projects.json` (the global runtime directory of SPEC 5), so the
//! list survives restarts: written a moment after it changes (never on the request or
//! commit path), atomically, merged with what another daemon of the same user wrote
//! there meanwhile, and once more at shutdown.
//!
//! The last write is the time of the last change a store announced (every commit that
//! changed rows, by this daemon or, while someone watches the project, by another
//! process); counts are taken by the browser when it lists the projects and kept here,
//! so listing does not open every project's database each time.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::store::graph::browse::Counts;

/// The file's name in the runtime directory.
pub const FILE_NAME: &str = "memory-projects.json";

/// Projects kept at most: past it the one unused longest is forgotten (never the
/// global database), so a daemon that runs for years keeps a small file.
pub const MAX_PROJECTS: usize = 1_000;

/// How long after a change the file is written: changes of a busy moment (every commit
/// changes a last-write time) are written together, so a daemon that is written to all
/// day rewrites (and syncs) this small file every few seconds, not at every commit. A
/// crash loses at most this much of the list; a shutdown saves it.
const WRITE_DELAY: Duration = Duration::from_secs(5);

/// The file's format version.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProjectsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a projects list this daemon can read: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

/// One project (or the global database) as the list keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The project directory (canonical); `None` for the global database.
    pub project: Option<PathBuf>,
    /// Where its memory is.
    pub db: PathBuf,
    /// When this daemon first served it (Unix milliseconds).
    pub added: u64,
    /// The last write seen (Unix milliseconds).
    #[serde(default)]
    pub last_write: Option<u64>,
    /// The rows it held when last counted, and when that was.
    #[serde(default)]
    pub counts: Option<Counts>,
    #[serde(default)]
    pub counted_at: Option<u64>,
    /// A change was announced since the counts were taken (not kept in the file: a
    /// restarted daemon compares the file's time with `counted_at` instead).
    #[serde(skip)]
    pub changed_since_count: bool,
}

impl Entry {
    fn new(project: Option<PathBuf>, db: PathBuf) -> Entry {
        Entry {
            project,
            db,
            added: now_ms(),
            last_write: None,
            counts: None,
            counted_at: None,
            changed_since_count: false,
        }
    }

    /// When it was last of use: the later of its last write and its addition.
    fn recency(&self) -> u64 {
        self.last_write.unwrap_or(0).max(self.added)
    }
}

/// The file as read (its `version` is 1, the only one so far).
#[derive(Debug, Default, Deserialize)]
struct FileContents {
    projects: Vec<Entry>,
}

/// The file as written.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    projects: &'a [Entry],
}

pub struct ProjectsList {
    /// Where the list is kept; `None` when there is no runtime directory to keep it in.
    file: Option<PathBuf>,
    global_db: PathBuf,
    entries: Mutex<Entries>,
    /// Woken when the file needs writing.
    dirty: Notify,
    /// Bumped on every change to the list (a project added, a write, new counts): the
    /// browser's projects page listens to it.
    changed: watch::Sender<u64>,
}

/// The entries in the order they were added, the global database first, and where each
/// database's entry is.
#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    by_db: HashMap<PathBuf, usize>,
    unsaved: bool,
}

impl Entries {
    fn from_list(list: Vec<Entry>) -> Entries {
        let by_db = list.iter().enumerate().map(|(i, e)| (e.db.clone(), i)).collect();
        Entries { list, by_db, unsaved: false }
    }

    /// Forgets the entry unused longest (never the global database, at index 0) until at
    /// most `max` are left.
    fn bound(&mut self, max: usize) {
        while self.list.len() > max.max(1) {
            let Some((oldest, _)) = self.list.iter().enumerate().skip(1).min_by_key(|(_, e)| e.recency()) else {
                return;
            };
            self.list.remove(oldest);
            *self = Entries { unsaved: true, ..Entries::from_list(std::mem::take(&mut self.list)) };
        }
    }
}

impl ProjectsList {
    /// The list kept in `runtime_dir` (read now; a missing file is an empty list, an
    /// unreadable one is logged and started afresh), with `global_db` first. Without a
    /// runtime directory the list lives in memory only.
    pub fn load(runtime_dir: Option<&Path>, global_db: &Path) -> ProjectsList {
        let file = runtime_dir.map(|d| d.join(FILE_NAME));
        let stored = match &file {
            Some(path) => read_file(path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the graph browser's projects list could not be read; starting a new one");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let list = ProjectsList {
            file,
            global_db: global_db.to_owned(),
            entries: Mutex::new(Entries::default()),
            dirty: Notify::new(),
            changed: watch::channel(0).0,
        };
        *list.lock() = Entries::from_list(list.with_global_first(stored));
        list
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `stored` with this daemon's global database first: another global database (the
    /// list of a daemon that ran with another `MEMORY_DB_PATH`) is not a project of ours.
    fn with_global_first(&self, stored: Vec<Entry>) -> Vec<Entry> {
        let mut global = None;
        let mut projects = Vec::with_capacity(stored.len() + 1);
        for entry in stored {
            match (&entry.project, entry.db == self.global_db) {
                (None, true) => global = Some(entry),
                (None, false) => {}
                (Some(_), _) => projects.push(entry),
            }
        }
        let global = global.unwrap_or_else(|| Entry::new(None, self.global_db.clone()));
        std::iter::once(global).chain(projects).collect()
    }

    /// Notes that `project`'s memory (in `db`) was served. On every request that opens a
    /// project's store: a lookup, and only a new project changes anything.
    pub fn note_served(&self, project: &Path, db: &Path) {
        let mut entries = self.lock();
        if entries.by_db.contains_key(db) {
            return;
        }
        let index = entries.list.len();
        entries.list.push(Entry::new(Some(project.to_owned()), db.to_owned()));
        entries.by_db.insert(db.to_owned(), index);
        entries.bound(MAX_PROJECTS);
        entries.unsaved = true;
        drop(entries);
        self.touched();
    }

    /// Notes a change announced by the store of `db` (see `Store::announce`): on the
    /// commit path, so a lookup and a few stores, nothing more.
    pub fn note_write(&self, db: &Path) {
        let mut entries = self.lock();
        let Some(&i) = entries.by_db.get(db) else { return };
        let entry = &mut entries.list[i];
        entry.last_write = Some(now_ms());
        entry.changed_since_count = true;
        entries.unsaved = true;
        drop(entries);
        self.touched();
    }

    /// Keeps the counts just taken of `db`'s database. Counts that differ from the last
    /// ones without a change announced since come from a write this daemon did not see
    /// (another process, while nobody watched): its time is taken to be `written`.
    pub fn set_counts(&self, db: &Path, counts: Counts, written: Option<u64>) {
        let mut entries = self.lock();
        let Some(&i) = entries.by_db.get(db) else { return };
        let entry = &mut entries.list[i];
        if entry.counts == Some(counts) && !entry.changed_since_count {
            return;
        }
        if entry.counts.is_some_and(|before| before != counts) && !entry.changed_since_count {
            entry.last_write = entry.last_write.max(written);
        }
        entry.counts = Some(counts);
        entry.counted_at = Some(now_ms());
        entry.changed_since_count = false;
        entries.unsaved = true;
        drop(entries);
        self.touched();
    }

    /// The entries, the global database first.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().list.clone()
    }

    /// The entry of `db`, if listed.
    pub fn entry(&self, db: &Path) -> Option<Entry> {
        let entries = self.lock();
        entries.by_db.get(db).map(|&i| entries.list[i].clone())
    }

    /// A receiver that sees a new value whenever the list changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn touched(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        self.dirty.notify_one();
    }

    /// Writes the list whenever it changed, [`WRITE_DELAY`] after the change, until
    /// `stop` (the daemon writes it once more after its last request, see
    /// [`ProjectsList::save_logged`]). Run it as a task of its own.
    pub async fn keep_saved(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                () = stop.cancelled() => break,
            }
            tokio::select! {
                () = tokio::time::sleep(WRITE_DELAY) => {}
                () = stop.cancelled() => break,
            }
            let list = self.clone();
            let _ = tokio::task::spawn_blocking(move || list.save_logged()).await;
        }
    }

    /// [`ProjectsList::save`], a failure logged. Blocks.
    pub fn save_logged(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "could not write the graph browser's projects list");
        }
    }

    /// Writes the list if it changed since the last write: under an exclusive lock on
    /// `<file>.lock`, merged with the file as it is now (another daemon of this user may
    /// have written it), into a temporary file renamed over it; what the other daemon
    /// added is taken in. The list itself is locked only to copy and to merge, never
    /// during the file's I/O (a commit's `note_write` waits for that lock). Blocks.
    pub fn save(&self) -> Result<(), ProjectsError> {
        let Some(path) = &self.file else { return Ok(()) };
        let ours = {
            let mut entries = self.lock();
            if !entries.unsaved {
                return Ok(());
            }
            entries.unsaved = false;
            entries.list.clone()
        };
        let written = self.write_merged(path, ours);
        let mut entries = self.lock();
        match written {
            Ok(on_file) => {
                let unsaved = entries.unsaved;
                let current = std::mem::take(&mut entries.list);
                *entries = Entries::from_list(self.with_global_first(merge(current, on_file)));
                entries.bound(MAX_PROJECTS);
                entries.unsaved |= unsaved;
                Ok(())
            }
            Err(e) => {
                entries.unsaved = true;
                Err(e)
            }
        }
    }

    /// Merges `ours` into the file and returns what it now holds.
    fn write_merged(&self, path: &Path, ours: Vec<Entry>) -> Result<Vec<Entry>, ProjectsError> {
        let io = |source| ProjectsError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(io)?;
        }
        let lock_path = path.with_extension("json.lock");
        let lock = private_file(&lock_path).map_err(|source| ProjectsError::Io { path: lock_path.clone(), source })?;
        lock.lock().map_err(io)?;
        let theirs = read_file(path).unwrap_or_default();
        let mut merged = Entries::from_list(self.with_global_first(merge(ours, theirs)));
        merged.bound(MAX_PROJECTS);
        let text = serde_json::to_vec_pretty(&FileOut { version: VERSION, projects: &merged.list })
            .map_err(|source| ProjectsError::Format { path: path.to_owned(), source })?;
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let written = private_file(&tmp).and_then(|mut f| {
            f.set_len(0)?;
            f.write_all(&text)?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
        written.and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        Ok(merged.list)
    }
}

/// Ours merged with what the file holds now: every database either lists, ours first in
/// our order; for one both list, the earlier addition, the later write and the later
/// counts.
fn merge(ours: Vec<Entry>, theirs: Vec<Entry>) -> Vec<Entry> {
    let mut merged = ours;
    let index: HashMap<PathBuf, usize> = merged.iter().enumerate().map(|(i, e)| (e.db.clone(), i)).collect();
    for t in theirs {
        match index.get(&t.db) {
            Some(&i) => {
                let o = &mut merged[i];
                o.added = o.added.min(t.added);
                o.last_write = o.last_write.max(t.last_write);
                if t.counted_at > o.counted_at && !o.changed_since_count {
                    o.counts = t.counts;
                    o.counted_at = t.counted_at;
                }
            }
            None => merged.push(t),
        }
    }
    merged
}

fn read_file(path: &Path) -> Result<Vec<Entry>, ProjectsError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ProjectsError::Io { path: path.to_owned(), source }),
    };
    let contents: FileContents =
        serde_json::from_slice(&text).map_err(|source| ProjectsError::Format { path: path.to_owned(), source })?;
    Ok(contents.projects)
}

/// Opens (creating, mode 0600 whatever the umask) a file of ours; never through a link.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The runtime directory, created 0700 when missing (SPEC 5).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(entities: u64) -> Counts {
        Counts { entities, relations: 0, observations: 0 }
    }

    #[test]
    fn the_global_database_comes_first_and_projects_are_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let list = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        list.note_served(Path::new("/p/a"), Path::new("/p/a/.claude/memory.db"));
        list.note_served(Path::new("/p/b"), Path::new("/p/b/.claude/memory.db"));
        list.note_served(Path::new("/p/a"), Path::new("/p/a/.claude/memory.db"));
        let names: Vec<Option<PathBuf>> = list.entries().into_iter().map(|e| e.project).collect();
        assert_eq!(names, [None, Some("/p/a".into()), Some("/p/b".into())]);
    }

    #[test]
    fn the_list_survives_a_restart_and_keeps_writes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Path::new("/p/a/.claude/memory.db");
        {
            let list = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
            list.note_served(Path::new("/p/a"), db);
            list.note_write(db);
            list.set_counts(db, counts(7), None);
            list.save().unwrap();
        }
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let list = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        let entry = list.entry(db).unwrap();
        assert_eq!(entry.project.as_deref(), Some(Path::new("/p/a")));
        assert!(entry.last_write.is_some());
        assert_eq!(entry.counts, Some(counts(7)));
        assert!(!entry.changed_since_count);
        // Another global database's entry is not carried over.
        let other = ProjectsList::load(Some(dir.path()), Path::new("/other/memory.db"));
        let globals: Vec<PathBuf> = other.entries().into_iter().filter(|e| e.project.is_none()).map(|e| e.db).collect();
        assert_eq!(globals, [PathBuf::from("/other/memory.db")]);
    }

    #[test]
    fn two_daemons_writing_the_same_file_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let one = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        let two = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        one.note_served(Path::new("/p/a"), Path::new("/a.db"));
        two.note_served(Path::new("/p/b"), Path::new("/b.db"));
        one.save().unwrap();
        two.save().unwrap();
        let read = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        let dbs: Vec<PathBuf> = read.entries().into_iter().map(|e| e.db).collect();
        assert_eq!(dbs, [PathBuf::from("/g/memory.db"), "/b.db".into(), "/a.db".into()]);
    }

    #[test]
    fn counts_that_changed_unseen_date_the_write_from_the_file() {
        let list = ProjectsList::load(None, Path::new("/g/memory.db"));
        let db = Path::new("/g/memory.db");
        list.set_counts(db, counts(1), Some(5));
        assert_eq!(list.entry(db).unwrap().last_write, None, "first counts are no write");
        list.set_counts(db, counts(2), Some(9));
        assert_eq!(list.entry(db).unwrap().last_write, Some(9), "an unseen write");
        list.note_write(db);
        let seen = list.entry(db).unwrap().last_write.unwrap();
        list.set_counts(db, counts(3), Some(10));
        assert_eq!(list.entry(db).unwrap().last_write, Some(seen), "a write we saw keeps its time");
    }

    #[test]
    fn the_list_is_bounded_and_forgets_the_least_recently_used() {
        let mut entries = Entries::from_list(
            std::iter::once(Entry::new(None, "/g".into()))
                .chain((0..5).map(|i| Entry {
                    added: 100 + i,
                    ..Entry::new(Some(format!("/p{i}").into()), format!("/d{i}").into())
                }))
                .collect(),
        );
        entries.list[1].last_write = Some(1_000);
        entries = Entries::from_list(std::mem::take(&mut entries.list));
        entries.bound(3);
        let dbs: Vec<&str> = entries.list.iter().map(|e| e.db.to_str().unwrap()).collect();
        assert_eq!(dbs, ["/g", "/d0", "/d4"]);
        assert_eq!(entries.by_db[Path::new("/d4")], 2);
    }

    #[test]
    fn an_unreadable_file_starts_a_new_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "not json").unwrap();
        let list = ProjectsList::load(Some(dir.path()), Path::new("/g/memory.db"));
        assert_eq!(list.entries().len(), 1);
    }
}
