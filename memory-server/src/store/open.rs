//! Which files a store may open, checked before SQLite touches anything: no symbolic
//! links for a project's `.claude` or database files, nothing owned by another user,
//! no FIFOs or devices (opening one would block or read garbage), and what we create
//! is private (directories 0700, files 0600) whatever the umask.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// A database file and the rules it is opened under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbFile {
    path: PathBuf,
    rules: Rules,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Rules {
    /// `<project>/.claude/memory.db`, a path named by a client: the project directory
    /// must be ours, `.claude` and the database files must be ours and no symbolic
    /// links, and no component of the path may be a link when SQLite opens it.
    Project { dir: PathBuf },
    /// A file in the user's own data directory (a project's database kept outside an
    /// unwritable project): the same rules without a project directory to check.
    Private,
    /// A path the user configured (`MEMORY_DB_PATH`, `--db`): links the user made are
    /// followed, but the file must still be ours and a regular file.
    Configured,
}

impl DbFile {
    /// `<dir>/.claude/memory.db` of a canonical project directory.
    pub fn in_project(dir: &Path) -> DbFile {
        DbFile { path: dir.join(".claude").join("memory.db"), rules: Rules::Project { dir: dir.to_owned() } }
    }

    /// A database in the user's data directory (`path`'s directory is created if missing).
    pub fn private(path: PathBuf) -> DbFile {
        DbFile { path, rules: Rules::Private }
    }

    /// A database at a path the user chose.
    pub fn configured(path: PathBuf) -> DbFile {
        DbFile { path, rules: Rules::Configured }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether SQLite must refuse symbolic links anywhere in the path
    /// (`SQLITE_OPEN_NOFOLLOW`); the paths are canonical, so a link found there was
    /// put in after we checked.
    pub fn no_follow(&self) -> bool {
        !matches!(self.rules, Rules::Configured)
    }

    /// Checks the directories and files, creates what is missing (privately), and
    /// returns the identity of the database file SQLite is about to open.
    pub fn prepare(&self) -> Result<FileIdentity, StoreError> {
        let me = effective_uid();
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        match &self.rules {
            Rules::Project { dir: project } => {
                let meta = lstat(project)?.ok_or_else(|| refused(project, "the project directory does not exist"))?;
                check_owned_dir(project, &meta, me, false)?;
                prepare_dir(dir, me, false)?;
            }
            Rules::Private => prepare_dir(dir, me, true)?,
            Rules::Configured => {
                if !dir.as_os_str().is_empty() && !dir.exists() {
                    create_private_dirs(dir)?;
                }
            }
        }
        for side in [suffixed(&self.path, "-wal"), suffixed(&self.path, "-shm")] {
            if let Some(meta) = lstat(&side)? {
                check_file(&side, &meta, me)?;
            }
        }
        let meta = match self.metadata()? {
            Some(meta) => meta,
            None => create_new_private_file(&self.path)?,
        };
        check_file(&self.path, &meta, me)?;
        Ok(FileIdentity::of(&meta))
    }

    /// The identity of whatever is at the path now (`None`: nothing is).
    pub fn identity_now(&self) -> Option<FileIdentity> {
        std::fs::symlink_metadata(&self.path).ok().map(|m| FileIdentity::of(&m))
    }

    /// The database file's metadata: the link itself under the strict rules (so a link
    /// is seen and refused), its target for a configured path.
    fn metadata(&self) -> Result<Option<Metadata>, StoreError> {
        match self.rules {
            Rules::Configured => match std::fs::metadata(&self.path) {
                Ok(m) => Ok(Some(m)),
                // A dangling link the user made: created through, like any configured path.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(&self.path, e)),
            },
            _ => lstat(&self.path),
        }
    }
}

/// Device and inode of a database file: what tells the file we opened from another one
/// that took its name (deleted and recreated, replaced by a restore, a re-clone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(meta: &Metadata) -> FileIdentity {
        FileIdentity { dev: meta.dev(), ino: meta.ino() }
    }
}

/// `.claude` (or the data directory): created private when missing; otherwise it
/// must be a directory of ours, not a link, and not writable by everyone (anyone
/// could then swap the database for a link).
fn prepare_dir(dir: &Path, me: u32, recursive: bool) -> Result<(), StoreError> {
    match lstat(dir)? {
        Some(meta) => check_owned_dir(dir, &meta, me, true),
        None => {
            if recursive {
                create_private_dirs(dir)
            } else {
                let mut builder = std::fs::DirBuilder::new();
                match builder.mode(0o700).create(dir) {
                    Ok(()) => set_mode(dir, 0o700),
                    // Another request (or process) created it a moment ago: check it.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let meta = lstat(dir)?.ok_or_else(|| refused(dir, "it vanished while being created"))?;
                        check_owned_dir(dir, &meta, me, true)
                    }
                    Err(e) => Err(io_error(dir, e)),
                }
            }
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700 (exactly, whatever the umask).
pub fn create_private_dirs(dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && lstat(at)?.is_none() {
        missing.push(at.to_owned());
        at = at.parent().unwrap_or(Path::new(""));
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => set_mode(d, 0o700)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(d, e)),
        }
    }
    Ok(())
}

fn check_owned_dir(dir: &Path, meta: &Metadata, me: u32, private_parent: bool) -> Result<(), StoreError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(refused(dir, "it is a symbolic link, which memory-server does not follow"));
    }
    if !kind.is_dir() {
        return Err(refused(dir, "it is not a directory"));
    }
    check_owner(dir, meta, me)?;
    if private_parent && meta.mode() & 0o002 != 0 {
        return Err(refused(dir, "it is writable by every user, who could replace the database with a link"));
    }
    Ok(())
}

/// A database, `-wal` or `-shm` file: a regular file of ours, not a link.
fn check_file(path: &Path, meta: &Metadata, me: u32) -> Result<(), StoreError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(refused(path, "it is a symbolic link, which memory-server does not follow"));
    }
    if !kind.is_file() {
        let what = {
            use std::os::unix::fs::FileTypeExt;
            if kind.is_fifo() {
                "a FIFO (named pipe)"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else if kind.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            }
        };
        return Err(refused(path, &format!("it is {what}, not a database file")));
    }
    check_owner(path, meta, me)
}

fn check_owner(path: &Path, meta: &Metadata, me: u32) -> Result<(), StoreError> {
    if meta.uid() != me {
        return Err(refused(
            path,
            &format!(
                "it is owned by uid {}, not by uid {me} (the user memory-server runs as); \
                 another user could redirect the database",
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Checks that a database the user named (a backup's source) is a regular file, so
/// opening it cannot block on a FIFO or read a device.
pub fn check_regular_file(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    Ok(())
}

/// Creates `path` with mode 0600 if it does not exist (a backup's destination).
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match lstat(path)? {
        Some(meta) => check_file(path, &meta, effective_uid()),
        None => create_new_private_file(path).map(drop),
    }
}

/// Creates the database file, 0600 exactly, refusing to follow a link at its name.
fn create_new_private_file(path: &Path) -> Result<Metadata, StoreError> {
    let created =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path);
    match created {
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io_error(path, e))?;
            file.metadata().map_err(|e| io_error(path, e))
        }
        // Created by a racing request or process (or a link appeared): check what is there.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            lstat(path)?.ok_or_else(|| refused(path, "it vanished while being created"))
        }
        Err(e) => Err(io_error(path, e)),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| io_error(path, e))
}

fn lstat(path: &Path) -> Result<Option<Metadata>, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// `path` with `suffix` appended to its file name (`memory.db` → `memory.db-wal`).
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The daemon's effective uid, asked once: it never changes, and routing asks on
/// every request.
pub fn effective_uid() -> u32 {
    static EUID: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    });
    *EUID
}

fn refused(path: &Path, reason: &str) -> StoreError {
    StoreError::Refused { path: path.to_owned(), reason: reason.to_owned() }
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn creates_private_directories_and_files_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask(2) cannot fail; the test restores it.
        let old = unsafe { libc::umask(0o000) };
        let project = DbFile::in_project(dir.path());
        let private = DbFile::private(dir.path().join("data/deep/x.db"));
        let results = (project.prepare(), private.prepare());
        unsafe { libc::umask(old) };
        results.0.unwrap();
        results.1.unwrap();
        assert_eq!(mode(&dir.path().join(".claude")), 0o700);
        assert_eq!(mode(&dir.path().join(".claude/memory.db")), 0o600);
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        assert_eq!(mode(&dir.path().join("data/deep")), 0o700);
        assert_eq!(mode(&dir.path().join("data/deep/x.db")), 0o600);
    }

    #[test]
    fn refuses_links_and_special_files_without_touching_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::create_dir(dir.path().join(".claude")).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".claude/memory.db")).unwrap();
        let err = DbFile::in_project(dir.path()).prepare().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains(".claude/memory.db"), "{err}");
        assert!(!target.exists());

        std::fs::remove_file(dir.path().join(".claude/memory.db")).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".claude/memory.db-wal")).unwrap();
        let err = DbFile::in_project(dir.path()).prepare().unwrap_err();
        assert!(err.to_string().contains("memory.db-wal"), "{err}");
        assert!(!target.exists());
        assert!(!dir.path().join(".claude/memory.db").exists(), "nothing created next to a bad side file");

        let other = tempfile::tempdir().unwrap();
        let linked = other.path().join("p");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(dir.path(), linked.join(".claude")).unwrap();
        let err = DbFile::in_project(&linked).prepare().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let fifo_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(fifo_dir.path().join(".claude")).unwrap();
        let fifo = fifo_dir.path().join(".claude/memory.db");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = DbFile::in_project(fifo_dir.path()).prepare().unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn refuses_a_world_writable_claude_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".claude")).unwrap();
        set_mode(&dir.path().join(".claude"), 0o777).unwrap();
        let err = DbFile::in_project(dir.path()).prepare().unwrap_err();
        assert!(err.to_string().contains("writable by every user"), "{err}");
    }

    #[test]
    fn identity_changes_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = DbFile::in_project(dir.path());
        let first = file.prepare().unwrap();
        // Held open, as the store's connections hold it, so its inode cannot be reused.
        let _held = std::fs::File::open(file.path()).unwrap();
        assert_eq!(file.identity_now(), Some(first));
        std::fs::remove_file(file.path()).unwrap();
        assert_eq!(file.identity_now(), None);
        let second = file.prepare().unwrap();
        assert_ne!(first, second);
    }
}
