-- Router replicas on one database (issue 13; SQLite's migration 010).
--
-- settings_version grows with every change of a node or of a key's settings (not with
-- last_used_at): replicas poll it and reload nodes and keys when it moves.
CREATE TABLE settings_version (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO settings_version (id, version) VALUES (1, 0);

CREATE FUNCTION bump_settings_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE settings_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER nodes_changed AFTER INSERT OR UPDATE ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION bump_settings_version();
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OF name, enabled, revoked, expires_at,
    allowed_models, rpm_limit, tpm_limit, max_concurrent, daily_token_budget, monthly_token_budget,
    budget_tz, priority ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_settings_version();

-- What each live replica has in flight, per node (node_id 0: the replica's heartbeat),
-- written every second; seen_at is Unix milliseconds.
CREATE TABLE replica_load (
    replica_id TEXT NOT NULL,
    node_id BIGINT NOT NULL,
    in_flight BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (replica_id, node_id)
);
