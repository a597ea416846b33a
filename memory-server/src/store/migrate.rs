//! Schema migrations: numbered SQL files from `migrations/`, embedded at build time and
//! tracked with `PRAGMA user_version`. A file is adopted only when it is empty or holds
//! exactly the Node server's schema or ours at its version; all pending migrations of
//! one open run in one transaction, so a refused or failed open leaves the file as it was.

use std::collections::BTreeMap;
use std::sync::LazyLock;

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
    Migration {
        version: 5,
        name: "0005_incremental_search_merge.sql",
        sql: include_str!("../../../migrations/0005_incremental_search_merge.sql"),
    },
    Migration {
        version: 6,
        name: "0006_search_text.sql",
        sql: include_str!("../../../migrations/0006_search_text.sql"),
    },
];

pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {found} is newer than this memory-server knows ({known})")]
    TooNew { found: u32, known: u32 },
    /// The file holds something that is neither the Node server's schema nor ours.
    #[error("{0}")]
    Foreign(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Checks that the database at `conn` may be adopted (see the module comment) without
/// writing anything; returns its schema version.
pub fn check_adoptable(conn: &Connection) -> Result<u32, MigrateError> {
    let found = user_version(conn)?;
    if found > latest_version() {
        return Err(MigrateError::TooNew { found, known: latest_version() });
    }
    let actual = Schema::read(conn)?;
    // Version 0 is a new file, or the Node server's, whose tables are our first migration.
    let expected = &SCHEMAS[found.max(1) as usize - 1];
    if found == 0 && actual.objects.is_empty() {
        return Ok(found);
    }
    actual.compare(expected).map_err(|difference| {
        let whose = if found == 0 {
            "the Node server's (@pepk/mcp-memory-sqlite)".to_owned()
        } else {
            format!("memory-server's schema version {found}")
        };
        MigrateError::Foreign(format!("{difference}, which is not in {whose}"))
    })?;
    Ok(found)
}

/// Applies the pending migrations in one `BEGIN IMMEDIATE` transaction: two daemons
/// opening the same new file at once migrate it exactly once, and a failure leaves
/// nothing half done. The schema is checked again inside the transaction (another
/// process may have changed it since [`check_adoptable`]). Returns the names applied.
pub fn migrate(conn: &mut Connection) -> Result<Vec<&'static str>, MigrateError> {
    // Migrations index existing rows for search: with our lower() (SQLite's own folds
    // ASCII only) and search_signature(), whoever opened the connection.
    super::register_search_functions(conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = check_adoptable(&tx)?;
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.version > current).collect();
    for m in &pending {
        tx.execute_batch(m.sql)?;
    }
    if let Some(last) = pending.last() {
        tx.pragma_update(None, "user_version", last.version)?;
    }
    tx.commit()?;
    Ok(pending.iter().map(|m| m.name).collect())
}

/// The schema objects of a database: `(type, name)` → for tables, their columns.
#[derive(Debug, Default, PartialEq, Eq)]
struct Schema {
    objects: BTreeMap<(String, String), Vec<String>>,
}

/// What every version's migrations produce, from applying them to an empty database.
static SCHEMAS: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    let mut schemas = Vec::new();
    // An in-memory database and the embedded SQL: neither can fail short of a bug,
    // which the unit tests would show; an empty schema then refuses every file.
    if let Ok(conn) = Connection::open_in_memory()
        && super::register_search_functions(&conn).is_ok()
    {
        for m in MIGRATIONS {
            let ok = conn.execute_batch(m.sql).is_ok();
            schemas.push(if ok { Schema::read(&conn).unwrap_or_default() } else { Schema::default() });
        }
    }
    schemas
});

impl Schema {
    fn read(conn: &Connection) -> rusqlite::Result<Schema> {
        let mut stmt = conn.prepare("SELECT type, name FROM sqlite_master ORDER BY type, name")?;
        let names: Vec<(String, String)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut objects = BTreeMap::new();
        for (kind, name) in names {
            // Statistics tables appear after an ANALYZE, by anyone; they hold no data.
            if name.starts_with("sqlite_stat") {
                continue;
            }
            let columns = if kind == "table" { columns(conn, &name)? } else { Vec::new() };
            objects.insert((kind, name), columns);
        }
        Ok(Schema { objects })
    }

    /// The first difference from `expected`, in words.
    fn compare(&self, expected: &Schema) -> Result<(), String> {
        for ((kind, name), columns) in &self.objects {
            match expected.objects.get(&(kind.clone(), name.clone())) {
                None => return Err(format!("it holds {kind} `{name}`")),
                Some(want) if want != columns => {
                    return Err(format!("its table `{name}` has columns ({})", columns.join(", ")));
                }
                Some(_) => {}
            }
        }
        if let Some((kind, name)) = expected.objects.keys().find(|k| !self.objects.contains_key(*k)) {
            return Err(format!("it lacks {kind} `{name}`"));
        }
        Ok(())
    }
}

/// A table's columns as `name type [NOT NULL] [PK]`.
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")?;
    stmt.query_map([table], |r| {
        let (name, ty, not_null, pk): (String, String, bool, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let mut column = format!("{name} {ty}");
        if not_null {
            column.push_str(" NOT NULL");
        }
        if pk > 0 {
            column.push_str(" PK");
        }
        Ok(column)
    })?
    .collect()
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
        assert_eq!(SCHEMAS.len(), MIGRATIONS.len());
        assert!(SCHEMAS.iter().all(|s| !s.objects.is_empty()), "every migration's SQL runs");
    }

    #[test]
    fn adopts_empty_node_and_own_files_and_names_what_else_it_finds() {
        let empty = Connection::open_in_memory().unwrap();
        assert_eq!(check_adoptable(&empty).unwrap(), 0);

        let node = Connection::open_in_memory().unwrap();
        node.execute_batch(MIGRATIONS[0].sql).unwrap(); // the Node server's DDL, verbatim
        assert_eq!(check_adoptable(&node).unwrap(), 0);

        let mut ours = Connection::open_in_memory().unwrap();
        migrate(&mut ours).unwrap();
        assert_eq!(check_adoptable(&ours).unwrap(), latest_version());

        let app = Connection::open_in_memory().unwrap();
        app.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)").unwrap();
        let err = check_adoptable(&app).unwrap_err().to_string();
        assert!(err.contains("table `users`"), "{err}");

        let clash = Connection::open_in_memory().unwrap();
        clash.execute_batch("CREATE TABLE entities (id INTEGER PRIMARY KEY, label TEXT)").unwrap();
        let err = check_adoptable(&clash).unwrap_err().to_string();
        assert!(err.contains("entities"), "{err}");

        ours.execute_batch("CREATE TABLE extra (x)").unwrap();
        let err = check_adoptable(&ours).unwrap_err().to_string();
        assert!(err.contains("table `extra`") && err.contains("version"), "{err}");
    }

    /// A file of the previous version (with rows, some of them noted for re-indexing)
    /// is migrated in place: the stored lower-cased text of every row is filled with our
    /// `lower()`, so it holds JavaScript's lower-casing, and its signature.
    #[test]
    fn a_version_5_file_gets_the_lower_cased_text_of_every_row() {
        // A plain connection: `migrate` brings our functions itself.
        let mut conn = Connection::open_in_memory().unwrap();
        // As on our connections: an observation may name an entity that does not exist.
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        for m in &MIGRATIONS[..5] {
            conn.execute_batch(m.sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute_batch(
            "INSERT INTO entities (name, entity_type) VALUES ('MÜLLER', 'Person'), ('ΟΔΟΣ', 'Straße');
             INSERT INTO observations (entity_name, content) VALUES ('MÜLLER', 'ÄPFEL UND İ'), ('ghost', 'X');
             DELETE FROM search_stale WHERE id = 1;",
        )
        .unwrap();
        assert_eq!(check_adoptable(&conn).unwrap(), 5);
        assert_eq!(migrate(&mut conn).unwrap(), ["0006_search_text.sql"]);
        assert_eq!(check_adoptable(&conn).unwrap(), latest_version());
        let rows = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(
            rows("SELECT id || ' ' || name || ' ' || name_lc || ' ' || entity_type_lc FROM entity_text ORDER BY id"),
            ["1 MÜLLER müller person", "2 ΟΔΟΣ οδος straße"]
        );
        assert_eq!(
            rows("SELECT id || ' ' || entity_name || ' ' || content_lc FROM observation_text ORDER BY id"),
            ["1 MÜLLER äpfel und i\u{307}", "2 ghost x"]
        );
        let signatures: Vec<(i64, i64)> = conn
            .prepare("SELECT name_sig, entity_type_sig FROM entity_text ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        use super::super::graph::signature;
        assert_eq!(signatures, [(signature("müller"), signature("person")), (signature("οδος"), signature("straße"))]);
    }

    /// The new tables are part of the schema compared: missing, extra or different
    /// ones are named.
    #[test]
    fn the_search_text_tables_are_compared_like_any_other() {
        let mut lacking = Connection::open_in_memory().unwrap();
        migrate(&mut lacking).unwrap();
        lacking.execute_batch("DROP TABLE observation_text").unwrap();
        let err = check_adoptable(&lacking).unwrap_err().to_string();
        assert!(err.contains("lacks table `observation_text`"), "{err}");

        let early = Connection::open_in_memory().unwrap();
        for m in &MIGRATIONS[..5] {
            early.execute_batch(m.sql).unwrap();
        }
        early.pragma_update(None, "user_version", 5).unwrap();
        early.execute_batch("CREATE TABLE entity_text (id INTEGER PRIMARY KEY, name)").unwrap();
        let err = check_adoptable(&early).unwrap_err().to_string();
        assert!(err.contains("table `entity_text`") && err.contains("version 5"), "{err}");

        let mut altered = Connection::open_in_memory().unwrap();
        migrate(&mut altered).unwrap();
        altered
            .execute_batch("DROP TABLE entity_text; CREATE TABLE entity_text (id INTEGER PRIMARY KEY, name)")
            .unwrap();
        let err = check_adoptable(&altered).unwrap_err().to_string();
        assert!(err.contains("its table `entity_text` has columns (id INTEGER PK, name )"), "{err}");
    }

    #[test]
    fn a_refused_file_gets_no_migration_at_all() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE entities (id INTEGER PRIMARY KEY, label TEXT)").unwrap();
        assert!(matches!(migrate(&mut conn), Err(MigrateError::Foreign(_))));
        assert_eq!(user_version(&conn).unwrap(), 0);
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 1, "nothing was added");
    }
}
