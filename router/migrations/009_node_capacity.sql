-- Admission and placement (issue 15).
-- max_concurrent: requests a node may have in flight (NULL: the slots the node tells,
-- else no limit). weight: its share of the load relative to other nodes.
-- A node declared in the configuration file has source = 'config'.
ALTER TABLE nodes ADD COLUMN max_concurrent INTEGER;
ALTER TABLE nodes ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
