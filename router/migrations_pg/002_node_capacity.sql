-- SQLite's migration 009 (admission and placement, issue 15).
-- max_concurrent: requests a node may have in flight (NULL: the slots the node tells,
-- else no limit). weight: its share of the load relative to other nodes.
ALTER TABLE nodes ADD COLUMN max_concurrent BIGINT;
ALTER TABLE nodes ADD COLUMN weight BIGINT NOT NULL DEFAULT 1;
