-- FTS5 merges its index segments by itself ("automerge"): whichever write transaction
-- crosses a 64-page mark does 64 pages of merging per index level, tens of
-- milliseconds during which every other writer waits, the daemon's whole write tail.
-- memory-server merges in small bounded steps instead ('merge' with a page budget), in
-- the moments its writers' queue is empty (store/writer.rs). The crisis merge stays as
-- the backstop should those steps ever fall behind.
INSERT INTO entity_fts(entity_fts, rank) VALUES ('automerge', 0);
INSERT INTO observation_fts(observation_fts, rank) VALUES ('automerge', 0);
