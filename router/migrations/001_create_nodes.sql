-- Inference nodes registered through the API or the configuration.
-- A deleted node keeps its row (deleted_at set) so its statistics keep a name.
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    include_usage INTEGER NOT NULL DEFAULT 1,
    source TEXT NOT NULL DEFAULT 'api',
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE UNIQUE INDEX nodes_live_base_url ON nodes (base_url) WHERE deleted_at IS NULL;
