//! The browser's reads on small graphs: paging and its counts (walked, indexed, scanned),
//! the stored lower-cased text against `instr(lower(..))` on every kind of value SQLite
//! may hold, one entity's page, and neighbourhoods with their cap.

use super::*;
use crate::store::Store;
use crate::store::model::{Entity, Relation};

fn store_with(entities: Vec<Entity>, relations: Vec<Relation>) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("memory.db")).unwrap();
    store.write(move |c| super::super::create_entities(c, &entities).map(drop)).unwrap();
    store.write(move |c| super::super::create_relations(c, &relations).map(drop)).unwrap();
    store.update_search_index().unwrap();
    (dir, store)
}

fn ent(name: &str, ty: &str, obs: &[&str]) -> Entity {
    Entity { name: name.into(), entity_type: ty.into(), observations: obs.iter().map(|s| s.to_string()).collect() }
}

fn relation(from: &str, to: &str) -> Relation {
    Relation { from: from.into(), to: to.into(), relation_type: "r".into() }
}

fn names(page: &EntityPage) -> Vec<&str> {
    page.items.iter().map(|i| i.name.as_str()).collect()
}

/// The stored lower-cased text decides exactly as `instr(lower(x), needle) > 0` on the
/// base rows did, on every kind of value another program may store (the Node server or
/// the sqlite3 shell, with SQLite's ASCII-only `lower()`): text that is ASCII or not,
/// text that is not UTF-8, text with a NUL, BLOBs (which `lower()` leaves alone), a
/// number stored as text and the empty text, as a type and as an observation; for the
/// scan, the indexed plan and the walk in both directions.
#[test]
fn the_stored_text_decides_as_instr_of_lower_on_any_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let store = Store::open(&path).unwrap();
    // (value, whether it is UTF-8 text): the browser's list shows an entity's type, as
    // text, so only those are types too; every value is an observation.
    let values = [
        ("'plain ABC'", true),
        ("'a_b%c\\d'", true),
        ("'İx'", true),
        ("'\u{212A}'", true),
        ("'Straße'", true),
        ("CAST(x'41c3ff4243' AS TEXT)", false),
        ("CAST(x'4180c342' AS TEXT)", false),
        ("CAST(x'610062' AS TEXT)", true),
        ("x'414243'", false),
        ("x'616263'", false),
        ("CAST(x'efbfbd' AS TEXT)", true),
        ("12", true),
        ("''", true),
    ];
    {
        let foreign = rusqlite::Connection::open(&path).unwrap();
        for (i, (v, text)) in values.iter().enumerate() {
            let ty = if *text { v } else { "'none'" };
            foreign
                .execute_batch(&format!(
                    "INSERT INTO entities (name, entity_type) VALUES ('typed-{i}', {ty});
                     INSERT INTO entities (name, entity_type) VALUES ('observed-{i}', 'none');
                     INSERT INTO observations (entity_name, content) VALUES ('observed-{i}', {v});"
                ))
                .unwrap();
        }
    }
    store.update_search_index().unwrap();
    let needles = [
        "a",
        "ab",
        "abc",
        "b",
        "c",
        "%",
        "_",
        "\\",
        "a_b",
        "b%c",
        "c\\d",
        "k",
        "i",
        "i\u{307}",
        "x",
        "ß",
        "strasse",
        "\u{FFFD}",
        "\0",
        "a\0b",
        "12",
        " ",
        "bc",
        "abc",
        "plain abc",
        "\u{FFFD}b",
    ];
    let counts = TrigramCounts::with_limits(2, 4);
    let mut matched = 0;
    for needle in needles {
        let (ours, reference) = store
            .read(|c| {
                let ours = Matcher::plan(c, needle, &counts)?.rowids(c)?;
                let mut reference = c.prepare(
                    "SELECT rowid FROM entities WHERE name IN (
                         SELECT name FROM entities WHERE instr(lower(name), ?1) > 0 OR instr(lower(entity_type), ?1) > 0
                         UNION SELECT entity_name FROM observations WHERE instr(lower(content), ?1) > 0)
                      ORDER BY rowid",
                )?;
                let reference: Vec<i64> =
                    reference.query([needle.to_lowercase()])?.mapped(|r| r.get(0)).collect::<Result<_, _>>()?;
                Ok((ours, reference))
            })
            .unwrap();
        assert_eq!(ours, reference, "{needle:?}");
        matched += reference.len();
        for window in [1, 3, 4096] {
            for forward in [true, false] {
                let cursors = browse_cursors(&store, needle, &counts, window, forward);
                assert_eq!(cursors, reference, "browsing {needle:?} (window {window}, forward {forward})");
            }
        }
    }
    assert!(matched > 2 * needles.len(), "the needles match something: {matched}");
}

/// Every entity's cursor the browser lists for `q`, two at a time.
fn browse_cursors(store: &Store, q: &str, counts: &TrigramCounts, window: usize, forward: bool) -> Vec<i64> {
    let mut at = if forward { PageAt::First } else { PageAt::Last };
    let mut found = Vec::new();
    for _ in 0..1_000 {
        let page = store.read(|c| entity_page_walking(c, q, counts, at, 2, window)).unwrap();
        let mut cursors: Vec<i64> = page.items.iter().map(|i| i.cursor).collect();
        let (more, next) = if forward { (page.has_after, cursors.last()) } else { (page.has_before, cursors.first()) };
        let next = next.copied();
        if !forward {
            cursors.reverse();
        }
        found.extend(cursors);
        match (more, next) {
            (true, Some(c)) => at = if forward { PageAt::After(c) } else { PageAt::Before(c) },
            _ => break,
        }
    }
    if !forward {
        found.reverse();
    }
    found
}

/// 300 entities: "even" is the type of every other one, "rare" matches two.
fn graph_of_300() -> (tempfile::TempDir, Store) {
    let entities = (0..300)
        .map(|i| {
            let ty = if i % 2 == 0 { "even" } else { "odd" };
            let obs = if i == 17 || i == 250 { "a rare one" } else { "common" };
            ent(&format!("n{i:03}"), ty, &[obs])
        })
        .collect();
    store_with(entities, Vec::new())
}

#[test]
fn the_whole_list_pages_by_rowid_with_exact_counts() {
    let (_dir, store) = graph_of_300();
    let counts = TrigramCounts::default();
    let page = |at| store.read(|c| entity_page(c, "", &counts, at, 50)).unwrap();
    let first = page(PageAt::First);
    assert_eq!((first.total, first.offset, first.has_before, first.has_after), (Some(300), Some(0), false, true));
    assert_eq!(first.items[0].observations, 1);
    let second = page(PageAt::After(first.items[49].cursor));
    assert_eq!((second.offset, names(&second)[0]), (Some(50), "n050"));
    let last = page(PageAt::Last);
    assert_eq!((last.offset, last.has_after, names(&last)[49]), (Some(250), false, "n299"));
    let before = page(PageAt::Before(last.items[0].cursor));
    assert_eq!((before.offset, names(&before)[0]), (Some(200), "n200"));
    let none = page(PageAt::After(last.items[49].cursor));
    assert_eq!((none.items.len(), none.has_after, none.has_before), (0, false, true));
}

/// A dense search fills its page by walking and says only "at least"; a sparse one is
/// counted exactly; a small graph is walked whole and counted.
#[test]
fn searches_are_walked_when_dense_and_counted_when_sparse() {
    let (_dir, store) = graph_of_300();
    let counts = TrigramCounts::default();
    let walk = |q: &str, at, window| store.read(|c| entity_page_walking(c, q, &counts, at, 10, window)).unwrap();

    let dense = walk("EVEN", PageAt::First, 64);
    assert_eq!(names(&dense)[..3], ["n000", "n002", "n004"]);
    assert_eq!((dense.total, dense.at_least, dense.offset, dense.has_after), (None, 11, Some(0), true));
    let next = walk("EVEN", PageAt::After(dense.items[9].cursor), 64);
    assert_eq!((names(&next)[0], next.offset, next.has_before), ("n020", None, true));
    let last = walk("EVEN", PageAt::Last, 64);
    assert_eq!((names(&last)[9], last.has_after, last.has_before), ("n298", false, true));

    let sparse = walk("rare", PageAt::First, 64);
    assert_eq!((names(&sparse), sparse.total, sparse.offset), (vec!["n017", "n250"], Some(2), Some(0)));
    let short = walk("e", PageAt::First, 64);
    assert_eq!(short.total, None, "one character: walked");
    let whole = walk("EVEN", PageAt::First, 1_000);
    assert_eq!((whole.total, whole.has_after), (None, true), "a page and more found: not counted");
    let small = walk("rare", PageAt::First, 1_000);
    assert_eq!((small.total, small.has_after), (Some(2), false), "the window held every entity");
}

#[test]
fn an_entity_with_its_observations_and_relations() {
    let entities = vec![ent("hub", "t", &["first", "second"]), ent("a", "t", &[]), ent("b", "t", &[])];
    let relations = vec![relation("hub", "a"), relation("hub", "ghost"), relation("hub", "b"), relation("b", "hub")];
    let (_dir, store) = store_with(entities, relations);
    let hub = store.read(|c| entity(c, "hub", 2)).unwrap().unwrap();
    assert_eq!(
        (hub.observations.as_slice(), hub.observations_total),
        (&["first".to_owned(), "second".to_owned()][..], 2)
    );
    let first = store.read(|c| entity(c, "hub", 1)).unwrap().unwrap();
    assert_eq!((first.observations, first.observations_total), (vec!["first".to_owned()], 2));
    let out: Vec<(&str, bool)> = hub.outgoing.iter().map(|l| (l.other.as_str(), l.exists)).collect();
    assert_eq!(out, [("a", true), ("ghost", false)]);
    assert_eq!((hub.outgoing_total, hub.incoming_total), (3, 1));
    assert_eq!(hub.incoming[0].other, "b");
    assert!(store.read(|c| entity(c, "ghost", 2)).unwrap().is_none());
    let n = store.read(counts).unwrap();
    assert_eq!((n.entities, n.relations, n.observations), (3, 4, 2));
}

/// A star of 400 around a centre, each leaf with one more leaf: one hop finds 401 nodes
/// and draws 300; two hops find 801; the edges drawn are only those among drawn nodes.
#[test]
fn neighbourhoods_are_capped_and_say_how_many_exist() {
    let mut entities = vec![ent("centre", "t", &[])];
    let mut relations = Vec::new();
    for i in 0..400 {
        entities.push(ent(&format!("leaf{i:03}"), "t", &[]));
        relations.push(relation("centre", &format!("leaf{i:03}")));
        relations.push(relation(&format!("far{i:03}"), &format!("leaf{i:03}")));
    }
    let (_dir, store) = store_with(entities, relations);
    let one = store.read(|c| neighbourhood(c, "centre", 1, 300)).unwrap().unwrap();
    assert_eq!((one.nodes.len(), one.total, one.total_exact), (300, 401, true));
    assert_eq!((one.nodes[0].name.as_str(), one.nodes[0].depth, one.nodes[1].name.as_str()), ("centre", 0, "leaf000"));
    assert_eq!(one.edges.len(), 299, "centre to each drawn leaf");
    let two = store.read(|c| neighbourhood(c, "centre", 2, 300)).unwrap().unwrap();
    assert_eq!((two.nodes.len(), two.total), (300, 801));
    let far = store.read(|c| neighbourhood(c, "far007", 2, 300)).unwrap().unwrap();
    let drawn: Vec<(&str, u8, bool)> =
        far.nodes.iter().map(|n| (n.name.as_str(), n.depth, n.entity_type.is_some())).collect();
    assert_eq!(drawn, [("far007", 0, false), ("leaf007", 1, true), ("centre", 2, true)]);
    assert!(store.read(|c| neighbourhood(c, "nobody", 2, 300)).unwrap().is_none());
}
