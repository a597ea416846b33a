//! The nine memory operations in PostgreSQL, with the SQLite store's semantics and orders
//! (`store/graph.rs`): rows listed in insertion order (identity ids), duplicates skipped
//! as `INSERT OR IGNORE` skips them, search as JavaScript's lower-cased `includes`.
//! Names and texts are matched by their SHA-256 (`*_hash` columns): unique b-tree keys of
//! any length, where PostgreSQL refuses index entries over ~2.7 kB. The statements of one
//! operation are pipelined (sent together, answered in order), so a call of a hundred rows
//! costs a few round trips, not hundreds; PostgreSQL runs them in order, so each sees the
//! ones before it exactly as the SQLite loop does.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use futures_util::future::try_join_all;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::{GraphFailure, PgError};
use crate::store::model::{
    AddedObservations, Entity, KnowledgeGraph, ObservationAddition, ObservationDeletion, Relation,
};
use crate::transfer::ImportReport;

type Tx<'a> = Transaction<'a>;

/// Statements sent in one pipeline at most: bounds the memory of a huge call's futures.
const PIPELINE: usize = 1024;

/// The key a text is matched by.
pub(super) fn hash(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// JavaScript's `toLowerCase` (Rust follows the same Unicode rules, final sigma
/// included): the text search compares, as the SQLite index stores it.
fn lower(text: &str) -> String {
    text.to_lowercase()
}

fn no_nul(what: &'static str, text: &str) -> Result<(), PgError> {
    match text.contains('\0') {
        true => Err(PgError::Nul(what)),
        false => Ok(()),
    }
}

fn check_entities(entities: &[Entity]) -> Result<(), PgError> {
    for e in entities {
        no_nul("an entity name", &e.name)?;
        no_nul("an entity type", &e.entity_type)?;
        for o in &e.observations {
            no_nul("an observation", o)?;
        }
    }
    Ok(())
}

fn check_relations(relations: &[Relation]) -> Result<(), PgError> {
    for r in relations {
        no_nul("a relation's from", &r.from)?;
        no_nul("a relation's to", &r.to)?;
        no_nul("a relation type", &r.relation_type)?;
    }
    Ok(())
}

/// Runs `statements` pipelined, [`PIPELINE`] at a time, answers in order. Takes the
/// futures built already (a `map` adapter held across the await would make the caller's
/// future fail to prove `Send` for every lifetime, a limit of today's compiler).
async fn pipelined<F, T>(statements: Vec<F>) -> Result<Vec<T>, tokio_postgres::Error>
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut out = Vec::with_capacity(statements.len());
    let mut statements = statements.into_iter();
    loop {
        let batch: Vec<F> = statements.by_ref().take(PIPELINE).collect();
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(try_join_all(batch).await?);
    }
}

const INSERT_ENTITY: &str = "INSERT INTO memory_entities (project_id, name, name_hash, entity_type, name_lc, type_lc)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const INSERT_OBSERVATION: &str =
    "INSERT INTO memory_observations (project_id, entity_name, entity_hash, content, content_hash, content_lc)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const INSERT_RELATION: &str =
    "INSERT INTO memory_relations (project_id, from_entity, from_hash, to_entity, to_hash, relation_type, type_hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

async fn entity_exists(
    tx: &Tx<'_>,
    stmt: &Statement,
    project: i64,
    name: &[u8],
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx.query_opt(stmt, &[&project, &name]).await?.is_some())
}

async fn delete_observation(
    tx: &Tx<'_>,
    stmt: &Statement,
    project: i64,
    (entity, content): &(Vec<u8>, Vec<u8>),
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(stmt, &[&project, entity, content]).await
}

async fn delete_relation(
    tx: &Tx<'_>,
    stmt: &Statement,
    project: i64,
    [from, to, kind]: &[Vec<u8>; 3],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(stmt, &[&project, from, to, kind]).await
}

/// An entity's insert, pipelined; 1 when it was stored.
async fn insert_entity(tx: &Tx<'_>, stmt: &Statement, project: i64, e: &Entity) -> Result<u64, tokio_postgres::Error> {
    let (h, name_lc, type_lc) = (hash(&e.name), lower(&e.name), lower(&e.entity_type));
    tx.execute(stmt, &[&project, &e.name, &h, &e.entity_type, &name_lc, &type_lc]).await
}

async fn insert_observation(
    tx: &Tx<'_>,
    stmt: &Statement,
    project: i64,
    entity: &str,
    content: &str,
) -> Result<u64, tokio_postgres::Error> {
    let (eh, ch, lc) = (hash(entity), hash(content), lower(content));
    tx.execute(stmt, &[&project, &entity, &eh, &content, &ch, &lc]).await
}

async fn insert_relation(
    tx: &Tx<'_>,
    stmt: &Statement,
    project: i64,
    r: &Relation,
) -> Result<u64, tokio_postgres::Error> {
    let (fh, th, rh) = (hash(&r.from), hash(&r.to), hash(&r.relation_type));
    tx.execute(stmt, &[&project, &r.from, &fh, &r.to, &th, &r.relation_type, &rh]).await
}

/// New entities with their observations; a name taken already (or repeated within the
/// call) is skipped, and the result lists what was stored.
pub(crate) async fn create_entities(
    tx: &Tx<'_>,
    project: i64,
    entities: &[Entity],
) -> Result<Vec<Entity>, GraphFailure> {
    check_entities(entities)?;
    let insert = tx.prepare_cached(INSERT_ENTITY).await?;
    let stored = pipelined(entities.iter().map(|e| insert_entity(tx, &insert, project, e)).collect()).await?;
    let created: Vec<&Entity> = entities.iter().zip(&stored).filter(|(_, n)| **n == 1).map(|(e, _)| e).collect();
    let insert = tx.prepare_cached(INSERT_OBSERVATION).await?;
    let jobs: Vec<(&Entity, &String)> =
        created.iter().flat_map(|e| e.observations.iter().map(move |c| (*e, c))).collect();
    let kept =
        pipelined(jobs.iter().map(|(e, c)| insert_observation(tx, &insert, project, &e.name, c)).collect()).await?;
    let mut kept = kept.into_iter();
    Ok(created
        .into_iter()
        .map(|e| Entity {
            name: e.name.clone(),
            entity_type: e.entity_type.clone(),
            // Contents repeated within the entity are stored (and listed) once.
            observations: e.observations.iter().filter(|_| kept.next() == Some(1)).cloned().collect(),
        })
        .collect())
}

pub(crate) async fn create_relations(
    tx: &Tx<'_>,
    project: i64,
    relations: &[Relation],
) -> Result<Vec<Relation>, GraphFailure> {
    check_relations(relations)?;
    let insert = tx.prepare_cached(INSERT_RELATION).await?;
    let stored = pipelined(relations.iter().map(|r| insert_relation(tx, &insert, project, r)).collect()).await?;
    Ok(relations.iter().zip(stored).filter(|(_, n)| *n == 1).map(|(r, _)| r.clone()).collect())
}

/// Observations added to existing entities. An entity that does not exist fails the
/// whole call (nothing of it is written), naming the first such entity in call order.
pub(crate) async fn add_observations(
    tx: &Tx<'_>,
    project: i64,
    additions: &[ObservationAddition],
) -> Result<Vec<AddedObservations>, GraphFailure> {
    for a in additions {
        no_nul("an entity name", &a.entity_name)?;
        for c in &a.contents {
            no_nul("an observation", c)?;
        }
    }
    // FOR SHARE: a concurrent delete of the entity waits for this transaction, so no
    // observation is left behind without its entity.
    let exists =
        tx.prepare_cached("SELECT 1 FROM memory_entities WHERE project_id = $1 AND name_hash = $2 FOR SHARE").await?;
    let hashes: Vec<Vec<u8>> = additions.iter().map(|a| hash(&a.entity_name)).collect();
    let found = pipelined(hashes.iter().map(|h| entity_exists(tx, &exists, project, h)).collect()).await?;
    if let Some((a, _)) = additions.iter().zip(&found).find(|(_, exists)| !**exists) {
        return Err(PgError::EntityNotFound(a.entity_name.clone()).into());
    }
    let insert = tx.prepare_cached(INSERT_OBSERVATION).await?;
    let jobs: Vec<(&str, &String)> =
        additions.iter().flat_map(|a| a.contents.iter().map(move |c| (a.entity_name.as_str(), c))).collect();
    let kept = pipelined(jobs.iter().map(|(e, c)| insert_observation(tx, &insert, project, e, c)).collect()).await?;
    let mut kept = kept.into_iter();
    Ok(additions
        .iter()
        .map(|a| AddedObservations {
            entity_name: a.entity_name.clone(),
            added_observations: a.contents.iter().filter(|_| kept.next() == Some(1)).cloned().collect(),
        })
        .collect())
}

/// The entities, their observations and every relation from or to them.
pub(crate) async fn delete_entities(tx: &Tx<'_>, project: i64, names: &[String]) -> Result<(), GraphFailure> {
    let hashes: Vec<Vec<u8>> = names.iter().map(|n| hash(n)).collect();
    let obs =
        tx.prepare_cached("DELETE FROM memory_observations WHERE project_id = $1 AND entity_hash = ANY($2)").await?;
    let rels = tx
        .prepare_cached(
            "DELETE FROM memory_relations WHERE project_id = $1 AND (from_hash = ANY($2) OR to_hash = ANY($2))",
        )
        .await?;
    let ents = tx.prepare_cached("DELETE FROM memory_entities WHERE project_id = $1 AND name_hash = ANY($2)").await?;
    let params: [&(dyn ToSql + Sync); 2] = [&project, &hashes];
    futures_util::try_join!(tx.execute(&obs, &params), tx.execute(&rels, &params), tx.execute(&ents, &params))?;
    Ok(())
}

pub(crate) async fn delete_observations(
    tx: &Tx<'_>,
    project: i64,
    deletions: &[ObservationDeletion],
) -> Result<(), GraphFailure> {
    let del = tx
        .prepare_cached(
            "DELETE FROM memory_observations WHERE project_id = $1 AND entity_hash = $2 AND content_hash = $3",
        )
        .await?;
    let jobs: Vec<(Vec<u8>, Vec<u8>)> =
        deletions.iter().flat_map(|d| d.observations.iter().map(|c| (hash(&d.entity_name), hash(c)))).collect();
    pipelined(jobs.iter().map(|job| delete_observation(tx, &del, project, job)).collect()).await?;
    Ok(())
}

pub(crate) async fn delete_relations(tx: &Tx<'_>, project: i64, relations: &[Relation]) -> Result<(), GraphFailure> {
    let del = tx
        .prepare_cached(
            "DELETE FROM memory_relations
              WHERE project_id = $1 AND from_hash = $2 AND to_hash = $3 AND type_hash = $4",
        )
        .await?;
    let jobs: Vec<[Vec<u8>; 3]> =
        relations.iter().map(|r| [hash(&r.from), hash(&r.to), hash(&r.relation_type)]).collect();
    pipelined(jobs.iter().map(|job| delete_relation(tx, &del, project, job)).collect()).await?;
    Ok(())
}

/// The whole graph: entities in insertion order with their observations in insertion
/// order, then relations in insertion order. Three statements, pipelined.
pub(crate) async fn read_graph(tx: &Tx<'_>, project: i64) -> Result<KnowledgeGraph, GraphFailure> {
    let ents = tx.prepare_cached("SELECT name, entity_type FROM memory_entities WHERE project_id = $1 ORDER BY id");
    let obs =
        tx.prepare_cached("SELECT entity_name, content FROM memory_observations WHERE project_id = $1 ORDER BY id");
    let rels = tx.prepare_cached(
        "SELECT from_entity, to_entity, relation_type FROM memory_relations WHERE project_id = $1 ORDER BY id",
    );
    let (ents, obs, rels) = futures_util::try_join!(ents, obs, rels)?;
    let params: [&(dyn ToSql + Sync); 1] = [&project];
    let (ents, obs, rels) =
        futures_util::try_join!(tx.query(&ents, &params), tx.query(&obs, &params), tx.query(&rels, &params))?;
    let entities = attach_observations(ents.iter().map(entity).collect::<Result<_, _>>()?, &obs)?;
    Ok(KnowledgeGraph { entities, relations: rels.iter().map(relation).collect::<Result<_, _>>()? })
}

/// The named entities that exist (in graph order) and every relation with at least one
/// endpoint among them.
pub(crate) async fn open_nodes(tx: &Tx<'_>, project: i64, names: &[String]) -> Result<KnowledgeGraph, GraphFailure> {
    let hashes: Vec<Vec<u8>> = names.iter().map(|n| hash(n)).collect();
    let stmt = tx
        .prepare_cached(
            "SELECT name, entity_type, name_hash FROM memory_entities
              WHERE project_id = $1 AND name_hash = ANY($2) ORDER BY id",
        )
        .await?;
    let rows = tx.query(&stmt, &[&project, &hashes]).await?;
    subgraph(tx, project, &rows).await
}

/// Entities whose name, type or an observation contains `query`, both lower-cased as
/// JavaScript does (the empty query matches every entity), with the relations touching
/// them. Found through the trigram indexes on the lower-cased columns (`LIKE` on a
/// pattern with the needle's `%`, `_` and `\` escaped; pg_trgm answers needles of three
/// characters or more from the index, shorter ones by a scan of the project's rows).
pub(crate) async fn search_nodes(tx: &Tx<'_>, project: i64, query: &str) -> Result<KnowledgeGraph, GraphFailure> {
    let needle = lower(query);
    let rows = if needle.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT name, entity_type, name_hash FROM memory_entities WHERE project_id = $1 ORDER BY id",
            )
            .await?;
        tx.query(&stmt, &[&project]).await?
    } else {
        no_nul("the query", query)?;
        let stmt = tx
            .prepare_cached(
                "SELECT name, entity_type, name_hash FROM memory_entities
                  WHERE project_id = $1 AND name_hash IN (
                        SELECT name_hash FROM memory_entities
                         WHERE project_id = $1 AND (name_lc LIKE $2 OR type_lc LIKE $2)
                        UNION
                        SELECT entity_hash FROM memory_observations
                         WHERE project_id = $1 AND content_lc LIKE $2)
                  ORDER BY id",
            )
            .await?;
        // A generic plan (chosen after five runs of a prepared statement) knows nothing of
        // the needle and may walk the project's rows instead of the trigram index: plan
        // each search for its needle. Sent in the same pipeline as the query.
        let pattern = contains_pattern(&needle);
        let params: [&(dyn ToSql + Sync); 2] = [&project, &pattern];
        let (_, rows) = futures_util::try_join!(
            tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan"),
            tx.query(&stmt, &params)
        )?;
        rows
    };
    subgraph(tx, project, &rows).await
}

/// A `LIKE` pattern matching texts that contain `needle`: `%needle%` with `%`, `_` and the
/// escape character itself escaped by a backslash (PostgreSQL's default escape).
pub fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 8);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The answer for the entity rows `(name, entity_type, name_hash)` found: their
/// observations and the relations with an endpoint among them. Two statements, pipelined.
async fn subgraph(tx: &Tx<'_>, project: i64, rows: &[Row]) -> Result<KnowledgeGraph, GraphFailure> {
    let entities: Vec<Entity> = rows.iter().map(entity).collect::<Result<_, _>>()?;
    if entities.is_empty() {
        return Ok(KnowledgeGraph::default());
    }
    let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.try_get(2)).collect::<Result<_, _>>()?;
    let obs = tx.prepare_cached(
        "SELECT entity_name, content FROM memory_observations
          WHERE project_id = $1 AND entity_hash = ANY($2) ORDER BY id",
    );
    let rels = tx.prepare_cached(
        "SELECT from_entity, to_entity, relation_type FROM memory_relations
          WHERE project_id = $1 AND (from_hash = ANY($2) OR to_hash = ANY($2)) ORDER BY id",
    );
    let (obs, rels) = futures_util::try_join!(obs, rels)?;
    let params: [&(dyn ToSql + Sync); 2] = [&project, &hashes];
    let (obs, rels) = futures_util::try_join!(tx.query(&obs, &params), tx.query(&rels, &params))?;
    let entities = attach_observations(entities, &obs)?;
    Ok(KnowledgeGraph { entities, relations: rels.iter().map(relation).collect::<Result<_, _>>()? })
}

fn entity(row: &Row) -> Result<Entity, tokio_postgres::Error> {
    Ok(Entity { name: row.try_get(0)?, entity_type: row.try_get(1)?, observations: Vec::new() })
}

fn relation(row: &Row) -> Result<Relation, tokio_postgres::Error> {
    Ok(Relation { from: row.try_get(0)?, to: row.try_get(1)?, relation_type: row.try_get(2)? })
}

/// Distributes observation rows `(entity_name, content)`, in id order, to their entities.
fn attach_observations(mut entities: Vec<Entity>, rows: &[Row]) -> Result<Vec<Entity>, tokio_postgres::Error> {
    let index: HashMap<String, usize> = entities.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
    for row in rows {
        let name: &str = row.try_get(0)?;
        if let Some(&i) = index.get(name) {
            entities[i].observations.push(row.try_get(1)?);
        }
    }
    Ok(entities)
}

/// Merges `graph` into the project as `import` merges a file into SQLite: entities
/// created when missing, every observation and relation added unless present.
pub(crate) async fn import_graph(
    tx: &Tx<'_>,
    project: i64,
    graph: &KnowledgeGraph,
) -> Result<ImportReport, GraphFailure> {
    check_entities(&graph.entities)?;
    check_relations(&graph.relations)?;
    let mut report = ImportReport::default();
    let insert = tx.prepare_cached(INSERT_ENTITY).await?;
    for n in pipelined(graph.entities.iter().map(|e| insert_entity(tx, &insert, project, e)).collect()).await? {
        match n {
            1 => report.entities_added += 1,
            _ => report.entities_skipped += 1,
        }
    }
    let insert = tx.prepare_cached(INSERT_OBSERVATION).await?;
    let jobs: Vec<(&String, &String)> =
        graph.entities.iter().flat_map(|e| e.observations.iter().map(move |c| (&e.name, c))).collect();
    for n in pipelined(jobs.iter().map(|(e, c)| insert_observation(tx, &insert, project, e, c)).collect()).await? {
        match n {
            1 => report.observations_added += 1,
            _ => report.observations_skipped += 1,
        }
    }
    let insert = tx.prepare_cached(INSERT_RELATION).await?;
    for n in pipelined(graph.relations.iter().map(|r| insert_relation(tx, &insert, project, r)).collect()).await? {
        match n {
            1 => report.relations_added += 1,
            _ => report.relations_skipped += 1,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_likes_own_characters() {
        assert_eq!(contains_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(contains_pattern("ümlaut"), "%ümlaut%");
    }

    #[test]
    fn lower_is_javascripts() {
        assert_eq!(lower("ÄÖÜ ΣΑΣ"), "äöü σας");
    }
}
