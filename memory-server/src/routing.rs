//! Per-project routing: the request's project (from `scope`) → where its database lives
//! → the open store (from the registry). A project keeps its memory in
//! `<project>/.claude/memory.db`; one whose directory cannot be written keeps it in a
//! database of its own in the user's data directory, and once it is there it stays
//! there (the file's existence is the memory of that choice), so a project never
//! splits between two files and is never mixed with another one or the global memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::memory::{Memory, MemoryError};
use crate::postgres::Database;
use crate::project::ProjectPath;
use crate::projects::ProjectsList;
use crate::scope::{current_key, current_project};
use crate::store::registry::{StoreLimits, StoreRegistry};
use crate::store::{DbFile, Store, StoreError, effective_uid};

/// The data directory's subdirectory for projects that cannot hold their own memory.
pub const PROJECTS_MEMORY_DIR: &str = "projects-memory";

/// Bytes a kept database's file name may take before its tail becomes a hash.
const MAX_ESCAPED_NAME: usize = 200;

/// Where a project's memory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `<project>/.claude/memory.db`.
    InProject(DbFile),
    /// `<data dir>/projects-memory/<escaped path>.db`: the directory could not be written
    /// when the project was first used.
    Kept(DbFile),
}

impl Placement {
    pub fn file(&self) -> &DbFile {
        match self {
            Placement::InProject(f) | Placement::Kept(f) => f,
        }
    }
}

/// Maps projects to open stores.
pub struct Router {
    stores: StoreRegistry,
    global: DbFile,
    /// `<directory of the global database>/projects-memory`, canonical where it exists
    /// (kept databases are opened without following links).
    kept_dir: PathBuf,
    /// The projects served, for the graph browser (the daemon's; none in stdio mode).
    projects: Option<Arc<ProjectsList>>,
    /// With `--database`: every project's memory is in this PostgreSQL database, keyed
    /// as the request names it, and no SQLite file is opened.
    team: Option<Arc<Database>>,
}

impl Router {
    pub fn new(global_db: PathBuf, limits: StoreLimits) -> Self {
        let data_dir = global_db.parent().map(Path::to_owned).unwrap_or_default();
        let kept_dir = canonical_prefix(&data_dir.join(PROJECTS_MEMORY_DIR));
        Self {
            stores: StoreRegistry::new(limits),
            global: DbFile::configured(global_db),
            kept_dir,
            projects: None,
            team: None,
        }
    }

    /// A router that notes every project it serves, and every change its stores
    /// announce, in `projects` (the daemon's, for the graph browser).
    pub fn with_projects(global_db: PathBuf, limits: StoreLimits, projects: Arc<ProjectsList>) -> Self {
        let noted = projects.clone();
        let stores = StoreRegistry::with_change_hook(limits, Arc::new(move |db: &Path| noted.note_write(db)));
        Self { stores, projects: Some(projects), ..Self::new(global_db, limits) }
    }

    /// A router that keeps every project in the PostgreSQL database `team`.
    pub fn with_database(global_db: PathBuf, limits: StoreLimits, team: Arc<Database>) -> Self {
        Self { team: Some(team), ..Self::new(global_db, limits) }
    }

    /// Whether projects are keys in PostgreSQL (`Mcp-Project-Id`) rather than directories.
    pub fn keeps_projects_by_key(&self) -> bool {
        self.team.is_some()
    }

    /// The PostgreSQL database, with `--database`.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.team.as_ref()
    }

    /// The memory of the current request's project (see `scope`): its SQLite store, or
    /// its project in PostgreSQL.
    pub async fn current_memory(&self) -> Result<Memory, MemoryError> {
        match &self.team {
            Some(db) => Ok(Memory::Postgres(db.project(&current_key().unwrap_or_default()).await?)),
            None => Ok(Memory::Sqlite(self.current_store().await?)),
        }
    }

    /// The projects served, when this router keeps them.
    pub fn projects(&self) -> Option<&Arc<ProjectsList>> {
        self.projects.as_ref()
    }

    pub fn global_db(&self) -> &Path {
        self.global.path()
    }

    pub fn registry(&self) -> &StoreRegistry {
        &self.stores
    }

    /// The store of the current request's project (see `scope`).
    pub async fn current_store(&self) -> Result<Arc<Store>, StoreError> {
        self.store_for(current_project().as_ref()).await
    }

    /// The store for `project`, or the global one.
    pub async fn store_for(&self, project: Option<&ProjectPath>) -> Result<Arc<Store>, StoreError> {
        let Some(project) = project else {
            return self.stores.get(&self.global).await;
        };
        let store = self.project_store(project).await?;
        if let Some(projects) = &self.projects {
            projects.note_served(project.as_path(), store.path());
        }
        Ok(store)
    }

    async fn project_store(&self, project: &ProjectPath) -> Result<Arc<Store>, StoreError> {
        match self.placement(project) {
            Placement::Kept(file) => self.stores.get(&file).await,
            Placement::InProject(file) => match self.stores.get(&file).await {
                // Refused by the OS although the directory looked writable (an ACL, a
                // read-only mount seen late): nothing was created there, so nothing splits.
                Err(e) if e.is_permission() && file.path().symlink_metadata().is_err() => {
                    let kept = self.kept_file(project);
                    log_kept(project, &kept);
                    self.stores.get(&kept).await
                }
                other => other,
            },
        }
    }

    /// Receives the change notices of `project` (or the global database), whether or
    /// not its store is open.
    pub fn subscribe(&self, project: Option<&ProjectPath>) -> tokio::sync::broadcast::Receiver<()> {
        self.stores.subscribe(&self.file_for(project))
    }

    /// Where the memory of `project` (or the global one) lives; nothing is created.
    pub fn file_for(&self, project: Option<&ProjectPath>) -> DbFile {
        match project {
            Some(project) => self.placement(project).file().clone(),
            None => self.global.clone(),
        }
    }

    /// Where `project`'s memory lives (a few `lstat`s; nothing is created).
    pub fn placement(&self, project: &ProjectPath) -> Placement {
        let kept = self.kept_file(project);
        if kept.path().symlink_metadata().is_ok() {
            return Placement::Kept(kept);
        }
        let own = DbFile::in_project(project.as_path());
        // The usual case, on every request: the project has its database. Whatever else
        // is true of the directory, that file is the memory (opening it checks it).
        if own.path().symlink_metadata().is_ok() {
            return Placement::InProject(own);
        }
        let claude = project.as_path().join(".claude");
        let claude_meta = claude.symlink_metadata().ok();
        // What another user owns, or a link, is refused when the store opens (it could
        // redirect the database), not quietly moved to the data directory.
        let suspect = !owned_by_us(project.as_path())
            || claude_meta.as_ref().is_some_and(|m| m.file_type().is_symlink() || !is_ours(m));
        let usable = suspect || (writable(project.as_path()) && (claude_meta.is_none() || writable(&claude)));
        if usable {
            Placement::InProject(own)
        } else {
            log_kept(project, &kept);
            Placement::Kept(kept)
        }
    }

    /// A sentence for the client when its project's memory is not in the project
    /// (`initialize`'s `instructions`), so nobody looks for it in the wrong place.
    pub fn placement_note(&self, project: &ProjectPath) -> Option<String> {
        match self.placement(project) {
            Placement::InProject(_) => None,
            Placement::Kept(file) => Some(format!(
                "This project's directory ({}) cannot be written by memory-server, so its memory is kept in {}.",
                project.as_path().display(),
                file.path().display()
            )),
        }
    }

    fn kept_file(&self, project: &ProjectPath) -> DbFile {
        DbFile::private(self.kept_dir.join(kept_name(project.as_path())))
    }
}

fn log_kept(project: &ProjectPath, kept: &DbFile) {
    tracing::info!(
        project = %project.as_path().display(),
        db = %kept.path().display(),
        "the project directory cannot be written; its memory is kept in the data directory"
    );
}

/// Characters kept as they are in a kept database's name; everything else (`/` above
/// all) is percent-encoded, so different paths never share a name.
const NAME_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// `<escaped path>.db`; a name too long for the file system keeps its start and ends
/// in the SHA-256 of the whole path (`~` never occurs in an escaped name).
fn kept_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let escaped = percent_encoding::percent_encode(bytes, NAME_SAFE).to_string();
    if escaped.len() <= MAX_ESCAPED_NAME {
        return format!("{escaped}.db");
    }
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}~{hex}.db", &escaped[..MAX_ESCAPED_NAME - 70])
}

/// `path` with its longest existing prefix canonicalized (links resolved), so a file
/// below it can be opened without following links.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p: PathBuf, part| p.join(part));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

fn owned_by_us(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| is_ours(&m))
}

fn is_ours(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == effective_uid()
}

/// Whether this process may create files in `dir` (`access(2)`, which knows about
/// read-only mounts and root).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) with a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names_are_distinct_and_fit_a_file_name() {
        let a = kept_name(Path::new("/a-b/c"));
        let b = kept_name(Path::new("/a/b-c"));
        assert_ne!(a, b);
        assert_eq!(a, "%2Fa-b%2Fc.db");
        let long = format!("/{}", "x".repeat(300));
        let longer = format!("{long}y");
        let (n1, n2) = (kept_name(Path::new(&long)), kept_name(Path::new(&longer)));
        assert!(n1.len() <= 255 && n2.len() <= 255);
        assert_ne!(n1, n2);
    }

    #[test]
    fn canonical_prefix_resolves_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let p = canonical_prefix(&link.join("missing/deeper"));
        assert_eq!(p, std::fs::canonicalize(dir.path()).unwrap().join("missing/deeper"));
    }
}
