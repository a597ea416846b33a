//! Moving memories in and out (SPEC 2.8): `import` of the official server's JSONL (or its
//! legacy single-object `memory.json`) in one transaction, `export` to the same JSONL, and
//! `backup` through SQLite's online backup API. All three work while a daemon serves the
//! same file: WAL lets readers and one writer proceed side by side.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde::Deserialize;

use crate::postgres::{self, Database, DatabaseUrl, PgError, Project, ProjectKey};
use crate::project::ProjectPath;
use crate::routing::Router;
use crate::store::graph;
use crate::store::model::{Entity, KnowledgeGraph, Relation};
use crate::store::registry::StoreLimits;
use crate::store::{DbFile, GraphError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}; nothing was imported")]
    Malformed { path: String, line: usize, message: String },
    #[error("{path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
}

/// What an import changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    pub entities_added: u64,
    pub entities_skipped: u64,
    pub observations_added: u64,
    pub observations_skipped: u64,
    pub relations_added: u64,
    pub relations_skipped: u64,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "entities: {} added, {} already present; observations: {} added, {} already present; \
             relations: {} added, {} already present",
            self.entities_added,
            self.entities_skipped,
            self.observations_added,
            self.observations_skipped,
            self.relations_added,
            self.relations_skipped
        )
    }
}

/// One line of the official server's JSONL file.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Record {
    Entity {
        name: String,
        #[serde(rename = "entityType")]
        entity_type: String,
        #[serde(default)]
        observations: Vec<String>,
    },
    Relation {
        from: String,
        to: String,
        #[serde(rename = "relationType")]
        relation_type: String,
    },
}

/// Merges `file` into `store` in one transaction: entities created if missing,
/// observations and relations added without duplicates. The file is streamed line by
/// line; a malformed line aborts with its number and nothing is imported.
pub fn import(store: &Store, file: &Path) -> Result<ImportReport, TransferError> {
    let sqlite = |source| TransferError::Sqlite { path: store.path().display().to_string(), source };
    let indexing = |e| match e {
        GraphError::Sqlite(source) => sqlite(source),
        other => TransferError::Store(StoreError::Graph(other)),
    };
    store.with_writer(|conn| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite)?;
        let deferred = DeferredIndex::begin(&tx).map_err(indexing)?;
        let mut importer = Importer::new(&tx).map_err(sqlite)?;
        read_records(file, |record| importer.add(record).map_err(sqlite))?;
        let report = importer.report;
        drop(importer);
        deferred.finish(&tx).map_err(indexing)?;
        tx.commit().map_err(sqlite)?;
        Ok(report)
    })
}

/// A graph as the records of its JSONL: entities, then relations.
fn records(graph: KnowledgeGraph) -> impl Iterator<Item = Record> {
    let entities = graph.entities.into_iter().map(|e| Record::Entity {
        name: e.name,
        entity_type: e.entity_type,
        observations: e.observations,
    });
    let relations = graph.relations.into_iter().map(|r| Record::Relation {
        from: r.from,
        to: r.to,
        relation_type: r.relation_type,
    });
    entities.chain(relations)
}

/// Reads the official server's JSONL `file` (or its legacy single-object `memory.json`)
/// record by record into `add`; a malformed line fails naming its number.
fn read_records(file: &Path, mut add: impl FnMut(Record) -> Result<(), TransferError>) -> Result<(), TransferError> {
    let shown = file.display().to_string();
    let io = |source| TransferError::Io { path: shown.clone(), source };
    let mut reader = BufReader::new(File::open(file).map_err(io)?);
    let mut line = String::new();
    let mut number = 0;
    let mut added = 0usize;
    let mut legacy: Option<String> = None;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        number += 1;
        if let Some(buffer) = legacy.as_mut() {
            buffer.push_str(&line);
            continue;
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(text) {
            Ok(record) => {
                added += 1;
                add(record)?
            }
            // The legacy format: one JSON object {entities, relations}, maybe pretty-printed.
            Err(_) if added == 0 && text.starts_with('{') && !text.contains("\"type\"") => {
                legacy = Some(line.clone());
            }
            Err(e) => {
                return Err(TransferError::Malformed {
                    path: shown.clone(),
                    line: number,
                    message: without_position(&e),
                });
            }
        }
    }
    if let Some(whole) = legacy {
        let graph: KnowledgeGraph = serde_json::from_str(&whole).map_err(|e| TransferError::Malformed {
            path: shown.clone(),
            line: e.line(),
            message: e.to_string(),
        })?;
        for record in records(graph) {
            add(record)?;
        }
    }
    Ok(())
}

/// Noting every imported row for re-indexing (what the insert triggers do) and then
/// re-indexing through that list is slower than indexing the new rows in one statement
/// at the end. So, inside the
/// import's transaction (other writers wait; a failure rolls the DDL back too), the
/// rows already noted are indexed, the insert triggers are dropped, the rows added after
/// the import's starting point are indexed in bulk (`graph::index_imported_rows`), and
/// the triggers are recreated from their own stored SQL.
struct DeferredIndex {
    triggers: Vec<String>,
    last_entity: i64,
    last_observation: i64,
}

const INSERT_TRIGGERS: &str = "('entities_fts_insert', 'observations_fts_insert')";

impl DeferredIndex {
    fn begin(tx: &Connection) -> Result<Self, GraphError> {
        // A deleted entity whose note still waits keeps its rowid in the search tables,
        // and the import may give that rowid to a new entity: with nothing waiting, the
        // rows indexed at the end are all new there.
        if graph::search_index_is_stale(tx)? {
            graph::repair_search_index(tx)?;
        }
        let mut stmt = tx.prepare(&format!(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN {INSERT_TRIGGERS}"
        ))?;
        let triggers: Vec<(String, String)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        for (name, _) in &triggers {
            tx.execute_batch(&format!("DROP TRIGGER \"{name}\""))?;
        }
        // New entity rowids are above the current maximum (SQLite allocates max + 1),
        // observation ids too (AUTOINCREMENT).
        let last_entity = tx.query_row("SELECT coalesce(max(rowid), 0) FROM entities", [], |r| r.get(0))?;
        let last_observation = tx.query_row("SELECT coalesce(max(id), 0) FROM observations", [], |r| r.get(0))?;
        Ok(DeferredIndex {
            triggers: triggers.into_iter().map(|(_, sql)| sql).collect(),
            last_entity,
            last_observation,
        })
    }

    fn finish(self, tx: &Connection) -> Result<(), GraphError> {
        graph::index_imported_rows(tx, self.last_entity, self.last_observation)?;
        for sql in &self.triggers {
            tx.execute_batch(sql)?;
        }
        Ok(())
    }
}

struct Importer<'c> {
    entity: rusqlite::CachedStatement<'c>,
    observation: rusqlite::CachedStatement<'c>,
    relation: rusqlite::CachedStatement<'c>,
    report: ImportReport,
}

impl<'c> Importer<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Importer {
            entity: conn.prepare_cached("INSERT OR IGNORE INTO entities (name, entity_type) VALUES (?1, ?2)")?,
            observation: conn
                .prepare_cached("INSERT OR IGNORE INTO observations (entity_name, content) VALUES (?1, ?2)")?,
            relation: conn.prepare_cached(
                "INSERT OR IGNORE INTO relations (from_entity, to_entity, relation_type) VALUES (?1, ?2, ?3)",
            )?,
            report: ImportReport::default(),
        })
    }

    fn add(&mut self, record: Record) -> rusqlite::Result<()> {
        let r = &mut self.report;
        match record {
            Record::Entity { name, entity_type, observations } => {
                if self.entity.execute(params![name, entity_type])? == 1 {
                    r.entities_added += 1;
                } else {
                    r.entities_skipped += 1;
                }
                for content in observations {
                    if self.observation.execute(params![name, content])? == 1 {
                        r.observations_added += 1;
                    } else {
                        r.observations_skipped += 1;
                    }
                }
            }
            Record::Relation { from, to, relation_type } => {
                if self.relation.execute(params![from, to, relation_type])? == 1 {
                    r.relations_added += 1;
                } else {
                    r.relations_skipped += 1;
                }
            }
        }
        Ok(())
    }
}

/// Writes the graph as the official server's JSONL (entities, then relations, one JSON
/// object a line, no newline after the last), streaming rows from one read snapshot.
pub fn export(store: &Store, out: &mut dyn Write) -> Result<(), TransferError> {
    let path = store.path().display().to_string();
    let sqlite = |source| TransferError::Sqlite { path: path.clone(), source };
    let io = |source| TransferError::Io { path: "output".into(), source };
    let mut out = BufWriter::new(out);
    store
        .read(|conn| {
            let mut first = true;
            let mut line = |out: &mut BufWriter<&mut dyn Write>, json: String| -> std::io::Result<()> {
                if !std::mem::take(&mut first) {
                    out.write_all(b"\n")?;
                }
                out.write_all(json.as_bytes())
            };
            {
                let mut stmt = conn.prepare(
                    "SELECT e.name, e.entity_type, o.content FROM entities e
                       LEFT JOIN observations o ON o.entity_name = e.name
                      ORDER BY e.rowid, o.id",
                )?;
                let mut rows = stmt.query([])?;
                let mut current: Option<Entity> = None;
                let mut write_entity = |out: &mut BufWriter<&mut dyn Write>, e: Entity| line(out, entity_line(&e));
                while let Some(row) = rows.next()? {
                    let name: String = row.get(0)?;
                    if current.as_ref().is_none_or(|e| e.name != name) {
                        if let Some(done) = current.take() {
                            write_entity(&mut out, done).map_err(io_to_sqlite)?;
                        }
                        current = Some(Entity { name, entity_type: row.get(1)?, observations: Vec::new() });
                    }
                    if let (Some(e), Some(content)) = (current.as_mut(), row.get::<_, Option<String>>(2)?) {
                        e.observations.push(content);
                    }
                }
                if let Some(done) = current.take() {
                    write_entity(&mut out, done).map_err(io_to_sqlite)?;
                }
            }
            let mut stmt = conn.prepare("SELECT from_entity, to_entity, relation_type FROM relations ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let r = Relation { from: row.get(0)?, to: row.get(1)?, relation_type: row.get(2)? };
                line(&mut out, relation_line(&r)).map_err(io_to_sqlite)?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            StoreError::Sqlite { source, .. } => sqlite(source),
            e => TransferError::Store(e),
        })?;
    out.flush().map_err(io)
}

/// One entity as a line of the official JSONL.
fn entity_line(e: &Entity) -> String {
    serde_json::json!({
        "type": "entity", "name": e.name, "entityType": e.entity_type, "observations": e.observations,
    })
    .to_string()
}

fn relation_line(r: &Relation) -> String {
    serde_json::json!({ "type": "relation", "from": r.from, "to": r.to, "relationType": r.relation_type }).to_string()
}

/// serde's message without its " at line 1 column N" (the line is ours to report).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn io_to_sqlite(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// Copies the live database at `db` to `dest` with SQLite's online backup API, in one
/// step, so the copy is one consistent snapshot even while writers are active.
pub fn backup(db: &Path, dest: &Path) -> Result<(), TransferError> {
    let sqlite = |path: &Path| {
        let path = path.display().to_string();
        move |source| TransferError::Sqlite { path, source }
    };
    if !db.exists() {
        return Err(TransferError::Io {
            path: db.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such database"),
        });
    }
    // Opening a FIFO would block for good, a device would be read as garbage.
    crate::store::check_regular_file(db)?;
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite(db))?;
    src.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite(db))?;
    crate::store::create_private_file(dest)?;
    let mut dst = Connection::open(dest).map_err(sqlite(dest))?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sqlite(dest))?;
    // All pages in one step: the copy is one snapshot. A writer holding the lock at that
    // instant makes the step report Busy; retry for a while (bounded).
    for _ in 0..200 {
        match backup.step(-1).map_err(sqlite(dest))? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Err(TransferError::Io {
        path: db.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "database stayed busy for 10 s"),
    })
}

/// The project `key` of the PostgreSQL database at `url`, for a transfer command.
async fn team_project(url: &str, key: &ProjectKey) -> Result<(Arc<Database>, Project), TransferError> {
    let db = Database::open(DatabaseUrl::parse(url)?).await?;
    let project = db.project(key).await?;
    Ok((db, project))
}

/// `import --database`: merges `file` into the project in one transaction, as [`import`]
/// merges into SQLite. The file is read whole first (a malformed line imports nothing).
pub async fn import_to_database(url: &str, key: &ProjectKey, file: &Path) -> Result<ImportReport, TransferError> {
    let mut graph = KnowledgeGraph::default();
    read_records(file, |record| {
        match record {
            Record::Entity { name, entity_type, observations } => {
                graph.entities.push(Entity { name, entity_type, observations })
            }
            Record::Relation { from, to, relation_type } => graph.relations.push(Relation { from, to, relation_type }),
        }
        Ok(())
    })?;
    let (db, project) = team_project(url, key).await?;
    let report = project.write(&graph, |tx, id, g| Box::pin(postgres::import_graph(tx, id, g))).await;
    db.close();
    Ok(report?)
}

/// `export --database`: the project as the official JSONL, from one snapshot.
pub async fn export_from_database(url: &str, key: &ProjectKey, out: &mut dyn Write) -> Result<(), TransferError> {
    let (db, project) = team_project(url, key).await?;
    let graph = project.read(&(), |tx, id, ()| Box::pin(postgres::read_graph(tx, id))).await;
    db.close();
    write_jsonl(&graph?, out)
}

fn write_jsonl(graph: &KnowledgeGraph, out: &mut dyn Write) -> Result<(), TransferError> {
    let io = |source| TransferError::Io { path: "output".into(), source };
    let mut out = BufWriter::new(out);
    let lines = graph.entities.iter().map(entity_line).chain(graph.relations.iter().map(relation_line));
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.write_all(b"\n").map_err(io)?;
        }
        out.write_all(line.as_bytes()).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// `backup --database`: the project, from one snapshot, into a new SQLite database at
/// `dest` (which the daemon, `--db` and the Node server can all open).
pub async fn backup_from_database(url: &str, key: &ProjectKey, dest: &Path) -> Result<ImportReport, TransferError> {
    if dest.symlink_metadata().is_ok() {
        return Err(TransferError::Io {
            path: dest.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists already; give a new file"),
        });
    }
    let (db, project) = team_project(url, key).await?;
    let graph = project.read(&(), |tx, id, ()| Box::pin(postgres::read_graph(tx, id))).await;
    db.close();
    let graph = graph?;
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || {
        let store = Store::open_file(&DbFile::configured(dest))?;
        let sqlite = |source| TransferError::Sqlite { path: store.path().display().to_string(), source };
        let report = store.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite)?;
            let mut importer = Importer::new(&tx).map_err(sqlite)?;
            for record in records(graph) {
                importer.add(record).map_err(sqlite)?;
            }
            let report = importer.report;
            drop(importer);
            tx.commit().map_err(sqlite)?;
            Ok::<_, TransferError>(report)
        })?;
        store.update_search_index()?;
        Ok(report)
    })
    .await
    .map_err(|e| TransferError::Io { path: "backup".into(), source: std::io::Error::other(e.to_string()) })?
}

/// `copy`: a SQLite database's graph (read, never changed) added to the project in one
/// transaction; what is there already is skipped, so a second run adds nothing.
pub async fn copy_to_database(from: &Path, url: &str, key: &ProjectKey) -> Result<ImportReport, TransferError> {
    let sqlite = |source| TransferError::Sqlite { path: from.display().to_string(), source };
    if !from.exists() {
        return Err(TransferError::Io {
            path: from.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such database"),
        });
    }
    crate::store::check_regular_file(from)?;
    let path = from.to_owned();
    let graph = tokio::task::spawn_blocking(move || {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch("BEGIN")?;
        let graph = crate::store::graph::read_graph(&conn).map_err(|e| match e {
            crate::store::GraphError::Sqlite(e) => e,
            other => rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(other.to_string()))),
        })?;
        conn.execute_batch("COMMIT")?;
        Ok::<_, rusqlite::Error>(graph)
    })
    .await
    .map_err(|e| TransferError::Io { path: from.display().to_string(), source: std::io::Error::other(e.to_string()) })?
    .map_err(sqlite)?;
    let (db, project) = team_project(url, key).await?;
    let report = project.write(&graph, |tx, id, g| Box::pin(postgres::import_graph(tx, id, g))).await;
    db.close();
    Ok(report?)
}

/// Which database a transfer command works on: `--db PATH`, the project's (where the
/// daemon keeps it: in the project, or in the data directory for a project that cannot
/// be written), or the global one.
pub fn target_db(project: Option<&str>, db: Option<&Path>, global: PathBuf) -> Result<DbFile, String> {
    match (project, db) {
        (Some(_), Some(_)) => Err("give --project or --db, not both".into()),
        (Some(dir), None) => {
            let project = ProjectPath::from_dir(dir).map_err(|e| format!("--project: {e}"))?;
            let router = Router::new(global, StoreLimits::default());
            Ok(router.placement(&project).file().clone())
        }
        (None, Some(path)) => Ok(DbFile::configured(path.to_owned())),
        (None, None) => Ok(DbFile::configured(global)),
    }
}
