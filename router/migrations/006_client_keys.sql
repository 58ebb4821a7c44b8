-- Client keys (DESIGN §11): who may use the router, within which limits, and
-- whose tokens every request counts for.
--
-- The secret itself is never stored: secret_hash is its SHA-256 (the secrets are
-- high-entropy random strings, so a plain hash is enough); prefix is the first
-- characters of the secret, to recognise a key in a list.
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    enabled INTEGER NOT NULL DEFAULT 1,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at INTEGER,
    -- A JSON array of model names; NULL allows every model.
    allowed_models TEXT,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    max_concurrent INTEGER,
    daily_token_budget INTEGER,
    monthly_token_budget INTEGER,
    budget_tz TEXT NOT NULL DEFAULT 'UTC',
    -- Queue order when nodes are full (higher first); anonymous requests have 0.
    priority INTEGER NOT NULL DEFAULT 0
);

-- Each record names its key (NULL: anonymous). The name is the key's name when the
-- request was made; figures group by id, so renaming a key changes none.
ALTER TABLE request_history ADD COLUMN api_key_id INTEGER;
ALTER TABLE request_history ADD COLUMN api_key_name TEXT;

-- The history page's key filter. Partial: anonymous rows (most of them on an open
-- router) cost no index write.
CREATE INDEX request_history_key ON request_history (api_key_id, id)
    WHERE api_key_id IS NOT NULL;

-- The rollups gain the key dimension, kept forever like the others. key_id 0 is
-- anonymous (key ids start at 1). Hourly: UTC hour x key x node x model.
CREATE TABLE token_stats_hourly_key (
    hour_start INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    cancelled_count INTEGER NOT NULL DEFAULT 0,
    estimated_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    duration_ms_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour_start, node_id, model)
) WITHOUT ROWID;

-- All time: key x node x model.
CREATE TABLE token_stats_total_key (
    key_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    cancelled_count INTEGER NOT NULL DEFAULT 0,
    estimated_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    duration_ms_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, node_id, model)
) WITHOUT ROWID;

-- Everything counted before keys existed was anonymous: the key rollups start with
-- it, so that the sums by key equal every other total.
INSERT INTO token_stats_hourly_key (hour_start, key_id, node_id, model, request_count,
    success_count, error_count, cancelled_count, estimated_count, input_tokens,
    output_tokens, total_tokens, duration_ms_sum)
SELECT hour_start, 0, node_id, model, request_count, success_count, error_count,
    cancelled_count, estimated_count, input_tokens, output_tokens, total_tokens,
    duration_ms_sum
FROM token_stats_hourly;

INSERT INTO token_stats_total_key (key_id, node_id, model, request_count,
    success_count, error_count, cancelled_count, estimated_count, input_tokens,
    output_tokens, total_tokens, duration_ms_sum)
SELECT 0, node_id, model, request_count, success_count, error_count,
    cancelled_count, estimated_count, input_tokens, output_tokens, total_tokens,
    duration_ms_sum
FROM token_stats_total;
