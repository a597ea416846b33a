//! `search_nodes` against the official server's plain scan, and the statement counts of
//! the read operations.
//!
//! The property test builds random graphs through the real write functions on a real
//! [`Store`] (so the FTS triggers see inserts, ignored duplicates, rolled-back calls and
//! deletes) and compares every search with a scan written here over `read_graph`.

use std::collections::HashSet;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::sample::Index;
use rusqlite::Connection;

use super::Store;
use super::graph::{self, GraphError};
use super::model::{Entity, KnowledgeGraph, ObservationAddition, ObservationDeletion, Relation};

// ---------------------------------------------------------------------------------------
// The reference: what the official server's searchNodes does.
// ---------------------------------------------------------------------------------------

/// `x.toLowerCase().includes(query.toLowerCase())` over name, type and observations, then
/// the relations with at least one endpoint among the matched (existing) entities.
fn reference_search(g: &KnowledgeGraph, query: &str) -> KnowledgeGraph {
    let q = query.to_lowercase();
    let hit = |s: &str| s.to_lowercase().contains(&q);
    let entities: Vec<Entity> = g
        .entities
        .iter()
        .filter(|e| hit(&e.name) || hit(&e.entity_type) || e.observations.iter().any(|o| hit(o)))
        .cloned()
        .collect();
    let names: HashSet<&str> = entities.iter().map(|e| e.name.as_str()).collect();
    let relations = g
        .relations
        .iter()
        .filter(|r| names.contains(r.from.as_str()) || names.contains(r.to.as_str()))
        .cloned()
        .collect();
    KnowledgeGraph { entities, relations }
}

fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("memory.db")).unwrap();
    (dir, store)
}

fn entity(name: &str, ty: &str, obs: &[&str]) -> Entity {
    Entity { name: name.into(), entity_type: ty.into(), observations: obs.iter().map(|s| s.to_string()).collect() }
}

fn relation(from: &str, to: &str, ty: &str) -> Relation {
    Relation { from: from.into(), to: to.into(), relation_type: ty.into() }
}

/// Searches as the tools do: the rows written since the last update are indexed first.
fn search(store: &Store, q: &str) -> KnowledgeGraph {
    store.update_search_index().unwrap();
    store.read(|c| graph::search_nodes(c, q)).unwrap()
}

fn assert_search_matches_scan(store: &Store, q: &str) {
    let all = store.read(graph::read_graph).unwrap();
    assert_eq!(search(store, q), reference_search(&all, q), "query {q:?}");
}

// ---------------------------------------------------------------------------------------
// Hand-picked cases: the lower-casing rules the index must reproduce.
// ---------------------------------------------------------------------------------------

#[test]
fn search_follows_javascript_lowercasing() {
    let (_dir, store) = open_store();
    let entities = [
        entity("Straße", "Ort", &["liegt in MÜNCHEN"]),
        entity("GROẞE Halle", "Gebäude", &[]),
        entity("ΟΔΟΣ", "δρόμος", &["Η ΟΔΟΣ ΕΙΝΑΙ ΜΑΚΡΙΑ"]),
        entity("İstanbul", "city", &[]),
        entity("東京タワー", "建物", &["日本の塔"]),
    ];
    let stored = entities.clone();
    store.write(move |c| graph::create_entities(c, &stored)).unwrap();
    store
        .write(move |c| {
            graph::create_relations(
                c,
                &[
                    relation("Straße", "ghost", "near"),
                    relation("ghost", "phantom", "x"),
                    relation("ΟΔΟΣ", "東京タワー", "y"),
                ],
            )
        })
        .unwrap();
    let names = |q: &str| search(&store, q).entities.into_iter().map(|e| e.name).collect::<Vec<_>>();

    assert_eq!(names("STRASSE"), Vec::<String>::new(), "ß is not SS, as in JavaScript");
    assert_eq!(names("straße"), ["Straße"]);
    assert_eq!(names("STRAẞE"), ["Straße"], "ẞ lower-cases to ß");
    assert_eq!(names("große"), ["GROẞE Halle"]);
    assert_eq!(names("münchen"), ["Straße"]);
    assert_eq!(names("gebä"), ["GROẞE Halle"]);
    // Final sigma: ΟΔΟΣ lower-cases to οδος, and mid-word Σ to σ.
    assert_eq!(names("οδος"), ["ΟΔΟΣ"]);
    assert_eq!(names("ΟΔΟΣ"), ["ΟΔΟΣ"]);
    assert_eq!(names("δοσ"), Vec::<String>::new());
    assert_eq!(names("ος"), ["ΟΔΟΣ"], "two characters: the scan");
    assert_eq!(names("ς"), ["ΟΔΟΣ"]);
    assert_eq!(names("σ"), Vec::<String>::new());
    // İ lower-cases to two characters, i + combining dot.
    assert_eq!(names("İs"), ["İstanbul"]);
    assert_eq!(names("i\u{307}st"), ["İstanbul"]);
    assert_eq!(names("ist"), Vec::<String>::new());
    // Japanese: one and two characters scan, three use the index.
    assert_eq!(names("塔"), ["東京タワー"]);
    assert_eq!(names("日本"), ["東京タワー"]);
    assert_eq!(names("タワー"), ["東京タワー"]);
    assert_eq!(names("建物"), ["東京タワー"]);

    for q in ["", "a", "ß", "STRASSE", "ΟΔΟΣ", "ος", "İ", "塔", "タワー", "\"", "x\"y", "host"] {
        assert_search_matches_scan(&store, q);
    }
    // The relation between two ghosts is never returned, not even for the empty query.
    let everything = search(&store, "");
    assert_eq!(everything.entities.len(), entities.len());
    assert!(!everything.relations.iter().any(|r| r.from == "ghost" && r.to == "phantom"));
}

/// The triggers' deletes, a reused entity rowid (SQLite gives the next entity the rowid
/// of a deleted last one) and a rolled-back call leave no trace in the index.
#[test]
fn search_after_deletes_rowid_reuse_and_rollback() {
    let (_dir, store) = open_store();
    store.write(move |c| graph::create_entities(c, &[entity("Alpha", "kind", &["first note"])])).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("Bravo", "sort", &["second NOTE"])])).unwrap();
    store.write(move |c| graph::delete_entities(c, &["Bravo".into()])).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("Charlie", "type", &["third"])])).unwrap();
    let rowid: i64 = store
        .read(|c| Ok(c.query_row("SELECT rowid FROM entities WHERE name = 'Charlie'", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(rowid, 2, "Charlie reuses Bravo's rowid");
    let deletion = ObservationDeletion { entity_name: "Alpha".into(), observations: vec!["first note".into()] };
    store.write(move |c| graph::delete_observations(c, std::slice::from_ref(&deletion))).unwrap();
    let err = store.write(move |c| {
        graph::add_observations(
            c,
            &[
                ObservationAddition { entity_name: "Alpha".into(), contents: vec!["ghostly".into()] },
                ObservationAddition { entity_name: "Bravo".into(), contents: vec!["x".into()] },
            ],
        )
    });
    assert!(err.is_err());
    let names = |q: &str| search(&store, q).entities.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names("bravo"), Vec::<String>::new());
    assert_eq!(names("second"), Vec::<String>::new());
    assert_eq!(names("note"), Vec::<String>::new());
    assert_eq!(names("ghost"), Vec::<String>::new());
    assert_eq!(names("charlie"), ["Charlie"]);
    assert_eq!(names("TYPE"), ["Charlie"]);
    assert_eq!(names("alp"), ["Alpha"]);
    for q in ["bravo", "sort", "note", "third", "a", "", "ghost"] {
        assert_search_matches_scan(&store, q);
    }
}

/// FTS5 does not see these characters as stored; the index must still give the scan's
/// answer (it used to find "a\0bc" for "abc", and fail on queries containing NUL).
#[test]
fn search_is_exact_around_characters_fts5_reads_differently() {
    let (_dir, store) = open_store();
    let entities = [
        entity("a\0bc", "t", &[]),
        entity("x\u{FFFE}yz", "t", &["\u{FFFF}\u{FFFF}\u{FFFF}"]),
        entity("p\u{FFFD}qr", "t", &["\0\0\0\0"]),
        entity("plain", "t", &["abc def"]),
    ];
    store.write(move |c| graph::create_entities(c, &entities)).unwrap();
    let names = |q: &str| search(&store, q).entities.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names("abc"), ["plain"]);
    assert_eq!(names("A\0B"), ["a\0bc"]);
    assert_eq!(names("a\0bc"), ["a\0bc"]);
    assert_eq!(names("\0\0\0"), ["p\u{FFFD}qr"]);
    assert_eq!(names("\0\0b"), Vec::<String>::new());
    assert_eq!(names("x\u{FFFD}y"), Vec::<String>::new());
    assert_eq!(names("x\u{FFFE}y"), ["x\u{FFFE}yz"]);
    assert_eq!(names("p\u{FFFE}q"), Vec::<String>::new());
    assert_eq!(names("\u{FFFD}\u{FFFD}\u{FFFD}"), Vec::<String>::new());
    assert_eq!(names("\u{FFFF}\u{FFFF}\u{FFFF}"), ["x\u{FFFE}yz"]);
    for q in ["abc", "a\0b", "\0bc", "\0", "x\u{FFFD}yz", "\u{FFFE}y", "\u{FFFD}"] {
        assert_search_matches_scan(&store, q);
    }
}

// ---------------------------------------------------------------------------------------
// The property test.
// ---------------------------------------------------------------------------------------

/// Mixed-case ASCII, German (umlauts, ß and ẞ), Greek with all three sigmas, İ (which
/// lower-cases to two characters), Japanese kana and kanji. Few characters, so random
/// queries and texts overlap often.
const ALPHABET: &[char] = &[
    'a', 'A', 'b', 'B', 's', 'S', 'x', ' ', '-', '"', //
    'ä', 'Ä', 'ö', 'Ö', 'ü', 'Ü', 'ß', 'ẞ', //
    'ο', 'Ο', 'δ', 'Δ', 'σ', 'ς', 'Σ', 'α', 'Α', 'İ', 'i', //
    'あ', 'の', 'カ', 'タ', 'ー', '日', '本', '語',
];

/// Characters FTS5's trigram tokenizer does not read as stored (it skips NUL and reads
/// U+FFFE and U+FFFF as U+FFFD), mixed in rarely.
const ODD: &[char] = &['\0', '\u{FFFD}', '\u{FFFE}', '\u{FFFF}'];

/// A search the daemon runs on its async worker (its plan known to be cheap) must not
/// repair the index there: the repair is a write, and a write waits for its commit.
/// With stale rows it falls back to the blocking path, repairs, and finds them.
#[test]
fn a_quick_search_over_stale_rows_repairs_them_off_the_async_worker() {
    let (_dir, store) = open_store();
    let store = std::sync::Arc::new(store);
    let names: Vec<String> = (0..50).map(|i| format!("common-{i}")).collect();
    let entities: Vec<Entity> = names.iter().map(|n| entity(n, "t", &["x"])).collect();
    store.write(move |c| graph::create_entities(c, &entities)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let search = |q: &str| {
        let call = crate::tools::ToolCall::SearchNodes(q.into());
        runtime.block_on(crate::tools::run(call, crate::memory::Memory::Sqlite(store.clone()))).unwrap().into_value()
    };
    // The first search counts the trigrams of "MÜLLER-X"; afterwards it plans cheaply.
    assert_eq!(search("müller-x")["structuredContent"]["entities"], serde_json::json!([]));
    assert!(store.trigram_counts().search_is_cheap("müller-x"));
    Connection::open(store.path())
        .unwrap()
        .execute_batch("INSERT INTO entities (name, entity_type) VALUES ('MÜLLER-X', 'PERSON');")
        .unwrap();
    assert!(store.read(graph::search_index_is_stale).unwrap());
    let found = search("müller-x");
    assert_eq!(found["structuredContent"]["entities"][0]["name"], "MÜLLER-X", "{found}");
    assert!(!store.read(graph::search_index_is_stale).unwrap());
}

/// A write only notes its rows for the search index; the combiner indexes them in the
/// writers' idle moments, a bounded piece at a time, so few ever wait for a search.
/// The notes commit with the rows, so rows noted before a crash are still indexed
/// before the next search.
#[test]
fn written_rows_are_indexed_when_writers_pause_and_notes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let store = Store::open(&path).unwrap();
    for i in 0..100 {
        let e = [entity(&format!("batch-{i}"), "t", &["noted"])];
        store.write(move |c| graph::create_entities(c, &e)).unwrap();
    }
    // The combiner indexed them in its idle moments, a piece at a time once a few
    // batches' rows waited: at most those of the last few batches wait now.
    let waiting: i64 = store.read(|c| Ok(c.query_row("SELECT count(*) FROM search_stale", [], |r| r.get(0))?)).unwrap();
    assert!(waiting < 2 * i64::from(super::writer::BATCHES_PER_IDLE_INDEX), "{waiting} rows still wait");
    assert_eq!(search(&store, "batch-").entities.len(), 100);
    drop(store);

    // A crash between a commit and its indexing leaves only notes behind: a write made
    // like ours, without anyone indexing it afterwards.
    let crashed = super::readers::open_reader(&path).unwrap();
    crashed
        .execute_batch(
            "INSERT INTO entities (name, entity_type) VALUES ('after-restart', 't');
             INSERT INTO observations (entity_name, content) VALUES ('after-restart', 'noted before the restart');",
        )
        .unwrap();
    drop(crashed);
    let store = Store::open(&path).unwrap();
    assert!(store.read(graph::search_index_is_stale).unwrap());
    let call = crate::tools::ToolCall::SearchNodes("before the RESTART".into());
    let found = call.run(&store).into_value();
    assert_eq!(found["structuredContent"]["entities"][0]["name"], "after-restart", "{found}");
    assert_search_matches_scan(&store, "noted");
}

/// Writes through the server's path are indexed once writes pause for a moment, so an
/// agent's next search (seconds later) finds the index current instead of paying for
/// it; that index-only commit changes nothing a client reads, so it is not announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_indexed_once_writes_pause_without_a_change_notice() {
    let (_dir, store) = open_store();
    let store = std::sync::Arc::new(store);
    let mut changes = store.subscribe_changes();
    let e = [entity("idle", "t", &["indexed while nobody writes"])];
    store.write_async(None, move |c| graph::create_entities(c, &e)).await.unwrap();
    let bound = std::time::Duration::from_secs(30);
    tokio::time::timeout(bound, changes.recv()).await.expect("the write is announced").unwrap();
    // Bounded: 3,000 polls of 10 ms, a generous limit for a 5 ms pause.
    let mut polls = 0;
    while store.read(graph::search_index_is_stale).unwrap() {
        polls += 1;
        assert!(polls < 3_000, "rows still wait for the index after writes stopped");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let found = store.read(|c| graph::search_nodes(c, "while nobody")).unwrap();
    assert_eq!(found.entities.len(), 1, "indexed without any search");
    assert!(
        matches!(changes.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Empty)),
        "the index update was announced as a change"
    );
}

/// Rows another program writes (the Node server, the sqlite3 shell: SQLite's ASCII-only
/// built-in `lower()`) are re-indexed before the next search, so non-ASCII capitals in
/// them are still found by their lower-case spelling.
#[test]
fn rows_written_by_another_program_are_found_after_repair() {
    let (_dir, store) = open_store();
    store.write(move |c| graph::create_entities(c, &[entity("ours", "t", &[])])).unwrap();
    {
        // A plain connection, as the Node server would have: built-in lower().
        let foreign = Connection::open(store.path()).unwrap();
        foreign
            .execute_batch(
                "INSERT INTO entities (name, entity_type) VALUES ('MÜLLER-NODE', 'PERSON');
                 INSERT INTO observations (entity_name, content) VALUES ('ours', 'ÄPFEL UND BIRNEN');",
            )
            .unwrap();
    }
    assert!(store.read(graph::search_index_is_stale).unwrap());
    let call = crate::tools::ToolCall::SearchNodes("müller-node".into());
    let found = call.run(&store).into_value();
    assert_eq!(found["structuredContent"]["entities"][0]["name"], "MÜLLER-NODE", "{found}");
    assert!(!store.read(graph::search_index_is_stale).unwrap(), "repaired once, not at every search");
    assert_search_matches_scan(&store, "äpfel und");
    assert_search_matches_scan(&store, "MÜLLER");
    assert_eq!(search(&store, "äpfel und").entities.len(), 1);
}

/// A text's signature holds the signature of everything it holds, whatever the
/// characters; letters and digits each have a bit of their own; what `instr` may match
/// without matching characters (BLOBs, numbers, text that is not UTF-8) has every bit.
#[test]
fn signatures_never_drop_a_match() {
    use rusqlite::types::ValueRef;
    let alnum: Vec<i64> = ('a'..='z').chain('0'..='9').map(|c| graph::signature(&c.to_string())).collect();
    assert!(alnum.iter().all(|s| s.count_ones() == 1));
    assert_eq!(alnum.iter().fold(0, |all, s| all | s).count_ones(), 36, "one bit each");
    assert_eq!(graph::signature("zebra"), graph::signature("z") | graph::signature("ebra"));
    assert_eq!(graph::signature(""), 0);
    assert_eq!(graph::signature_of_value(ValueRef::Null), None);
    assert_eq!(graph::signature_of_value(ValueRef::Blob(b"abc")), Some(-1));
    assert_eq!(graph::signature_of_value(ValueRef::Integer(12)), Some(-1));
    assert_eq!(graph::signature_of_value(ValueRef::Real(1.5)), Some(-1));
    assert_eq!(graph::signature_of_value(ValueRef::Text(b"a\xffb")), Some(-1));
    assert_eq!(graph::signature_of_value(ValueRef::Text("a\0é東".as_bytes())), Some(graph::signature("a\0é東")));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let texts = prop::collection::vec(prop_oneof![3 => prop::sample::select(ALPHABET), 1 => any::<char>()], 0..40);
    runner
        .run(&(texts, any::<Index>(), any::<Index>()), |(chars, a, b)| {
            let text: String = chars.iter().collect();
            let (a, b) = (a.index(chars.len() + 1), b.index(chars.len() + 1));
            let part: String = chars[a.min(b)..a.max(b)].iter().collect();
            let (whole, needle) = (graph::signature(&text), graph::signature(&part));
            prop_assert_eq!(whole & needle, needle, "{:?} in {:?}", part, text);
            Ok(())
        })
        .unwrap();
}

/// A bulk import indexes its rows in one go instead of through the triggers' notes, and
/// may give a new entity the rowid of a deleted one whose removal from the search tables
/// still waits: the waiting rows are indexed first, so the deleted entity's text is gone
/// and the new one's is found, by the index and by the short-needle scan.
#[test]
fn an_import_indexes_its_rows_even_on_a_rowid_a_deleted_entity_left() {
    let (dir, store) = open_store();
    store.write(move |c| graph::create_entities(c, &[entity("Alpha", "t", &["first"])])).unwrap();
    store.write(move |c| graph::create_entities(c, &[entity("Bravo", "Kind", &["BYGONE"])])).unwrap();
    store.update_search_index().unwrap();
    // Deleted by another program: noted, not yet re-indexed.
    Connection::open(store.path())
        .unwrap()
        .execute_batch(
            "DELETE FROM observations WHERE entity_name = 'Bravo'; DELETE FROM entities WHERE name = 'Bravo';",
        )
        .unwrap();
    let file = dir.path().join("import.jsonl");
    std::fs::write(
        &file,
        r#"{"type":"entity","name":"ZÜRICH","entityType":"City","observations":["LIEGT AM SEE"]}"#.to_owned() + "\n",
    )
    .unwrap();
    crate::transfer::import(&store, &file).unwrap();
    let rowid: i64 =
        store.read(|c| Ok(c.query_row("SELECT rowid FROM entities WHERE name = 'ZÜRICH'", [], |r| r.get(0))?)).unwrap();
    assert_eq!(rowid, 2, "the import reused Bravo's rowid");
    assert!(!store.read(graph::search_index_is_stale).unwrap());
    let names = |q: &str| search(&store, q).entities.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names("zürich"), ["ZÜRICH"]);
    assert_eq!(names("ü"), ["ZÜRICH"]);
    assert_eq!(names("am see"), ["ZÜRICH"]);
    assert_eq!(names("bygone"), Vec::<String>::new());
    assert_eq!(names("by"), Vec::<String>::new());
    for q in ["a", "t", "ci", "kind", "see", "first", "z"] {
        assert_search_matches_scan(&store, q);
    }
}

fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let ch = prop_oneof![24 => prop::sample::select(ALPHABET), 1 => prop::sample::select(ODD)];
    prop::collection::vec(ch, len).prop_map(String::from_iter)
}

#[derive(Debug, Clone)]
enum Op {
    /// Entities named from the pool (repeats and existing names are skipped by the store).
    Create(Vec<(Index, String, Vec<String>)>),
    /// Endpoints from the pool or the ghosts, which are never created.
    Relate(Vec<(Index, Index, String)>),
    /// May name an entity that does not exist: the whole call then rolls back.
    Observe(Vec<(Index, Vec<String>)>),
    DeleteEntities(Vec<Index>),
    /// Deletes some current observations of a pool entity (and one that does not exist).
    DeleteObservations(Index, Vec<Index>, String),
    DeleteRelations(Vec<Index>),
}

fn op() -> impl Strategy<Value = Op> {
    let obs = || prop::collection::vec(text(0..8), 0..4);
    prop_oneof![
        5 => prop::collection::vec((any::<Index>(), text(0..4), obs()), 1..6).prop_map(Op::Create),
        3 => prop::collection::vec((any::<Index>(), any::<Index>(), text(1..4)), 1..5).prop_map(Op::Relate),
        3 => prop::collection::vec((any::<Index>(), obs()), 1..3).prop_map(Op::Observe),
        1 => prop::collection::vec(any::<Index>(), 1..3).prop_map(Op::DeleteEntities),
        2 => (any::<Index>(), prop::collection::vec(any::<Index>(), 1..3), text(0..4))
            .prop_map(|(e, o, t)| Op::DeleteObservations(e, o, t)),
        1 => prop::collection::vec(any::<Index>(), 1..3).prop_map(Op::DeleteRelations),
    ]
}

#[derive(Debug, Clone)]
enum Query {
    Empty,
    /// A random text of one, two or three to six characters.
    Random(String),
    /// A substring of some text of the final graph, each character's case randomly
    /// changed (0: kept, 1: upper-cased, 2: lower-cased).
    Substring {
        text: Index,
        start: Index,
        len: usize,
        case: Vec<u8>,
    },
    /// A substring of a text with characters from [`ODD`] as FTS5's tokenizer reads it
    /// (NUL dropped, U+FFFE and U+FFFF as U+FFFD): a false positive of the index.
    TokenizerImage {
        text: Index,
        start: Index,
        len: usize,
    },
}

fn query() -> impl Strategy<Value = Query> {
    prop_oneof![
        1 => Just(Query::Empty),
        2 => text(1..2).prop_map(Query::Random),
        2 => text(2..3).prop_map(Query::Random),
        3 => text(3..7).prop_map(Query::Random),
        6 => (any::<Index>(), any::<Index>(), 1usize..7, prop::collection::vec(0u8..3, 7))
            .prop_map(|(text, start, len, case)| Query::Substring { text, start, len, case }),
        2 => (any::<Index>(), any::<Index>(), 3usize..7)
            .prop_map(|(text, start, len)| Query::TokenizerImage { text, start, len }),
    ]
}

fn resolve_query(q: &Query, g: &KnowledgeGraph) -> String {
    let texts: Vec<&str> = g
        .entities
        .iter()
        .flat_map(|e| {
            [e.name.as_str(), e.entity_type.as_str()].into_iter().chain(e.observations.iter().map(String::as_str))
        })
        .chain(g.relations.iter().map(|r| r.from.as_str()))
        .filter(|t| !t.is_empty())
        .collect();
    let window = |texts: &[&str], text: &Index, start: &Index, len: usize| -> Vec<char> {
        let chars: Vec<char> = texts[text.index(texts.len())].chars().collect();
        chars[start.index(chars.len())..].iter().take(len).copied().collect()
    };
    match q {
        Query::Empty => String::new(),
        Query::Random(s) => s.clone(),
        Query::Substring { .. } | Query::TokenizerImage { .. } if texts.is_empty() => String::new(),
        Query::Substring { text, start, len, case } => window(&texts, text, start, *len)
            .into_iter()
            .zip(case)
            .map(|(c, how)| match how {
                1 => c.to_uppercase().collect::<String>(),
                2 => c.to_lowercase().collect::<String>(),
                _ => c.to_string(),
            })
            .collect(),
        Query::TokenizerImage { text, start, len } => {
            let odd: Vec<&str> = texts.iter().copied().filter(|t| t.contains(ODD)).collect();
            let from = if odd.is_empty() { &texts } else { &odd };
            window(from, text, start, *len)
                .into_iter()
                .filter(|&c| c != '\0')
                .map(|c| if c == '\u{FFFE}' || c == '\u{FFFF}' { '\u{FFFD}' } else { c })
                .collect()
        }
    }
}

fn apply(store: &Store, op: &Op, pool: &[String], ghosts: &[String]) {
    let endpoint = |i: &Index| {
        let i = i.index(pool.len() + ghosts.len());
        if i < pool.len() { pool[i].clone() } else { ghosts[i - pool.len()].clone() }
    };
    let result = match op {
        Op::Create(items) => {
            let entities: Vec<Entity> = items
                .iter()
                .map(|(n, ty, obs)| Entity {
                    name: n.get(pool).clone(),
                    entity_type: ty.clone(),
                    observations: obs.clone(),
                })
                .collect();
            store.write(move |c| graph::create_entities(c, &entities).map(drop))
        }
        Op::Relate(items) => {
            let relations: Vec<Relation> = items
                .iter()
                .map(|(f, t, ty)| Relation { from: endpoint(f), to: endpoint(t), relation_type: ty.clone() })
                .collect();
            store.write(move |c| graph::create_relations(c, &relations).map(drop))
        }
        Op::Observe(items) => {
            let additions: Vec<ObservationAddition> = items
                .iter()
                .map(|(n, contents)| ObservationAddition {
                    entity_name: n.get(pool).clone(),
                    contents: contents.clone(),
                })
                .collect();
            store.write(move |c| graph::add_observations(c, &additions).map(drop))
        }
        Op::DeleteEntities(names) => {
            let names: Vec<String> = names.iter().map(|n| n.get(pool).clone()).collect();
            store.write(move |c| graph::delete_entities(c, &names))
        }
        Op::DeleteObservations(n, picks, missing) => {
            let name = n.get(pool).clone();
            let current = store.read(graph::read_graph).unwrap();
            let existing = current.entities.iter().find(|e| e.name == name).map(|e| e.observations.clone());
            let mut observations: Vec<String> = match existing {
                Some(obs) if !obs.is_empty() => picks.iter().map(|p| p.get(&obs).clone()).collect(),
                _ => Vec::new(),
            };
            observations.push(missing.clone());
            let deletions = [ObservationDeletion { entity_name: name, observations }];
            store.write(move |c| graph::delete_observations(c, &deletions))
        }
        Op::DeleteRelations(picks) => {
            let current = store.read(graph::read_graph).unwrap().relations;
            if current.is_empty() {
                return;
            }
            let relations: Vec<Relation> = picks.iter().map(|p| p.get(&current).clone()).collect();
            store.write(move |c| graph::delete_relations(c, &relations))
        }
    };
    match result {
        Ok(()) => {}
        Err(super::StoreError::Graph(GraphError::EntityNotFound(_))) if matches!(op, Op::Observe(_)) => {}
        Err(e) => panic!("{op:?}: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Failures print their minimal case; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn search_nodes_equals_the_plain_scan(
        pool in prop::collection::vec(text(1..6), 3..10),
        ghosts in prop::collection::vec(text(1..6), 1..3),
        ops in prop::collection::vec(op(), 4..28),
        queries in prop::collection::vec(query(), 8..24),
    ) {
        // Ghosts are names no entity ever gets.
        let ghosts: Vec<String> = ghosts.into_iter().filter(|g| !pool.contains(g)).collect();
        let ghosts = if ghosts.is_empty() { vec!["\u{2603}".to_string()] } else { ghosts };
        let (_dir, store) = open_store();
        // Tiny counting limits, so that tiny graphs reach every plan: one rare trigram,
        // two together, one below the limit, the whole phrase. Half the writes come
        // after a first round of searches, so plans also use out-of-date counts.
        let counts = graph::TrigramCounts::with_limits(2, 4);
        let (before, after) = ops.split_at(ops.len() / 2);
        for op in before {
            apply(&store, op, &pool, &ghosts);
        }
        store.update_search_index().unwrap();
        let early = store.read(graph::read_graph).unwrap();
        for q in &queries {
            let q = resolve_query(q, &early);
            store.read(|c| graph::search_nodes_planned(c, &q, &counts)).unwrap();
        }
        // An update in the middle of the second half, so that the last one re-indexes
        // rows that were indexed before, as well as new and deleted ones.
        for (i, op) in after.iter().enumerate() {
            apply(&store, op, &pool, &ghosts);
            if i == after.len() / 2 {
                store.update_search_index().unwrap();
            }
        }
        store.update_search_index().unwrap();
        let all = store.read(graph::read_graph).unwrap();
        for q in &queries {
            let q = resolve_query(q, &all);
            let expected = reference_search(&all, &q);
            let got = store.read(|c| graph::search_nodes_planned(c, &q, &counts)).unwrap();
            prop_assert_eq!(&got, &expected, "query {:?} over {:#?}", q, all);
            // The graph browser's search pages through the same entities, in the same
            // order, whichever way it answers (walking, indexed, scanning).
            let matched: Vec<String> = got.entities.iter().map(|e| e.name.clone()).collect();
            for (limit, window) in [(1, 2), (3, 2), (2, 4096)] {
                for forward in [true, false] {
                    let browsed = browse_all(&store, &q, &counts, limit, window, forward);
                    prop_assert_eq!(&browsed, &matched, "browsing {:?} (limit {}, window {}, forward {})", q, limit, window, forward);
                }
            }
        }
    }
}

/// Every entity the browser lists for `q`, paging from the first page forwards, or from
/// the last page backwards, `limit` at a time.
pub(super) fn browse_all(
    store: &Store,
    q: &str,
    counts: &graph::TrigramCounts,
    limit: usize,
    window: usize,
    forward: bool,
) -> Vec<String> {
    use graph::browse::{PageAt, entity_page_walking};
    let mut at = if forward { PageAt::First } else { PageAt::Last };
    let mut pages: Vec<Vec<String>> = Vec::new();
    for _ in 0..1_000 {
        let page = store.read(|c| entity_page_walking(c, q, counts, at, limit, window)).unwrap();
        let names: Vec<String> = page.items.iter().map(|i| i.name.clone()).collect();
        if let Some(total) = page.total {
            assert!(page.items.len() as u64 <= total, "{q:?}: {page:?}");
        }
        let (more, cursor) = if forward {
            (page.has_after, page.items.last().map(|i| i.cursor))
        } else {
            (page.has_before, page.items.first().map(|i| i.cursor))
        };
        pages.push(names);
        match (more, cursor) {
            (true, Some(c)) => at = if forward { PageAt::After(c) } else { PageAt::Before(c) },
            _ => break,
        }
    }
    if !forward {
        pages.reverse();
    }
    pages.concat()
}

// ---------------------------------------------------------------------------------------
// Statement counts.
// ---------------------------------------------------------------------------------------

/// The SQL texts SQLite traced (`SQLITE_TRACE_STMT`) while `f` ran on `conn`: statements
/// our code ran, and, prefixed with `-- `, statements run inside them (triggers, FTS5's
/// own queries on its shadow tables).
fn traced<T>(conn: &Connection, f: impl FnOnce(&Connection) -> T) -> (T, Vec<String>) {
    unsafe extern "C" fn record(event: c_uint, ctx: *mut c_void, _stmt: *mut c_void, sql: *mut c_void) -> c_int {
        if event == rusqlite::ffi::SQLITE_TRACE_STMT as c_uint {
            // SAFETY: `ctx` is the `Mutex` below, alive until the trace is removed; for
            // SQLITE_TRACE_STMT, `sql` is a NUL-terminated string valid for this call.
            let (log, sql) = unsafe { (&*(ctx as *const Mutex<Vec<String>>), CStr::from_ptr(sql as *const c_char)) };
            log.lock().unwrap().push(sql.to_string_lossy().into_owned());
        }
        0
    }
    let log = Mutex::new(Vec::new());
    // SAFETY: the handle is live for the duration of `conn`; the callback only reads its
    // arguments and `log`, which outlives the registration (removed before returning).
    unsafe {
        let db = conn.handle();
        rusqlite::ffi::sqlite3_trace_v2(
            db,
            rusqlite::ffi::SQLITE_TRACE_STMT as c_uint,
            Some(record),
            &log as *const Mutex<Vec<String>> as *mut c_void,
        );
    }
    let value = f(conn);
    // SAFETY: as above; clears the callback.
    unsafe {
        rusqlite::ffi::sqlite3_trace_v2(conn.handle(), 0, None, std::ptr::null_mut());
    }
    (value, log.into_inner().unwrap())
}

/// A graph with `n` entities matching "needle" (by observation) and "本" / "日本", each
/// with relations to a neighbour, a non-matching entity and a ghost, plus `n`
/// non-matching entities. Built in one transaction.
fn counting_graph(n: usize) -> (tempfile::TempDir, Store) {
    let (dir, store) = open_store();
    let mut entities = Vec::new();
    let mut relations = Vec::new();
    for i in 0..n {
        entities.push(Entity {
            name: format!("match-{i}"),
            entity_type: "Widget".into(),
            observations: vec![format!("has a Needle #{i}"), format!("日本 {i}"), format!("plain {i}")],
        });
        entities.push(entity(&format!("other-{i}"), "thing", &["nothing to see"]));
        relations.push(relation(&format!("match-{i}"), &format!("match-{}", (i + 1) % n), "next"));
        relations.push(relation(&format!("match-{i}"), &format!("other-{i}"), "sees"));
        relations.push(relation(&format!("ghost-{i}"), &format!("match-{i}"), "haunts"));
        relations.push(relation(&format!("ghost-{i}"), &format!("phantom-{i}"), "never returned"));
    }
    store
        .write(move |c| {
            graph::create_entities(c, &entities)?;
            graph::create_relations(c, &relations)
        })
        .unwrap();
    store.update_search_index().unwrap();
    (dir, store)
}

/// Runs `op` twice on a fresh reader connection of `store`'s file and counts the
/// statements of the second run (the first loads the schema, once per connection).
/// Returns the statements the operation ran itself, the number of statements run inside
/// them (FTS5 looking up its shadow tables, which depends on the index's layout, not on
/// how many rows match), and the number of entities returned.
fn count(store: &Store, op: &dyn Fn(&Connection) -> Result<KnowledgeGraph, GraphError>) -> (usize, usize, usize) {
    let conn = super::readers::open_reader(store.path()).unwrap();
    op(&conn).unwrap();
    let (graph, log) = traced(&conn, |c| op(c).unwrap());
    let nested = log.iter().filter(|s| s.starts_with("-- ")).count();
    (log.len() - nested, nested, graph.entities.len())
}

#[test]
fn reads_run_a_constant_number_of_statements() {
    let small = counting_graph(10);
    let large = counting_graph(500);
    let names = |n: usize| -> Vec<String> {
        (0..n).map(|i| format!("match-{i}")).chain(["missing".to_string(), "ghost-0".to_string()]).collect()
    };
    let small_names = names(10);
    let large_names = names(500);

    type Op<'a> = Box<dyn Fn(&Connection) -> Result<KnowledgeGraph, GraphError> + 'a>;
    let cases: Vec<(&str, usize, Op, Op)> = vec![
        ("read_graph", 3, Box::new(graph::read_graph), Box::new(graph::read_graph)),
        (
            "open_nodes",
            3,
            Box::new(|c| graph::open_nodes(c, &small_names)),
            Box::new(|c| graph::open_nodes(c, &large_names)),
        ),
        (
            // Plus the trigram probes of both indexes (see `graph::selective_phrase`).
            "search_nodes, index",
            4 + 2 * graph::MAX_PROBES,
            Box::new(|c| graph::search_nodes(c, "NEEDLE")),
            Box::new(|c| graph::search_nodes(c, "NEEDLE")),
        ),
        (
            "search_nodes, 2-character scan",
            4,
            Box::new(|c| graph::search_nodes(c, "日本")),
            Box::new(|c| graph::search_nodes(c, "日本")),
        ),
        (
            "search_nodes, 1-character scan",
            4,
            Box::new(|c| graph::search_nodes(c, "本")),
            Box::new(|c| graph::search_nodes(c, "本")),
        ),
        ("search_nodes, empty", 4, Box::new(|c| graph::search_nodes(c, "")), Box::new(|c| graph::search_nodes(c, ""))),
    ];
    for (what, max, small_op, large_op) in &cases {
        let (small_top, small_nested, small_n) = count(&small.1, small_op);
        let (large_top, large_nested, large_n) = count(&large.1, large_op);
        // The two graphs really differ in result size (the empty query and read_graph
        // return the non-matching entities too).
        let expect = |n: usize| if what.contains("empty") || *what == "read_graph" { 2 * n } else { n };
        assert_eq!((small_n, large_n), (expect(10), expect(500)), "{what}");
        assert_eq!(
            small_top, large_top,
            "{what}: statements for 10 vs 500 entities (nested: {small_nested} vs {large_nested})"
        );
        assert!(small_top <= *max, "{what}: {small_top} statements");
    }
}

/// Merging the search index in bounded steps: many small indexing transactions leave
/// segments to merge, each step reports work until none is left, and searches find the
/// same rows before and after.
#[test]
fn the_search_index_merges_in_bounded_steps() {
    let (_dir, store) = open_store();
    // Sixty one-row segments, indexed on a connection of our own (the store would merge
    // them in its idle moments).
    let mut conn = super::readers::open_reader(store.path()).unwrap();
    for i in 0..60 {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO entities (name, entity_type) VALUES (?1, 't')", [format!("segment-{i}")]).unwrap();
        graph::repair_search_index_chunk(&tx, 32).unwrap();
        tx.commit().unwrap();
    }
    let before = store.read(|c| graph::search_nodes(c, "segment-4")).unwrap();
    assert_eq!(before.entities.len(), 11);
    let mut steps = 0;
    loop {
        let tx = conn.transaction().unwrap();
        let worked = graph::merge_search_index_step(&tx, 16).unwrap();
        tx.commit().unwrap();
        if !worked {
            break;
        }
        steps += 1;
        assert!(steps < 1_000, "merging never finished");
    }
    assert!(steps > 0, "sixty one-row segments were worth merging");
    assert_eq!(store.read(|c| graph::search_nodes(c, "segment-4")).unwrap(), before);
    assert_search_matches_scan(&store, "segment-5");
}

/// A lone writer that never pauses for long (each write committed on the fast path, the
/// combiner running only for the piece of indexing queued every 32 batches) gets its index
/// merged: otherwise segments pile up to FTS5's crisis merge (16 at a level), which
/// then runs inside one of the writer's transactions for tens of milliseconds.
#[test]
fn a_lone_writers_index_is_merged_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(&dir.path().join("m.db")).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Fifteen queued pieces of indexing: one segment short of a crisis merge.
        for i in 0..15 * 32 {
            let e = [Entity { name: format!("lone-{i}"), entity_type: "t".into(), observations: vec![] }];
            store.write_small_async(None, move |c| graph::create_entities(c, &e)).await.unwrap();
            // A writer at a human pace: the turn a queued piece of indexing started
            // ends before the next write (under a loaded CPU it might not, and that
            // turn's one step goes to indexing the writes it took in).
            store.wait_for_the_combiner();
        }
    });
    drop(runtime); // joins the combiner's blocking thread
    let segments: i64 =
        store.read(|c| Ok(c.query_row("SELECT count(DISTINCT segid) FROM entity_fts_idx", [], |r| r.get(0))?)).unwrap();
    assert!(segments <= 8, "{segments} segments: the lone writer's index was not merged");
    assert_search_matches_scan(&store, "lone-4");
}

/// The browser's search on texts where SQLite's `LIKE` and JavaScript's lower-casing part
/// ways, against `search_nodes`: `LIKE`'s own wildcards and escape in the needle, the
/// Kelvin sign and `İ` (whose lower-case forms hold ASCII letters), ASCII case, a NUL.
/// (Text that is not UTF-8, which only another program can store, is checked in
/// `graph::browse`'s tests: `search_nodes` cannot return such rows at all.)
#[test]
fn the_browser_search_matches_search_nodes_on_awkward_text() {
    let (_dir, store) = open_store();
    let texts = [
        "100% sure",
        "a_b",
        "axb",
        "back\\slash",
        "\u{212A}elvin",
        "kelvin",
        "İstanbul",
        "istanbul",
        "MiXeD Case",
        "nul\0inside",
        "plain words",
    ];
    let entities: Vec<Entity> = texts.iter().enumerate().map(|(i, t)| entity(&format!("n{i}"), "t", &[t])).collect();
    store.write(move |c| graph::create_entities(c, &entities)).unwrap();
    store.update_search_index().unwrap();
    let counts = graph::TrigramCounts::default();
    let queries = [
        "%",
        "_",
        "\\",
        "a_b",
        "a%b",
        "100%",
        "k",
        "K",
        "\u{212A}",
        "kelvin",
        "i",
        "i\u{307}",
        "İ",
        "ist",
        "mixed",
        "MIXED CASE",
        "l\0i",
        "\0",
        "ab",
        "AB",
        "b",
        "x",
        "n",
    ];
    for q in queries {
        let expected: Vec<String> =
            store.read(|c| graph::search_nodes(c, q)).unwrap().entities.into_iter().map(|e| e.name).collect();
        for (limit, window) in [(1, 1), (2, 100)] {
            for forward in [true, false] {
                let browsed = browse_all(&store, q, &counts, limit, window, forward);
                assert_eq!(browsed, expected, "{q:?} (limit {limit}, window {window}, forward {forward})");
            }
        }
    }
}
