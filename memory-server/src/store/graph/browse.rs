//! The graph browser's reads (`GET /ui/api/...`): a project's counts, a page of its
//! entity list or of a search's matches, one entity with its relations, and an
//! entity's neighbourhood. Each runs a fixed number of statements in the caller's read
//! transaction and returns a bounded answer however large the graph is: the browser
//! must stay quick on 100,000 entities, and nothing it asks may hold a reader long.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{GraphError, Matcher, TrigramCounts};

/// Rows a project holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub entities: u64,
    pub relations: u64,
    pub observations: u64,
}

/// The rows of each table. One statement (SQLite counts a table by walking its
/// smallest b-tree: a few milliseconds for 100,000 entities).
pub fn counts(conn: &Connection) -> Result<Counts, GraphError> {
    let mut stmt = conn.prepare_cached(
        "SELECT (SELECT count(*) FROM entities), (SELECT count(*) FROM relations),
                (SELECT count(*) FROM observations)",
    )?;
    Ok(stmt.query_row([], |r| {
        Ok(Counts {
            entities: r.get::<_, i64>(0)? as u64,
            relations: r.get::<_, i64>(1)? as u64,
            observations: r.get::<_, i64>(2)? as u64,
        })
    })?)
}

/// Where a page of a list starts: cursors are entity rowids (creation order), so a page
/// stays where it is while entities are created or deleted elsewhere in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt {
    First,
    /// The entities after this cursor.
    After(i64),
    /// The entities before this cursor (the page that ends just before it).
    Before(i64),
    Last,
}

/// One line of the entity list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRow {
    /// Its rowid: where the next or previous page starts.
    pub cursor: i64,
    pub name: String,
    pub entity_type: String,
    pub observations: u64,
}

/// A page of the entity list, or of a search's matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityPage {
    pub items: Vec<EntityRow>,
    /// Entities in the whole list (matched by the search), when counted; a dense
    /// search's page is found without counting them all (see [`entity_page`]).
    pub total: Option<u64>,
    /// When not counted: how many there are at least from this page's first entity to
    /// the end of the list (from its last back to the start, for a page found walking
    /// backwards).
    pub at_least: u64,
    /// How many come before this page's first, when known.
    pub offset: Option<u64>,
    pub has_before: bool,
    pub has_after: bool,
}

/// Entities one walk looks at, at most, for a search's page (see [`entity_page`]).
pub const WALK_WINDOW: usize = 4_096;

/// The walk's test of one entity `e` (a row of `entities`) whose stored lower-cased
/// name and type are `t` (its row of `entity_text`): `search_nodes`' decision for it
/// (see `graph::scanned_matches`), its name or type holding the lower-cased needle `?1`
/// (whose signature is `?5`), or one of its observations (found by the entity-name
/// index, its text by id). Joined with `LEFT JOIN`, so that even an entity without its
/// `entity_text` row is still decided by its observations, as the scan decides it.
macro_rules! walk_test {
    () => {
        "((t.name_sig & ?5 = ?5 AND instr(t.name_lc, ?1) > 0)
          OR (t.entity_type_sig & ?5 = ?5 AND instr(t.entity_type_lc, ?1) > 0)
          OR EXISTS (SELECT 1 FROM observations o JOIN observation_text ot ON ot.id = o.id
                      WHERE o.entity_name = e.name AND ot.content_sig & ?5 = ?5 AND instr(ot.content_lc, ?1) > 0))"
    };
}

/// The page of `limit` entities at `at` among those `query` matches, with exactly
/// `search_nodes`' matching (the same lower-casing, the same entities, in the same
/// order); the empty query lists every entity.
///
/// The unfiltered list reads its page (a rowid range) and two counts. A search whose
/// plan the remembered trigram counts show to be selective runs its one indexed
/// matching statement (`search_nodes`' own), keeps the matched rowids (few) and reads
/// the page. Any other search first walks the entities from the cursor in rowid order,
/// testing each, and stops at [`WALK_WINDOW`] of them: a query most entities match
/// ("e", "ent", a common type) fills its page within a few dozen, where collecting all
/// its matches costs a third of a second on 100,000 entities; its total is then a lower
/// bound. A walk that finds less than a page in its window means the matches are sparse,
/// and the whole matching statement runs (indexed from three characters on, else a
/// scan of the stored lower-cased text) and counts them exactly.
pub fn entity_page(
    conn: &Connection,
    query: &str,
    counts: &TrigramCounts,
    at: PageAt,
    limit: usize,
) -> Result<EntityPage, GraphError> {
    entity_page_walking(conn, query, counts, at, limit, WALK_WINDOW)
}

/// [`entity_page`] with walks of at most `window` entities (tests use tiny windows to
/// reach every way of answering with tiny graphs).
pub(crate) fn entity_page_walking(
    conn: &Connection,
    query: &str,
    counts: &TrigramCounts,
    at: PageAt,
    limit: usize,
    window: usize,
) -> Result<EntityPage, GraphError> {
    let limit = limit.max(1);
    let matcher = Matcher::plan(conn, query, counts)?;
    let needle = match &matcher {
        Matcher::All => return whole_list_page(conn, at, limit),
        Matcher::Indexed { needle, .. } | Matcher::Scan { needle } => needle,
    };
    if !matches!(matcher, Matcher::Indexed { selective: true, .. })
        && let Some(page) = walk_page(conn, needle, at, limit, window)?
    {
        return Ok(page);
    }
    let rowids = matcher.rowids(conn)?;
    // `rowids` is ascending: a cursor's place is found by binary search.
    let (start, end) = match at {
        PageAt::First => (0, limit.min(rowids.len())),
        PageAt::After(c) => {
            let start = rowids.partition_point(|&r| r <= c);
            (start, (start + limit).min(rowids.len()))
        }
        PageAt::Before(c) => {
            let end = rowids.partition_point(|&r| r < c);
            (end.saturating_sub(limit), end)
        }
        PageAt::Last => (rowids.len().saturating_sub(limit), rowids.len()),
    };
    Ok(EntityPage {
        items: rows_by_rowid(conn, &rowids[start..end])?,
        total: Some(rowids.len() as u64),
        at_least: (rowids.len() - start) as u64,
        offset: Some(start as u64),
        has_before: start > 0,
        has_after: end < rowids.len(),
    })
}

/// The page at `at` found by walking at most `window` entities from the cursor
/// (backwards for `Before` and `Last`), testing each as `search_nodes` matches it, and
/// stopping at one match more than a page; `None` when the window held less than a
/// page and more entities lie beyond it.
fn walk_page(
    conn: &Connection,
    needle: &str,
    at: PageAt,
    limit: usize,
    window: usize,
) -> Result<Option<EntityPage>, GraphError> {
    let (cursor, forward) = match at {
        PageAt::First => (i64::MIN, true),
        PageAt::After(c) => (c, true),
        PageAt::Before(c) => (c, false),
        PageAt::Last => (i64::MAX, false),
    };
    let window = window as i64;
    let mut walk = conn.prepare_cached(if forward {
        concat!(
            "SELECT e.rowid FROM (SELECT rowid, name FROM entities WHERE rowid > ?2 ORDER BY rowid LIMIT ?3) e
               LEFT JOIN entity_text t ON t.id = e.rowid
              WHERE ",
            walk_test!(),
            " ORDER BY e.rowid LIMIT ?4"
        )
    } else {
        concat!(
            "SELECT e.rowid FROM (SELECT rowid, name FROM entities WHERE rowid < ?2 ORDER BY rowid DESC LIMIT ?3) e
               LEFT JOIN entity_text t ON t.id = e.rowid
              WHERE ",
            walk_test!(),
            " ORDER BY e.rowid DESC LIMIT ?4"
        )
    })?;
    let mut matched: Vec<i64> = walk
        .query(params![needle, cursor, window, limit as i64 + 1, super::signature(needle)])?
        .mapped(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    let began_at_edge = matches!(at, PageAt::First | PageAt::Last);
    let more = matched.len() > limit;
    let whole = if more {
        false
    } else {
        // The whole window was looked at: did it hold every entity to the end of the
        // list? (A rowid walk of at most one window more.)
        let mut span = conn.prepare_cached(if forward {
            "SELECT count(*) FROM (SELECT 1 FROM entities WHERE rowid > ?1 LIMIT ?2)"
        } else {
            "SELECT count(*) FROM (SELECT 1 FROM entities WHERE rowid < ?1 LIMIT ?2)"
        })?;
        if span.query_row(params![cursor, window + 1], |r| r.get::<_, i64>(0))? > window {
            return Ok(None); // sparse: less than a page in a whole window
        }
        true
    };
    let found = matched.len() as u64;
    matched.truncate(limit);
    if !forward {
        matched.reverse();
    }
    // Every match from the cursor to the end was seen; counted from the start of the
    // list when the walk began at an end of it.
    let counted = whole && began_at_edge;
    Ok(Some(EntityPage {
        items: rows_by_rowid(conn, &matched)?,
        total: counted.then_some(found),
        at_least: found,
        offset: match at {
            PageAt::First => Some(0),
            PageAt::Last if counted => Some(0),
            _ => None,
        },
        // Walking forward, what lies after the page is known, and before a cursor the
        // browser paged past lies at least that page (and the other way round backwards).
        has_before: if forward { !began_at_edge } else { more },
        has_after: if forward { more } else { !began_at_edge },
    }))
}

/// A page of the unfiltered list by rowid range: `limit` rows and two index walks, never
/// the whole table.
fn whole_list_page(conn: &Connection, at: PageAt, limit: usize) -> Result<EntityPage, GraphError> {
    let n = limit as i64;
    let rowids: Vec<i64> = match at {
        PageAt::First | PageAt::After(_) => {
            let after = if let PageAt::After(c) = at { c } else { i64::MIN };
            let mut stmt =
                conn.prepare_cached("SELECT rowid FROM entities WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?;
            stmt.query(params![after, n])?.mapped(|r| r.get(0)).collect::<Result<_, _>>()?
        }
        PageAt::Before(_) | PageAt::Last => {
            let before = if let PageAt::Before(c) = at { c } else { i64::MAX };
            let mut stmt =
                conn.prepare_cached("SELECT rowid FROM entities WHERE rowid < ?1 ORDER BY rowid DESC LIMIT ?2")?;
            let mut r: Vec<i64> = stmt.query(params![before, n])?.mapped(|r| r.get(0)).collect::<Result<_, _>>()?;
            r.reverse();
            r
        }
    };
    let mut totals = conn
        .prepare_cached("SELECT (SELECT count(*) FROM entities), (SELECT count(*) FROM entities WHERE rowid < ?1)")?;
    let first = rowids.first().copied().unwrap_or(i64::MAX);
    let (total, offset): (i64, i64) = totals.query_row([first], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (total, offset) = (total as u64, offset as u64);
    let end = offset + rowids.len() as u64;
    Ok(EntityPage {
        items: rows_by_rowid(conn, &rowids)?,
        total: Some(total),
        at_least: total - offset.min(total),
        offset: Some(offset),
        has_before: offset > 0,
        has_after: end < total,
    })
}

/// The list lines of these entities, in rowid order, with their observation counts
/// (one index lookup each).
fn rows_by_rowid(conn: &Connection, rowids: &[i64]) -> Result<Vec<EntityRow>, GraphError> {
    if rowids.is_empty() {
        return Ok(Vec::new());
    }
    let set = json_array(rowids)?;
    let mut stmt = conn.prepare_cached(
        "SELECT e.rowid, e.name, e.entity_type,
                (SELECT count(*) FROM observations o WHERE o.entity_name = e.name)
           FROM entities e WHERE e.rowid IN (SELECT value FROM json_each(?1)) ORDER BY e.rowid",
    )?;
    let rows = stmt.query([set])?.mapped(|r| {
        Ok(EntityRow {
            cursor: r.get(0)?,
            name: r.get(1)?,
            entity_type: r.get(2)?,
            observations: r.get::<_, i64>(3)? as u64,
        })
    });
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A relation seen from one of its ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// The entity at the other end.
    pub other: String,
    pub relation_type: String,
    /// Whether that entity exists (relations may name entities that do not).
    pub exists: bool,
}

/// One entity as its page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityDetail {
    pub name: String,
    pub entity_type: String,
    /// In the order they were written, at most the limit asked for.
    pub observations: Vec<String>,
    pub observations_total: u64,
    /// Relations from this entity, oldest first, at most the limit asked for.
    pub outgoing: Vec<Link>,
    pub outgoing_total: u64,
    /// Relations to this entity, oldest first, at most the limit asked for.
    pub incoming: Vec<Link>,
    pub incoming_total: u64,
}

/// The entity named `name` (`None` when there is none): its type, its first `max_items`
/// observations in written order, and its first `max_items` outgoing and incoming
/// relations, with the totals of each (an agent's journal entity may hold thousands).
/// Five statements.
pub fn entity(conn: &Connection, name: &str, max_items: usize) -> Result<Option<EntityDetail>, GraphError> {
    let mut ty = conn.prepare_cached(
        "SELECT entity_type, (SELECT count(*) FROM observations WHERE entity_name = ?1) FROM entities WHERE name = ?1",
    )?;
    let Some((entity_type, observations_total)) =
        ty.query_row([name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).optional()?
    else {
        return Ok(None);
    };
    let max = max_items as i64;
    let mut obs =
        conn.prepare_cached("SELECT content FROM observations WHERE entity_name = ?1 ORDER BY id LIMIT ?2")?;
    let observations = obs.query(params![name, max])?.mapped(|r| r.get(0)).collect::<Result<_, _>>()?;
    let mut out = conn.prepare_cached(
        "SELECT r.to_entity, r.relation_type, EXISTS (SELECT 1 FROM entities WHERE name = r.to_entity)
           FROM relations r WHERE r.from_entity = ?1 ORDER BY r.id LIMIT ?2",
    )?;
    let outgoing = out.query(params![name, max])?.mapped(link).collect::<Result<_, _>>()?;
    let mut inc = conn.prepare_cached(
        "SELECT r.from_entity, r.relation_type, EXISTS (SELECT 1 FROM entities WHERE name = r.from_entity)
           FROM relations r WHERE r.to_entity = ?1 ORDER BY r.id LIMIT ?2",
    )?;
    let incoming = inc.query(params![name, max])?.mapped(link).collect::<Result<_, _>>()?;
    let mut totals = conn.prepare_cached(
        "SELECT (SELECT count(*) FROM relations WHERE from_entity = ?1),
                (SELECT count(*) FROM relations WHERE to_entity = ?1)",
    )?;
    let (outgoing_total, incoming_total): (i64, i64) = totals.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Some(EntityDetail {
        name: name.to_owned(),
        entity_type,
        observations,
        observations_total: observations_total as u64,
        outgoing,
        outgoing_total: outgoing_total as u64,
        incoming,
        incoming_total: incoming_total as u64,
    }))
}

fn link(r: &rusqlite::Row<'_>) -> rusqlite::Result<Link> {
    Ok(Link { other: r.get(0)?, relation_type: r.get(1)?, exists: r.get(2)? })
}

/// One node of a neighbourhood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// `None` for a name that relations use but no entity has.
    pub entity_type: Option<String>,
    /// Hops from the centre (0 for the centre).
    pub depth: u8,
}

/// An entity's neighbourhood as the browser draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Neighbourhood {
    /// The centre first, then by distance, then by the age of the relation that
    /// reached them; at most the limit asked for.
    pub nodes: Vec<Node>,
    /// The relations among the nodes drawn (oldest first, bounded).
    pub edges: Vec<super::Relation>,
    /// Nodes within the hops asked for, the centre included: exact when `total_exact`,
    /// else a lower bound (counting stopped at [`SCAN_LIMIT`] relations per hop).
    pub total: u64,
    pub total_exact: bool,
}

/// Relations read per hop at most while expanding a neighbourhood: a hub with more
/// relations makes the total a lower bound, not a long read.
pub const SCAN_LIMIT: i64 = 50_000;

/// Edges drawn at most among the nodes drawn.
const MAX_EDGES: i64 = 3_000;

/// The nodes within `hops` relations of `name` (either direction), at most `max_nodes`
/// of them with the relations among them; `None` when `name` is neither an entity nor
/// named by any relation. `hops + 2` statements (one per hop, the types, the edges),
/// each bounded. Each hop's statement also says how many relation rows it read (the
/// window sum over the groups), so a hop cut short at [`SCAN_LIMIT`] is known.
pub fn neighbourhood(
    conn: &Connection,
    name: &str,
    hops: u8,
    max_nodes: usize,
) -> Result<Option<Neighbourhood>, GraphError> {
    let mut expand = conn.prepare_cached(
        "SELECT other, sum(count(*)) OVER () FROM (
             SELECT to_entity AS other, id FROM relations WHERE from_entity IN (SELECT value FROM json_each(?1))
             UNION ALL
             SELECT from_entity, id FROM relations WHERE to_entity IN (SELECT value FROM json_each(?1))
             LIMIT ?2)
          GROUP BY other ORDER BY min(id)",
    )?;
    // Every node found, in the order it was reached, with its depth.
    let mut found: Vec<(String, u8)> = vec![(name.to_owned(), 0)];
    let mut seen: HashMap<String, u8> = HashMap::from([(name.to_owned(), 0)]);
    let mut total_exact = true;
    let mut frontier = vec![name.to_owned()];
    for depth in 1..=hops {
        if frontier.is_empty() {
            break;
        }
        let set = json_array(&frontier)?;
        let mut read = 0_i64;
        let mut next = Vec::new();
        let mut rows = expand.query(params![set, SCAN_LIMIT])?;
        while let Some(row) = rows.next()? {
            let other: String = row.get(0)?;
            read = row.get(1)?;
            if !seen.contains_key(&other) {
                seen.insert(other.clone(), depth);
                found.push((other.clone(), depth));
                next.push(other);
            }
        }
        drop(rows);
        // A hop whose relations were cut short may have more nodes (and so may the next).
        if read >= SCAN_LIMIT {
            total_exact = false;
        }
        frontier = next;
    }

    let mut types =
        conn.prepare_cached("SELECT name, entity_type FROM entities WHERE name IN (SELECT value FROM json_each(?1))")?;
    let drawn: Vec<&(String, u8)> = found.iter().take(max_nodes.max(1)).collect();
    let names = json_array(&drawn.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())?;
    let entity_types: HashMap<String, String> =
        types.query([&names])?.mapped(|r| Ok((r.get(0)?, r.get(1)?))).collect::<Result<_, _>>()?;
    if found.len() == 1 && !entity_types.contains_key(name) {
        return Ok(None);
    }
    let mut edges = conn.prepare_cached(
        "SELECT from_entity, to_entity, relation_type FROM relations
          WHERE from_entity IN (SELECT value FROM json_each(?1)) AND to_entity IN (SELECT value FROM json_each(?1))
          ORDER BY id LIMIT ?2",
    )?;
    let edges = edges
        .query(params![names, MAX_EDGES])?
        .mapped(|r| Ok(super::Relation { from: r.get(0)?, to: r.get(1)?, relation_type: r.get(2)? }))
        .collect::<Result<_, _>>()?;
    let nodes = drawn
        .iter()
        .map(|(n, depth)| Node { name: n.clone(), entity_type: entity_types.get(n).cloned(), depth: *depth })
        .collect();
    Ok(Some(Neighbourhood { nodes, edges, total: found.len() as u64, total_exact }))
}

fn json_array<T: Serialize>(items: &[T]) -> Result<String, GraphError> {
    serde_json::to_string(items).map_err(|e| GraphError::Sqlite(rusqlite::Error::ToSqlConversionFailure(e.into())))
}

#[cfg(test)]
mod tests;
