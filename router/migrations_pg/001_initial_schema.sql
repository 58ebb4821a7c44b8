-- The schema of SQLite's migrations 001-008 in one step, for PostgreSQL. Integers
-- are BIGINT and booleans 0/1, as in SQLite, so rows decode identically on both
-- engines. request_history.record_uid is the router's unique id of each record: a
-- batch committed again after a lost connection inserts nothing twice.

CREATE TABLE nodes (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key TEXT,
    enabled BIGINT NOT NULL DEFAULT 1,
    include_usage BIGINT NOT NULL DEFAULT 1,
    source TEXT NOT NULL DEFAULT 'api',
    created_at BIGINT NOT NULL,
    deleted_at BIGINT,
    kind TEXT NOT NULL DEFAULT 'openai',
    kind_explicit BIGINT NOT NULL DEFAULT 0,
    tls_insecure BIGINT NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX nodes_live_base_url ON nodes (base_url) WHERE deleted_at IS NULL;

CREATE TABLE request_history (
    id BIGSERIAL PRIMARY KEY,
    timestamp BIGINT NOT NULL,
    completed_at BIGINT NOT NULL,
    request_type TEXT NOT NULL,
    model TEXT NOT NULL,
    node_id BIGINT,
    node_name TEXT,
    client_ip TEXT,
    stream BIGINT NOT NULL,
    status TEXT NOT NULL,
    http_status BIGINT NOT NULL,
    error_message TEXT,
    duration_ms BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    token_source TEXT NOT NULL DEFAULT 'reported',
    api_key_id BIGINT,
    api_key_name TEXT,
    time_to_first_token_ms BIGINT
);

CREATE INDEX request_history_timestamp ON request_history (timestamp);

CREATE INDEX request_history_model ON request_history (model, id);

CREATE TABLE token_stats_hourly (
    hour_start BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, model, hour_start)
);

CREATE TABLE token_stats_hourly_node (
    hour_start BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    min_id BIGINT,
    max_id BIGINT,
    PRIMARY KEY (node_id, hour_start)
);

CREATE TABLE token_stats_hourly_model (
    hour_start BIGINT NOT NULL,
    model TEXT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (model, hour_start)
);

CREATE TABLE token_stats_hourly_all (
    hour_start BIGINT PRIMARY KEY,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE token_stats_total (
    node_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, model)
);

CREATE INDEX request_history_unsuccessful ON request_history (status, id)
    WHERE status <> 'success';

CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash BYTEA NOT NULL UNIQUE,
    enabled BIGINT NOT NULL DEFAULT 1,
    revoked BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT,
    -- A JSON array of model names; NULL allows every model.
    allowed_models TEXT,
    rpm_limit BIGINT,
    tpm_limit BIGINT,
    max_concurrent BIGINT,
    daily_token_budget BIGINT,
    monthly_token_budget BIGINT,
    budget_tz TEXT NOT NULL DEFAULT 'UTC',
    -- Queue order when nodes are full (higher first); anonymous requests have 0.
    priority BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX request_history_key ON request_history (api_key_id, id)
    WHERE api_key_id IS NOT NULL;

CREATE TABLE token_stats_hourly_key (
    hour_start BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour_start, node_id, model)
);

CREATE TABLE token_stats_total_key (
    key_id BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    estimated_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms_sum BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, node_id, model)
);

ALTER TABLE request_history ADD COLUMN record_uid BYTEA;
CREATE UNIQUE INDEX request_history_record_uid ON request_history (record_uid);
