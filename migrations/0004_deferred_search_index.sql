-- The search index is brought up to date in batches instead of row by row: a write now
-- only notes which rows changed in search_stale (one small b-tree page), and
-- memory-server re-indexes the noted rows (store/graph.rs, repair_search_index) before
-- any search reads the index, and on its own every few write batches. Indexing a row
-- through the triggers touched about a dozen FTS5 pages per commit (a new segment, its
-- structure record, the docsize and idx tables of both indexes); noting it touches one.
-- The same triggers note rows that other programs (the Node server, the sqlite3 shell)
-- write, so they are indexed with our JavaScript-compatible lower() like our own.
DROP TRIGGER entities_fts_insert;
DROP TRIGGER entities_fts_update;
DROP TRIGGER entities_fts_delete;
DROP TRIGGER observations_fts_insert;
DROP TRIGGER observations_fts_update;
DROP TRIGGER observations_fts_delete;

CREATE TRIGGER entities_fts_insert AFTER INSERT ON entities BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('entity', new.rowid);
END;
CREATE TRIGGER entities_fts_update AFTER UPDATE ON entities BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('entity', old.rowid), ('entity', new.rowid);
END;
CREATE TRIGGER entities_fts_delete AFTER DELETE ON entities BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('entity', old.rowid);
END;

CREATE TRIGGER observations_fts_insert AFTER INSERT ON observations BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('observation', new.id);
END;
CREATE TRIGGER observations_fts_update AFTER UPDATE ON observations BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('observation', old.id), ('observation', new.id);
END;
CREATE TRIGGER observations_fts_delete AFTER DELETE ON observations BEGIN
    INSERT OR IGNORE INTO search_stale(kind, id) VALUES ('observation', old.id);
END;
