-- Router replicas on one database (issue 13). SQLite serves one router, but keeps the
-- same tables as PostgreSQL so that the store has one interface.
--
-- settings_version grows with every change of a node or of a key's settings (not with
-- last_used_at): replicas poll it and reload nodes and keys when it moves.
CREATE TABLE settings_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO settings_version (id, version) VALUES (1, 0);

CREATE TRIGGER nodes_inserted AFTER INSERT ON nodes
BEGIN UPDATE settings_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER nodes_updated AFTER UPDATE ON nodes
BEGIN UPDATE settings_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER api_keys_inserted AFTER INSERT ON api_keys
BEGIN UPDATE settings_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER api_keys_updated AFTER UPDATE OF name, enabled, revoked, expires_at, allowed_models,
    rpm_limit, tpm_limit, max_concurrent, daily_token_budget, monthly_token_budget, budget_tz, priority
    ON api_keys
BEGIN UPDATE settings_version SET version = version + 1 WHERE id = 1; END;

-- What each live replica has in flight, per node (node_id 0: the replica's heartbeat),
-- written every second; seen_at is Unix milliseconds.
CREATE TABLE replica_load (
    replica_id TEXT NOT NULL,
    node_id INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (replica_id, node_id)
);
