//! The storage interface the tools and transports see: one project's memory, kept in a
//! SQLite file of its own (`store`, the default) or in the team's PostgreSQL database
//! (`postgres`). Each tool runs against either; nothing above this knows which.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::postgres::{PgError, Project};
use crate::store::{Store, StoreError};

/// One project's memory.
#[derive(Clone)]
pub enum Memory {
    Sqlite(Arc<Store>),
    Postgres(Project),
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// Which memory a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemoryId {
    File(PathBuf),
    Team(i64),
}

impl Memory {
    /// Change notices: every committed write, from this daemon, another process on the
    /// same file (once [`Memory::watch_outside_writes`] runs) or another daemon on the
    /// same PostgreSQL database. They outlive a SQLite store's close and reopen.
    pub fn changes(&self) -> broadcast::Receiver<()> {
        match self {
            Memory::Sqlite(store) => store.subscribe_changes(),
            Memory::Postgres(project) => project.changes(),
        }
    }

    /// Starts noticing writes other processes make to a SQLite file (PostgreSQL's writes
    /// all announce themselves).
    pub fn watch_outside_writes(&self) {
        if let Memory::Sqlite(store) = self {
            store.watch_outside_writes();
        }
    }

    pub fn id(&self) -> MemoryId {
        match self {
            Memory::Sqlite(store) => MemoryId::File(store.path().to_owned()),
            Memory::Postgres(project) => MemoryId::Team(project.id()),
        }
    }
}
