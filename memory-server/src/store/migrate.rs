//! Schema migrations: numbered SQL files from `migrations/`, embedded at build time and
//! tracked with `PRAGMA user_version`. A DB written by a newer binary is refused before
//! anything touches it.

use rusqlite::{Connection, TransactionBehavior};

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every file in `migrations/`, in order. A unit test checks that none is missing.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_node_schema.sql",
        sql: include_str!("../../../migrations/0001_node_schema.sql"),
    },
    Migration {
        version: 2,
        name: "0002_search_index.sql",
        sql: include_str!("../../../migrations/0002_search_index.sql"),
    },
    Migration {
        version: 3,
        name: "0003_search_index_repair.sql",
        sql: include_str!("../../../migrations/0003_search_index_repair.sql"),
    },
    Migration {
        version: 4,
        name: "0004_deferred_search_index.sql",
        sql: include_str!("../../../migrations/0004_deferred_search_index.sql"),
    },
];

pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the pending migrations, each in its own `BEGIN IMMEDIATE` transaction so that
/// two daemons opening the same new file at once migrate it exactly once. Returns the
/// names of the migrations applied. Fails with `Err(found)` when the file is newer.
pub fn migrate(conn: &mut Connection) -> Result<Vec<&'static str>, MigrateError> {
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = user_version(&tx)?;
        if current > latest_version() {
            return Err(MigrateError::TooNew { found: current, known: latest_version() });
        }
        if current >= m.version {
            continue;
        }
        tx.execute_batch(m.sql)?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        applied.push(m.name);
    }
    Ok(applied)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {found} is newer than this memory-server knows ({known})")]
    TooNew { found: u32, known: u32 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
