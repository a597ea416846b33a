-- Substring search index: FTS5 trigram tables over the lower-cased name, type and
-- observation texts, kept in sync by triggers. `lower()` is overridden on memory-server's
-- connections with JavaScript-compatible Unicode lower-casing, so a phrase query of the
-- lower-cased search text finds every row the official server's
-- `x.toLowerCase().includes(q.toLowerCase())` matches; search_nodes rechecks those
-- candidates, since the tokenizer skips NUL and reads U+FFFE/U+FFFF as U+FFFD (see
-- `trigram_phrase` in graph.rs). The tables are contentless (the text lives in the base
-- tables) and keyed by the base tables' rowids.
CREATE VIRTUAL TABLE entity_fts USING fts5(
    name, entity_type,
    content = '', contentless_delete = 1,
    tokenize = 'trigram case_sensitive 1'
);

CREATE VIRTUAL TABLE observation_fts USING fts5(
    content,
    content = '', contentless_delete = 1,
    tokenize = 'trigram case_sensitive 1'
);

INSERT INTO entity_fts(rowid, name, entity_type)
    SELECT rowid, lower(name), lower(entity_type) FROM entities;
INSERT INTO observation_fts(rowid, content)
    SELECT id, lower(content) FROM observations;

CREATE TRIGGER entities_fts_insert AFTER INSERT ON entities BEGIN
    INSERT INTO entity_fts(rowid, name, entity_type)
        VALUES (new.rowid, lower(new.name), lower(new.entity_type));
END;
CREATE TRIGGER entities_fts_delete AFTER DELETE ON entities BEGIN
    DELETE FROM entity_fts WHERE rowid = old.rowid;
END;
CREATE TRIGGER entities_fts_update AFTER UPDATE ON entities BEGIN
    DELETE FROM entity_fts WHERE rowid = old.rowid;
    INSERT INTO entity_fts(rowid, name, entity_type)
        VALUES (new.rowid, lower(new.name), lower(new.entity_type));
END;

CREATE TRIGGER observations_fts_insert AFTER INSERT ON observations BEGIN
    INSERT INTO observation_fts(rowid, content) VALUES (new.id, lower(new.content));
END;
CREATE TRIGGER observations_fts_delete AFTER DELETE ON observations BEGIN
    DELETE FROM observation_fts WHERE rowid = old.id;
END;
CREATE TRIGGER observations_fts_update AFTER UPDATE ON observations BEGIN
    DELETE FROM observation_fts WHERE rowid = old.id;
    INSERT INTO observation_fts(rowid, content) VALUES (new.id, lower(new.content));
END;
