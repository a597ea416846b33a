-- The searched text, lower-cased once and kept, with a signature of the characters it
-- holds: a search of one or two characters, which the trigram indexes cannot answer, used
-- to scan every row through our lower() (a Rust function: a call and a copy per row, about
-- 75 ms of CPU for 100,000 entities). Now it reads each row's signature (an integer), and
-- only a row whose signature holds every character of the needle is tested, with the
-- built-in instr() on its stored lower-cased text. Indexed searches recheck their
-- candidates here too, and every search takes the names it answers with from here.
--
-- Filled exactly where the trigram indexes are (store/graph.rs, repair_search_index and
-- its bounded chunk; the bulk import), from the rows search_stale notes, so it holds what
-- our JavaScript-compatible lower() gives for every row, including rows another program
-- (the Node server, the sqlite3 shell) wrote; searches read it only when no row waits.
-- Side tables: the Node server's three tables are untouched, and it never reads these.
--
-- The lower-cased columns have no declared type, so each holds the value lower() returned
-- as it was (text, or a BLOB another program stored, which lower() leaves alone):
-- instr() on them decides exactly as instr(lower(x), needle) on the base row did. A
-- signature is search_signature() of that value (store/graph.rs, `signature`): one bit
-- per kind of character, every bit for anything but text, so a text holding the needle
-- always has the needle's bits. The bits are part of this file's format. Signatures and
-- names come before the texts in each row, so reading them never reads a long text.
CREATE TABLE entity_text (
    id INTEGER PRIMARY KEY,   -- entities.rowid
    name_sig INTEGER,         -- search_signature(name_lc)
    entity_type_sig INTEGER,  -- search_signature(entity_type_lc)
    name,                     -- entities.name as stored: what a match answers with
    name_lc,                  -- lower(entities.name)
    entity_type_lc            -- lower(entities.entity_type)
);

CREATE TABLE observation_text (
    id INTEGER PRIMARY KEY,   -- observations.id
    content_sig INTEGER,      -- search_signature(content_lc)
    entity_name,              -- observations.entity_name as stored
    content_lc                -- lower(observations.content)
);

-- Every existing row, lower-cased (once: MATERIALIZED) by the migrating connection, on
-- which memory-server registers its lower() and search_signature() before it migrates
-- (store/migrate.rs), as for the index in 0002. Rows noted in search_stale are done again
-- by the next repair, as their index entries are.
WITH t AS MATERIALIZED (SELECT rowid AS id, name, lower(name) AS name_lc, lower(entity_type) AS type_lc FROM entities)
INSERT INTO entity_text (id, name_sig, entity_type_sig, name, name_lc, entity_type_lc)
    SELECT id, search_signature(name_lc), search_signature(type_lc), name, name_lc, type_lc FROM t;
WITH t AS MATERIALIZED (SELECT id, entity_name, lower(content) AS lc FROM observations)
INSERT INTO observation_text (id, content_sig, entity_name, content_lc)
    SELECT id, search_signature(lc), entity_name, lc FROM t;
