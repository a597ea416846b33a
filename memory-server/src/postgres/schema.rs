//! The PostgreSQL schema, created and migrated by the daemon: numbered steps applied in
//! one transaction under an advisory lock (several daemons may start at once), the
//! version kept in `memory_schema`; a database with a newer version is refused.

use deadpool_postgres::Object;

use super::PgError;

/// The migrations, in order; the schema's version is their number. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: projects, the three graph tables and their indexes. Rows are ordered by their
    // identity ids (insertion order, as SQLite's rowids). Uniqueness is on SHA-256 keys
    // computed by the daemon (`graph::hash`), since b-tree entries over ~2.7 kB are
    // refused and names and observations have no length limit. The `_lc` columns hold the
    // text lower-cased as JavaScript does (by the daemon, not by PostgreSQL's locale), and
    // trigram GIN indexes over them answer the substring search. The indexes hold the text
    // alone: led by the project (btree_gin), every search also read one entry per row of
    // the project, so a search cost grew with the project (2.05x from 10k to 100k entities,
    // bench/RESULTS.md); text alone costs what the needle matches. Their pending lists
    // (new rows not yet merged, which every search reads whole) are capped at 256 kB
    // instead of 4 MB: searches stay fast between vacuums, writes still merge in batches.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm;
     CREATE TABLE memory_projects (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         key text NOT NULL,
         key_hash bytea NOT NULL UNIQUE,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE memory_entities (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         project_id bigint NOT NULL REFERENCES memory_projects (id),
         name text NOT NULL,
         name_hash bytea NOT NULL,
         entity_type text NOT NULL,
         name_lc text NOT NULL,
         type_lc text NOT NULL,
         UNIQUE (project_id, name_hash)
     );
     CREATE INDEX memory_entities_order ON memory_entities (project_id, id);
     CREATE INDEX memory_entities_search ON memory_entities
         USING gin (name_lc gin_trgm_ops, type_lc gin_trgm_ops) WITH (gin_pending_list_limit = 256);
     CREATE TABLE memory_observations (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         project_id bigint NOT NULL REFERENCES memory_projects (id),
         entity_name text NOT NULL,
         entity_hash bytea NOT NULL,
         content text NOT NULL,
         content_hash bytea NOT NULL,
         content_lc text NOT NULL,
         UNIQUE (project_id, entity_hash, content_hash)
     );
     CREATE INDEX memory_observations_order ON memory_observations (project_id, id);
     CREATE INDEX memory_observations_search ON memory_observations
         USING gin (content_lc gin_trgm_ops) WITH (gin_pending_list_limit = 256);
     CREATE TABLE memory_relations (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         project_id bigint NOT NULL REFERENCES memory_projects (id),
         from_entity text NOT NULL,
         from_hash bytea NOT NULL,
         to_entity text NOT NULL,
         to_hash bytea NOT NULL,
         relation_type text NOT NULL,
         type_hash bytea NOT NULL,
         UNIQUE (project_id, from_hash, to_hash, type_hash)
     );
     CREATE INDEX memory_relations_order ON memory_relations (project_id, id);
     CREATE INDEX memory_relations_to ON memory_relations (project_id, to_hash);",
];

/// The schema version this daemon writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// A fixed advisory lock key (`memory-server` in ASCII, truncated): daemons starting at
/// once migrate one after another.
const MIGRATION_LOCK: i64 = 0x6d656d6f72792d73;

/// Brings the schema to [`VERSION`], or refuses a newer one. The outer `Result` is the
/// driver's, the inner one the daemon's verdict.
pub async fn migrate(client: &mut Object, db: &str) -> Result<Result<(), PgError>, tokio_postgres::Error> {
    let encoding: String = client.query_one("SHOW server_encoding", &[]).await?.get(0);
    if encoding != "UTF8" {
        return Ok(Err(PgError::Encoding { db: db.to_owned(), found: encoding }));
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    // Asked rather than `CREATE TABLE IF NOT EXISTS`, whose notice would be logged at
    // every start.
    let exists: bool = tx.query_one("SELECT to_regclass('memory_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        tx.batch_execute("CREATE TABLE memory_schema (version integer NOT NULL)").await?;
    }
    let found: Option<i32> = tx.query_one("SELECT max(version) FROM memory_schema", &[]).await?.get(0);
    let found = found.unwrap_or(0);
    if found > VERSION {
        return Ok(Err(PgError::NewerSchema { db: db.to_owned(), found, ours: VERSION }));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(step).await?;
        tracing::info!(db, version = i + 1, "PostgreSQL schema migrated");
    }
    if found < VERSION {
        tx.execute("DELETE FROM memory_schema", &[]).await?;
        tx.execute("INSERT INTO memory_schema (version) VALUES ($1)", &[&VERSION]).await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}
