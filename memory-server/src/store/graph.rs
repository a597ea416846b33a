//! The nine memory operations as SQL over one connection or transaction.
//! Reads run a constant number of statements however many entities they return
//! (sets of names travel as one JSON array through `json_each`); writes are called
//! inside the caller's `BEGIN IMMEDIATE` transaction.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::model::{AddedObservations, Entity, KnowledgeGraph, ObservationAddition, ObservationDeletion, Relation};

pub mod browse;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The official server's wording, which clients may match on.
    #[error("Entity with name {0} not found")]
    EntityNotFound(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Queries shorter than this many characters cannot be answered by a trigram index.
const TRIGRAM: usize = 3;

/// The names of the entities a non-empty lower-cased needle matches, found through the
/// trigram indexes: `?1` and `?3` are the MATCH expressions for the entity and the
/// observation index (see [`selective_phrase`]), `?2` the needle. The index yields
/// candidates; the `instr` recheck on their stored lower-cased text (`entity_text`,
/// `observation_text`: see `migrations/0006_search_text.sql`) is what makes the answer
/// the scan's (see `trigram_phrase` for the rows it keeps out). Names of observations
/// whose entity does not exist are in it too: callers keep only entities that exist.
/// Shared text of `search_nodes` and the browser's search, so the two match the same
/// entities.
macro_rules! indexed_matches {
    () => {
        "SELECT name FROM entity_text
          WHERE id IN (SELECT rowid FROM entity_fts WHERE entity_fts MATCH ?1)
            AND (instr(name_lc, ?2) > 0 OR instr(entity_type_lc, ?2) > 0)
         UNION
         SELECT entity_name FROM observation_text
          WHERE id IN (SELECT rowid FROM observation_fts WHERE observation_fts MATCH ?3)
            AND instr(content_lc, ?2) > 0"
    };
}

/// [`indexed_matches`] by scanning every row's stored lower-cased text, for needles the
/// index cannot answer; `?1` is the lower-cased needle, `?2` its [`signature`]. Per row,
/// an integer test of the stored signature, and the built-in `instr` only where it holds
/// every character of the needle; no lookup in the base tables (a match's name is stored
/// beside its text). For a letter or two that almost no row holds, about 20 ms of CPU for
/// 100,000 entities, where `instr(lower(..))` over the base rows took 75.
macro_rules! scanned_matches {
    () => {
        "SELECT name FROM entity_text
          WHERE (name_sig & ?2 = ?2 AND instr(name_lc, ?1) > 0)
             OR (entity_type_sig & ?2 = ?2 AND instr(entity_type_lc, ?1) > 0)
         UNION
         SELECT entity_name FROM observation_text WHERE content_sig & ?2 = ?2 AND instr(content_lc, ?1) > 0"
    };
}

/// Stores the lower-cased text and signatures of the entities matching the condition
/// `$which` (on `entities`) in `entity_text`: `lower()` once per text (`MATERIALIZED`),
/// [`signature`]s of its results (see `migrations/0006_search_text.sql`).
macro_rules! store_entity_text {
    ($which:literal) => {
        concat!(
            "WITH t AS MATERIALIZED (SELECT rowid AS id, name, lower(name) AS name_lc, lower(entity_type) AS type_lc
                                       FROM entities WHERE ",
            $which,
            ")
             INSERT INTO entity_text (id, name_sig, entity_type_sig, name, name_lc, entity_type_lc)
                 SELECT id, search_signature(name_lc), search_signature(type_lc), name, name_lc, type_lc FROM t"
        )
    };
}

/// [`store_entity_text`] for the observations matching `$which` (on `observations`).
macro_rules! store_observation_text {
    ($which:literal) => {
        concat!(
            "WITH t AS MATERIALIZED (SELECT id, entity_name, lower(content) AS lc FROM observations WHERE ",
            $which,
            ")
             INSERT INTO observation_text (id, content_sig, entity_name, content_lc)
                 SELECT id, search_signature(lc), entity_name, lc FROM t"
        )
    };
}

pub fn create_entities(conn: &Connection, entities: &[Entity]) -> Result<Vec<Entity>, GraphError> {
    let mut insert_entity =
        conn.prepare_cached("INSERT OR IGNORE INTO entities (name, entity_type) VALUES (?1, ?2)")?;
    let mut insert_obs =
        conn.prepare_cached("INSERT OR IGNORE INTO observations (entity_name, content) VALUES (?1, ?2)")?;
    let mut created = Vec::new();
    for entity in entities {
        if insert_entity.execute(params![entity.name, entity.entity_type])? == 0 {
            continue; // exists already, or repeated within this call
        }
        // The result shows what was stored: contents repeated within the entity once.
        let mut stored = Vec::with_capacity(entity.observations.len());
        for content in &entity.observations {
            if insert_obs.execute(params![entity.name, content])? == 1 {
                stored.push(content.clone());
            }
        }
        created.push(Entity {
            name: entity.name.clone(),
            entity_type: entity.entity_type.clone(),
            observations: stored,
        });
    }
    Ok(created)
}

pub fn create_relations(conn: &Connection, relations: &[Relation]) -> Result<Vec<Relation>, GraphError> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO relations (from_entity, to_entity, relation_type) VALUES (?1, ?2, ?3)",
    )?;
    let mut created = Vec::new();
    for r in relations {
        if insert.execute(params![r.from, r.to, r.relation_type])? == 1 {
            created.push(r.clone());
        }
    }
    Ok(created)
}

pub fn add_observations(
    conn: &Connection,
    additions: &[ObservationAddition],
) -> Result<Vec<AddedObservations>, GraphError> {
    let mut exists = conn.prepare_cached("SELECT 1 FROM entities WHERE name = ?1")?;
    let mut insert =
        conn.prepare_cached("INSERT OR IGNORE INTO observations (entity_name, content) VALUES (?1, ?2)")?;
    let mut results = Vec::with_capacity(additions.len());
    for add in additions {
        if exists.query_row([&add.entity_name], |_| Ok(())).optional()?.is_none() {
            // The caller's transaction is rolled back: nothing of this call is written.
            return Err(GraphError::EntityNotFound(add.entity_name.clone()));
        }
        let mut added = Vec::new();
        for content in &add.contents {
            if insert.execute(params![add.entity_name, content])? == 1 {
                added.push(content.clone());
            }
        }
        results.push(AddedObservations { entity_name: add.entity_name.clone(), added_observations: added });
    }
    Ok(results)
}

pub fn delete_entities(conn: &Connection, names: &[String]) -> Result<(), GraphError> {
    let mut del_obs = conn.prepare_cached("DELETE FROM observations WHERE entity_name = ?1")?;
    let mut del_rel = conn.prepare_cached("DELETE FROM relations WHERE from_entity = ?1 OR to_entity = ?1")?;
    let mut del_entity = conn.prepare_cached("DELETE FROM entities WHERE name = ?1")?;
    for name in names {
        del_obs.execute([name])?;
        del_rel.execute([name])?;
        del_entity.execute([name])?;
    }
    Ok(())
}

pub fn delete_observations(conn: &Connection, deletions: &[ObservationDeletion]) -> Result<(), GraphError> {
    let mut del = conn.prepare_cached("DELETE FROM observations WHERE entity_name = ?1 AND content = ?2")?;
    for d in deletions {
        for content in &d.observations {
            del.execute(params![d.entity_name, content])?;
        }
    }
    Ok(())
}

pub fn delete_relations(conn: &Connection, relations: &[Relation]) -> Result<(), GraphError> {
    let mut del =
        conn.prepare_cached("DELETE FROM relations WHERE from_entity = ?1 AND to_entity = ?2 AND relation_type = ?3")?;
    for r in relations {
        del.execute(params![r.from, r.to, r.relation_type])?;
    }
    Ok(())
}

/// The whole graph: entities in insertion order, each with its observations in insertion
/// order, then relations in insertion order. Three statements.
pub fn read_graph(conn: &Connection) -> Result<KnowledgeGraph, GraphError> {
    let mut ents = conn.prepare_cached("SELECT name, entity_type FROM entities ORDER BY rowid")?;
    let entities = collect_entities(ents.query([])?)?;
    let mut obs = conn.prepare_cached("SELECT entity_name, content FROM observations ORDER BY id")?;
    let entities = attach_observations(entities, obs.query([])?)?;
    let mut rels = conn.prepare_cached("SELECT from_entity, to_entity, relation_type FROM relations ORDER BY id")?;
    let relations = collect_relations(rels.query([])?)?;
    Ok(KnowledgeGraph { entities, relations })
}

/// The named entities that exist (in graph order) and every relation with at least one
/// endpoint among them. Three statements, whatever the number of names.
pub fn open_nodes(conn: &Connection, names: &[String]) -> Result<KnowledgeGraph, GraphError> {
    let names = serde_json::to_string(names).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    subgraph(conn, &names)
}

/// [`search_nodes_planned`] with fresh counts, as a store runs it before it remembers
/// any: the tests' reference search.
#[cfg(test)]
pub fn search_nodes(conn: &Connection, query: &str) -> Result<KnowledgeGraph, GraphError> {
    search_nodes_planned(conn, query, &TrigramCounts::default())
}

/// Entities whose name, type or any observation contains `query`, compared lower-cased as
/// JavaScript's `toLowerCase` does, plus the relations touching them (an empty query
/// matches every entity). Queries of three or more characters are looked up in the
/// trigram index (see `trigram_phrase`); shorter ones scan the stored lower-cased text
/// (see [`scanned_matches`]). Four statements. Planned with the store's remembered
/// trigram counts (see [`TrigramCounts`]), which spare most searches the counting.
pub fn search_nodes_planned(
    conn: &Connection,
    query: &str,
    counts: &TrigramCounts,
) -> Result<KnowledgeGraph, GraphError> {
    let names: String = match Matcher::plan(conn, query, counts)? {
        // Everything matches, but (as in the official server) relations between two
        // entities that do not exist are still left out, so this is not read_graph.
        Matcher::All => {
            conn.prepare_cached("SELECT json_group_array(name) FROM entities")?.query_row([], |r| r.get(0))?
        }
        Matcher::Indexed { entity_phrase, needle, observation_phrase, .. } => conn
            .prepare_cached(concat!("SELECT json_group_array(name) FROM (", indexed_matches!(), ")"))?
            .query_row(params![entity_phrase, needle, observation_phrase], |r| r.get(0))?,
        Matcher::Scan { needle } => conn
            .prepare_cached(concat!("SELECT json_group_array(name) FROM (", scanned_matches!(), ")"))?
            .query_row(params![needle, signature(&needle)], |r| r.get(0))?,
    };
    subgraph(conn, &names)
}

/// How the entities a query matches are found: the decision `search_nodes` and the
/// browser's search share.
enum Matcher {
    /// The empty query matches every entity.
    All,
    /// Three or more characters: the trigram indexes, planned (see [`indexed_matches`]).
    /// `selective` when both indexes are asked for a trigram or two that the remembered
    /// counts show to be in fewer than [`TrigramCounts`]' counting limit of rows, so the
    /// candidates are few whatever the graph's size.
    Indexed { entity_phrase: String, needle: String, observation_phrase: String, selective: bool },
    /// Shorter needles, or needles holding a NUL: a scan (see [`scanned_matches`]).
    Scan { needle: String },
}

impl Matcher {
    /// Lower-cases `query` as JavaScript does and plans the lookup with the remembered
    /// trigram counts (counting the trigrams not yet remembered).
    fn plan(conn: &Connection, query: &str, counts: &TrigramCounts) -> Result<Matcher, GraphError> {
        let needle = query.to_lowercase();
        if needle.is_empty() {
            return Ok(Matcher::All);
        }
        let Some(phrase) = trigram_phrase(&needle) else { return Ok(Matcher::Scan { needle }) };
        let entity_phrase = selective_phrase(conn, counts, Index::Entities, &needle, &phrase)?;
        let observation_phrase = selective_phrase(conn, counts, Index::Observations, &needle, &phrase)?;
        // A plan other than the whole phrase picked counted trigrams (see `TrigramCounts::choose`).
        let selective = entity_phrase != phrase && observation_phrase != phrase;
        Ok(Matcher::Indexed { entity_phrase, needle, observation_phrase, selective })
    }

    /// The rowids of the existing entities matched (every entity for the empty query),
    /// ascending (the order `search_nodes` lists them in), by `search_nodes`' own
    /// matching statement. One statement.
    fn rowids(&self, conn: &Connection) -> Result<Vec<i64>, GraphError> {
        let rows: rusqlite::Result<Vec<i64>> = match self {
            Matcher::All => conn
                .prepare_cached("SELECT rowid FROM entities ORDER BY rowid")?
                .query([])?
                .mapped(|r| r.get(0))
                .collect(),
            Matcher::Indexed { entity_phrase, needle, observation_phrase, .. } => conn
                .prepare_cached(concat!(
                    "SELECT rowid FROM entities WHERE name IN (",
                    indexed_matches!(),
                    ") ORDER BY rowid"
                ))?
                .query(params![entity_phrase, needle, observation_phrase])?
                .mapped(|r| r.get(0))
                .collect(),
            Matcher::Scan { needle } => conn
                .prepare_cached(concat!(
                    "SELECT rowid FROM entities WHERE name IN (",
                    scanned_matches!(),
                    ") ORDER BY rowid"
                ))?
                .query(params![needle, signature(needle)])?
                .mapped(|r| r.get(0))
                .collect(),
        };
        Ok(rows?)
    }
}

/// Whether written rows wait to be (re-)indexed for search: every write only notes the
/// rows it changed (see `migrations/0004_deferred_search_index.sql`). One indexed lookup.
pub fn search_index_is_stale(conn: &Connection) -> Result<bool, GraphError> {
    let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM search_stale)")?;
    Ok(stmt.query_row([], |r| r.get(0))?)
}

/// Brings the search index up to date: re-indexes every noted row (ours and those other
/// programs wrote) with our JavaScript-compatible `lower()`, and drops the rows that
/// were deleted. The lower-cased text and its signature are stored first
/// (`entity_text`, `observation_text`) and the trigram indexes are filled from them, so
/// `lower()` runs once per text. One FTS5 segment for the lot. Run in a write
/// transaction.
pub fn repair_search_index(conn: &Connection) -> Result<(), GraphError> {
    conn.execute_batch(concat!(
        "DELETE FROM entity_fts WHERE rowid IN (SELECT id FROM search_stale WHERE kind = 'entity');
         DELETE FROM entity_text WHERE id IN (SELECT id FROM search_stale WHERE kind = 'entity');",
        store_entity_text!("rowid IN (SELECT id FROM search_stale WHERE kind = 'entity')"),
        ";
         INSERT INTO entity_fts(rowid, name, entity_type)
             SELECT id, name_lc, entity_type_lc FROM entity_text
              WHERE id IN (SELECT id FROM search_stale WHERE kind = 'entity');
         DELETE FROM observation_fts WHERE rowid IN (SELECT id FROM search_stale WHERE kind = 'observation');
         DELETE FROM observation_text WHERE id IN (SELECT id FROM search_stale WHERE kind = 'observation');",
        store_observation_text!("id IN (SELECT id FROM search_stale WHERE kind = 'observation')"),
        ";
         INSERT INTO observation_fts(rowid, content)
             SELECT id, content_lc FROM observation_text
              WHERE id IN (SELECT id FROM search_stale WHERE kind = 'observation');
         DELETE FROM search_stale;"
    ))?;
    Ok(())
}

/// Re-indexes at most `limit` noted rows of each kind (the oldest first) and forgets
/// their notes; returns how many rows were taken. For the writers' idle moments: a
/// bounded piece of indexing never holds the write lock for long, where the whole
/// backlog of a busy minute would (see `Store::combine`). Run in a write transaction.
pub fn repair_search_index_chunk(conn: &Connection, limit: usize) -> Result<usize, GraphError> {
    let mut taken = 0;
    // Every statement takes the same noted rows: the notes are forgotten only after,
    // by the last two, whose counts are the rows taken.
    for (i, sql) in chunk_statements(limit).enumerate() {
        let changed = conn.prepare_cached(&sql)?.execute([])?;
        if i >= CHUNK_FORGET_FROM {
            taken += changed;
        }
    }
    Ok(taken)
}

/// Where the statements that forget the notes start in [`chunk_statements`].
const CHUNK_FORGET_FROM: usize = 8;

/// The statements of [`repair_search_index_chunk`], the limit written into their text.
/// A bound `LIMIT ?` would cost a full re-prepare on every run: SQLite's planner reads
/// a bound LIMIT's value, which marks the statement as expiring whenever that
/// parameter is bound again (even to the same value), and re-preparing these
/// statements was two fifths of the indexing's time. One limit per call site, so the
/// statement cache holds one copy of each.
fn chunk_statements(limit: usize) -> impl Iterator<Item = String> {
    const TEMPLATES: [&str; CHUNK_FORGET_FROM + 2] = [
        "DELETE FROM entity_fts WHERE rowid IN
             (SELECT id FROM (SELECT id FROM search_stale WHERE kind = 'entity' ORDER BY id LIMIT {limit})
               WHERE id IN (SELECT id FROM entity_fts_docsize))",
        "DELETE FROM entity_text WHERE id IN
             (SELECT id FROM search_stale WHERE kind = 'entity' ORDER BY id LIMIT {limit})",
        store_entity_text!("rowid IN (SELECT id FROM search_stale WHERE kind = 'entity' ORDER BY id LIMIT {limit})"),
        "INSERT INTO entity_fts(rowid, name, entity_type)
             SELECT id, name_lc, entity_type_lc FROM entity_text WHERE id IN
             (SELECT id FROM search_stale WHERE kind = 'entity' ORDER BY id LIMIT {limit})",
        "DELETE FROM observation_fts WHERE rowid IN
             (SELECT id FROM (SELECT id FROM search_stale WHERE kind = 'observation' ORDER BY id LIMIT {limit})
               WHERE id IN (SELECT id FROM observation_fts_docsize))",
        "DELETE FROM observation_text WHERE id IN
             (SELECT id FROM search_stale WHERE kind = 'observation' ORDER BY id LIMIT {limit})",
        store_observation_text!(
            "id IN (SELECT id FROM search_stale WHERE kind = 'observation' ORDER BY id LIMIT {limit})"
        ),
        "INSERT INTO observation_fts(rowid, content)
             SELECT id, content_lc FROM observation_text WHERE id IN
             (SELECT id FROM search_stale WHERE kind = 'observation' ORDER BY id LIMIT {limit})",
        "DELETE FROM search_stale WHERE kind = 'entity' AND id IN
             (SELECT id FROM search_stale WHERE kind = 'entity' ORDER BY id LIMIT {limit})",
        "DELETE FROM search_stale WHERE kind = 'observation' AND id IN
             (SELECT id FROM search_stale WHERE kind = 'observation' ORDER BY id LIMIT {limit})",
    ];
    let limit = limit.to_string();
    TEMPLATES.into_iter().map(move |t| t.replace("{limit}", &limit))
}

/// Indexes for search the rows a bulk import added (entities after rowid `last_entity`,
/// observations after id `last_observation`), which its dropped insert triggers did not
/// note (see `transfer::DeferredIndex`, which first indexes every noted row, so none of
/// these ids is in the search tables yet): the stored lower-cased text, then the trigram
/// indexes from it, as [`repair_search_index`] does. Run in the import's transaction.
pub fn index_imported_rows(conn: &Connection, last_entity: i64, last_observation: i64) -> Result<(), GraphError> {
    conn.execute(store_entity_text!("rowid > ?1"), [last_entity])?;
    conn.execute(
        "INSERT INTO entity_fts(rowid, name, entity_type)
             SELECT id, name_lc, entity_type_lc FROM entity_text WHERE id > ?1",
        [last_entity],
    )?;
    conn.execute(store_observation_text!("id > ?1"), [last_observation])?;
    conn.execute(
        "INSERT INTO observation_fts(rowid, content) SELECT id, content_lc FROM observation_text WHERE id > ?1",
        [last_observation],
    )?;
    Ok(())
}

/// One bounded step of merging the search index's segments: at most about `pages`
/// pages of merge work per index, on levels with enough segments to be worth it (FTS5's
/// `usermerge`). Returns whether there was any work (none: the index is merged enough).
/// Automatic merging is off (`migrations/0005_incremental_search_merge.sql`): it did
/// its work in large quanta inside whichever write crossed a threshold. Run in a write
/// transaction.
pub fn merge_search_index_step(conn: &Connection, pages: u32) -> Result<bool, GraphError> {
    let mut worked = false;
    for sql in [
        "INSERT INTO entity_fts(entity_fts, rank) VALUES ('merge', ?1)",
        "INSERT INTO observation_fts(observation_fts, rank) VALUES ('merge', ?1)",
    ] {
        let before = conn.total_changes();
        conn.prepare_cached(sql)?.execute([pages])?;
        // The command itself counts one change; a merge that wrote segments, more.
        worked |= conn.total_changes() - before > 1;
    }
    Ok(worked)
}

/// The FTS5 phrase query for the lower-cased `needle`, or `None` when the trigram index
/// cannot answer it and the caller must scan.
///
/// The index finds every row whose lower-cased text contains the needle, but it may
/// also return rows that do not: FTS5's tokenizer does not see text exactly as stored.
/// It skips NUL characters and reads U+FFFE and U+FFFF as U+FFFD, so `"abc"` would
/// find `"a\0bc"` and `"x\u{FFFD}y"` would find `"x\u{FFFE}y"`. Since it maps every
/// character on its own, the same way in rows and in queries, a substring still maps to
/// a substring and no real match is lost; callers recheck the candidates. Needles with
/// a NUL scan: FTS5 reads a MATCH expression only up to its first NUL (the query would
/// fail as an unterminated string) and, with the NULs skipped, fewer than three
/// characters might be left to form a trigram.
fn trigram_phrase(needle: &str) -> Option<String> {
    if needle.contains('\0') || needle.chars().count() < TRIGRAM {
        return None;
    }
    Some(format!("\"{}\"", needle.replace('"', "\"\"")))
}

/// The search signature of a lower-cased text: the bit [`signature_bit`] of every
/// character it holds. A text that holds a needle holds each of its characters, so its
/// signature holds the needle's, and `sig & needle_sig = needle_sig` is a test that never
/// drops a match (`instr` after it decides): a needle of a letter or two that few texts
/// hold skips nearly every text without reading it. Stored in `entity_text` and
/// `observation_text` (`migrations/0006_search_text.sql`): the bits are part of the file
/// format, and changing them needs a migration that computes every signature again.
pub(crate) fn signature(text: &str) -> i64 {
    text.chars().fold(0_u64, |sig, c| sig | 1 << signature_bit(c)) as i64
}

/// Which of the 64 bits stands for `c`: one each for `a` to `z` and `0` to `9` (what most
/// short searches are typed with, so a rare letter filters well), eight shared by the other
/// ASCII characters (NUL included), twenty shared by all other characters (by a hash of
/// their code point).
fn signature_bit(c: char) -> u32 {
    match c {
        'a'..='z' => c as u32 - 'a' as u32,
        '0'..='9' => 26 + (c as u32 - '0' as u32),
        _ if c.is_ascii() => 36 + c as u32 % 8,
        _ => 44 + ((c as u32).wrapping_mul(0x9E37_79B1) >> 16) % 20,
    }
}

/// `search_signature(x)` in SQL: the [`signature`] of a text; every bit (-1) for a BLOB,
/// a number, or a text that is not UTF-8, in which `instr` may find a needle's bytes
/// without its characters; NULL for NULL, in which `instr` finds nothing.
pub(crate) fn signature_of_value(value: rusqlite::types::ValueRef<'_>) -> Option<i64> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => None,
        ValueRef::Text(bytes) => Some(std::str::from_utf8(bytes).map_or(-1, signature)),
        ValueRef::Blob(_) | ValueRef::Integer(_) | ValueRef::Real(_) => Some(-1),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Index {
    Entities,
    Observations,
}

/// Trigrams probed per index at most (spread over a long needle), so a search runs a
/// bounded number of statements whatever the needle's length.
pub(crate) const MAX_PROBES: usize = 6;
/// Remembered counts kept at most; past this the memory starts over.
const MAX_REMEMBERED: usize = 50_000;

/// How many rows of each index hold a trigram, counted up to a limit and remembered:
/// the statistics [`selective_phrase`] plans a search with. Counting costs about as
/// much as a search (10 to 80 µs per trigram), but the trigrams of searches repeat, so
/// most are counted once. A count may be out of date (rows come and go); that only
/// makes a plan slower, never an answer wrong, since every plan finds a superset of
/// the needle's rows and the `instr` recheck decides. Forgotten now and then by the
/// store (see `Store::write`) so counts follow a growing graph.
pub struct TrigramCounts {
    counts: std::sync::Mutex<HashMap<(Index, String), i64>>,
    /// Below this a trigram alone is the whole query.
    few: i64,
    /// Counting stops here: the trigram is common.
    many: i64,
}

impl Default for TrigramCounts {
    fn default() -> Self {
        TrigramCounts::with_limits(64, 1024)
    }
}

impl TrigramCounts {
    /// Counts with other limits than the default 64 and 1024 (tests use tiny ones to
    /// reach every plan with tiny graphs).
    pub fn with_limits(few: i64, many: i64) -> Self {
        TrigramCounts { counts: std::sync::Mutex::new(HashMap::new()), few, many }
    }

    pub fn forget(&self) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The plan for trigrams with their counts (sorted here, rarest first).
    fn choose<'a>(&self, counted: &'a mut [(i64, String)]) -> Plan<'a> {
        counted.sort_by_key(|(hits, _)| *hits);
        match &*counted {
            [(rarest, trigram), ..] if *rarest < self.few => Plan::Rarest(trigram),
            [(_, first), (second_hits, second), ..] if *second_hits < self.many => Plan::Pair(first, second),
            [(rarest, trigram), ..] if *rarest < self.many => Plan::Rarest(trigram),
            _ => Plan::Phrase,
        }
    }

    /// Whether a search for `query` is known to be cheap without touching the database:
    /// the counts of its trigrams in both indexes are remembered and plan it with a
    /// trigram or a pair below the counting limit, so it reads at most a few thousand
    /// index entries and its answer holds at most as many candidates.
    pub fn search_is_cheap(&self, query: &str) -> bool {
        let needle = query.to_lowercase();
        if needle.contains('\0') {
            return false;
        }
        let Some(picked) = probed_trigrams(&needle) else { return false };
        let remembered = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        [Index::Entities, Index::Observations].into_iter().all(|index| {
            let counted: Option<Vec<(i64, String)>> =
                picked.iter().map(|t| remembered.get(&(index, t.clone())).map(|&n| (n, t.clone()))).collect();
            counted.is_some_and(|mut counted| !matches!(self.choose(&mut counted), Plan::Phrase))
        })
    }

    fn count(&self, conn: &Connection, index: Index, trigram: &str) -> Result<i64, GraphError> {
        let key = (index, trigram.to_owned());
        if let Some(&n) = self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(n);
        }
        let mut probe = conn.prepare_cached(match index {
            Index::Entities => "SELECT count(*) FROM (SELECT 1 FROM entity_fts WHERE entity_fts MATCH ?1 LIMIT ?2)",
            Index::Observations => {
                "SELECT count(*) FROM (SELECT 1 FROM observation_fts WHERE observation_fts MATCH ?1 LIMIT ?2)"
            }
        })?;
        let n: i64 = probe.query_row(params![trigram, self.many], |r| r.get(0))?;
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MAX_REMEMBERED {
            counts.clear();
        }
        counts.insert(key, n);
        Ok(n)
    }
}

/// The MATCH expression that finds the candidates for `needle` most cheaply in one
/// index. FTS5 reads the whole posting list of every trigram of a phrase, so a needle
/// made of common trigrams (`<g000123>`: `<g0` and `000` occur in nearly every row)
/// costs as much as the graph is large, however few rows hold the whole needle. Every
/// row holding the needle holds each of its trigrams, so any of them finds a superset
/// (the `instr` recheck makes the answer exact), and the rarest find it cheapest: the
/// rarest trigram alone when it is rare, else the two rarest together when both are
/// below the counting limit, else the rarest alone when it is, else the whole phrase
/// (all common: the phrase is the most selective query there is).
fn selective_phrase(
    conn: &Connection,
    counts: &TrigramCounts,
    index: Index,
    needle: &str,
    phrase: &str,
) -> Result<String, GraphError> {
    let Some(picked) = probed_trigrams(needle) else {
        return Ok(phrase.to_owned()); // one or two trigrams: nothing to choose
    };
    let mut counted = Vec::with_capacity(picked.len());
    for trigram in picked {
        counted.push((counts.count(conn, index, &trigram)?, trigram));
    }
    Ok(match counts.choose(&mut counted) {
        Plan::Rarest(trigram) => trigram.to_owned(),
        Plan::Pair(first, second) => format!("{first} AND {second}"),
        Plan::Phrase => phrase.to_owned(),
    })
}

/// The quoted trigrams of `needle` (lower-cased) that plans are chosen from, at most
/// [`MAX_PROBES`] spread over it; `None` when it has fewer than three.
fn probed_trigrams(needle: &str) -> Option<Vec<String>> {
    let chars: Vec<char> = needle.chars().collect();
    if chars.len() <= TRIGRAM + 1 {
        return None;
    }
    let windows: Vec<&[char]> = chars.windows(TRIGRAM).collect();
    let n = windows.len().min(MAX_PROBES);
    Some(
        (0..n)
            .map(|i| if windows.len() <= MAX_PROBES { i } else { i * (windows.len() - 1) / (MAX_PROBES - 1) })
            .map(|at| {
                let trigram: String = windows[at].iter().collect();
                format!("\"{}\"", trigram.replace('"', "\"\""))
            })
            .collect(),
    )
}

/// What one index is asked (see [`selective_phrase`]).
enum Plan<'a> {
    /// A rare trigram alone, or the rarest when it alone is below the counting limit.
    Rarest(&'a str),
    /// The two rarest, both below the counting limit.
    Pair(&'a str, &'a str),
    /// The whole needle: every trigram is common.
    Phrase,
}

/// Entities named in the JSON array `names`, their observations, and the relations with
/// at least one endpoint among them.
fn subgraph(conn: &Connection, names: &str) -> Result<KnowledgeGraph, GraphError> {
    let mut ents = conn.prepare_cached(
        "SELECT name, entity_type FROM entities
          WHERE name IN (SELECT value FROM json_each(?1)) ORDER BY rowid",
    )?;
    let entities = collect_entities(ents.query([names])?)?;
    // From here on only the names that exist matter (relations count only when an
    // endpoint is an entity of the answer), and those were just read.
    let found = serde_json::to_string(&entities.iter().map(|e| e.name.as_str()).collect::<Vec<_>>())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    let mut obs = conn.prepare_cached(
        "SELECT entity_name, content FROM observations
          WHERE entity_name IN (SELECT value FROM json_each(?1)) ORDER BY id",
    )?;
    let entities = attach_observations(entities, obs.query([&found])?)?;
    let mut rels = conn.prepare_cached(
        "SELECT from_entity, to_entity, relation_type FROM relations
          WHERE from_entity IN (SELECT value FROM json_each(?1))
             OR to_entity IN (SELECT value FROM json_each(?1))
          ORDER BY id",
    )?;
    let relations = collect_relations(rels.query([&found])?)?;
    Ok(KnowledgeGraph { entities, relations })
}

fn collect_entities(mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Entity>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(Entity { name: row.get(0)?, entity_type: row.get(1)?, observations: Vec::new() });
    }
    Ok(out)
}

/// Distributes observation rows (ordered by id) to their entities; rows of entities not
/// in `entities` (orphans another writer may have left) are ignored.
fn attach_observations(mut entities: Vec<Entity>, mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Entity>> {
    let index: HashMap<String, usize> = entities.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
    while let Some(row) = rows.next()? {
        let name = row.get_ref(0)?.as_str()?;
        if let Some(&i) = index.get(name) {
            entities[i].observations.push(row.get(1)?);
        }
    }
    Ok(entities)
}

fn collect_relations(mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Relation>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(Relation { from: row.get(0)?, to: row.get(1)?, relation_type: row.get(2)? });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Indexing in chunks prepares each of its statements once: with the limit bound as
    /// a parameter, SQLite prepared every one of them again on every run.
    #[test]
    fn indexing_in_chunks_never_prepares_its_statements_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("m.db")).unwrap();
        let limit = 2;
        store.with_writer(|conn| {
            for round in 0..3 {
                let tx = conn.transaction().unwrap();
                let entities: Vec<Entity> = (0..3)
                    .map(|i| Entity {
                        name: format!("e{round}-{i}"),
                        entity_type: "t".into(),
                        observations: vec![format!("o{round}-{i}")],
                    })
                    .collect();
                create_entities(&tx, &entities).unwrap();
                // Two of each kind, oldest first: the rest waits for the next chunk.
                assert_eq!(repair_search_index_chunk(&tx, limit).unwrap(), 2 * limit);
                tx.commit().unwrap();
            }
            for sql in chunk_statements(limit) {
                let cached = conn.prepare_cached(&sql).unwrap();
                assert_eq!(cached.get_status(StatementStatus::Run), 3, "the cached statement ran each time: {sql}");
                assert_eq!(cached.get_status(StatementStatus::RePrepare), 0, "prepared again: {sql}");
            }
            // What the chunks left is indexed by the next ones, and search finds it all.
            let tx = conn.transaction().unwrap();
            for _ in 0..10 {
                if repair_search_index_chunk(&tx, limit).unwrap() == 0 {
                    break;
                }
            }
            tx.commit().unwrap();
            assert!(!search_index_is_stale(conn).unwrap());
            let found = search_nodes(conn, "o2-").unwrap();
            assert_eq!(found.entities.len(), 3);
        });
    }
}
