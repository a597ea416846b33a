-- Rows written through the search triggers by another program (the Node server, the
-- sqlite3 shell) are lower-cased by SQLite's built-in, ASCII-only lower(), so the index
-- would hold "mÜller" for "MÜLLER". The triggers now also note such rows, recognised by
-- lower('Ä') not being 'ä' on the writing connection, and memory-server re-indexes them
-- with its own lower() before it searches (store/graph.rs, repair_search_index).
CREATE TABLE search_stale (
    kind TEXT NOT NULL,   -- 'entity' (entities.rowid) or 'observation' (observations.id)
    id INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

DROP TRIGGER entities_fts_insert;
DROP TRIGGER entities_fts_update;
DROP TRIGGER observations_fts_insert;
DROP TRIGGER observations_fts_update;

CREATE TRIGGER entities_fts_insert AFTER INSERT ON entities BEGIN
    INSERT INTO entity_fts(rowid, name, entity_type)
        VALUES (new.rowid, lower(new.name), lower(new.entity_type));
    INSERT OR IGNORE INTO search_stale(kind, id) SELECT 'entity', new.rowid WHERE lower('Ä') <> 'ä';
END;
CREATE TRIGGER entities_fts_update AFTER UPDATE ON entities BEGIN
    DELETE FROM entity_fts WHERE rowid = old.rowid;
    INSERT INTO entity_fts(rowid, name, entity_type)
        VALUES (new.rowid, lower(new.name), lower(new.entity_type));
    INSERT OR IGNORE INTO search_stale(kind, id) SELECT 'entity', new.rowid WHERE lower('Ä') <> 'ä';
END;

CREATE TRIGGER observations_fts_insert AFTER INSERT ON observations BEGIN
    INSERT INTO observation_fts(rowid, content) VALUES (new.id, lower(new.content));
    INSERT OR IGNORE INTO search_stale(kind, id) SELECT 'observation', new.id WHERE lower('Ä') <> 'ä';
END;
CREATE TRIGGER observations_fts_update AFTER UPDATE ON observations BEGIN
    DELETE FROM observation_fts WHERE rowid = old.id;
    INSERT INTO observation_fts(rowid, content) VALUES (new.id, lower(new.content));
    INSERT OR IGNORE INTO search_stale(kind, id) SELECT 'observation', new.id WHERE lower('Ä') <> 'ä';
END;
