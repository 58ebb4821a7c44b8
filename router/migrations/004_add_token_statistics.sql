-- SPEC-5045f436 S-2 / C-8: token figures on every request record, and rollups that
-- keep token statistics forever (request_history is pruned, the rollups are not).
ALTER TABLE request_history ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_history ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_history ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_history ADD COLUMN token_source TEXT NOT NULL DEFAULT 'reported';

CREATE INDEX request_history_status ON request_history (status, id);

-- One row per UTC hour x node x model, updated in the transaction that inserts the
-- history rows it sums. hour_start is Unix seconds, a multiple of 3600.
CREATE TABLE token_stats_hourly (
    hour_start INTEGER NOT NULL,
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
    PRIMARY KEY (node_id, model, hour_start)
) WITHOUT ROWID;

-- The same sums at coarser grains, so that a query never sums rows of a dimension
-- it does not need: a year of unfiltered daily figures reads 8,760 rows, a year of
-- one model's figures 8,760 rows, whatever the history size and node count.
CREATE TABLE token_stats_hourly_node (
    hour_start INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    cancelled_count INTEGER NOT NULL DEFAULT 0,
    estimated_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    duration_ms_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, hour_start)
) WITHOUT ROWID;

CREATE TABLE token_stats_hourly_model (
    hour_start INTEGER NOT NULL,
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
    PRIMARY KEY (model, hour_start)
) WITHOUT ROWID;

CREATE TABLE token_stats_hourly_all (
    hour_start INTEGER PRIMARY KEY,
    request_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    cancelled_count INTEGER NOT NULL DEFAULT 0,
    estimated_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    duration_ms_sum INTEGER NOT NULL DEFAULT 0
);

-- All-time sums per node x model (T-14: totals at start-up, by node, by model).
CREATE TABLE token_stats_total (
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
    PRIMARY KEY (node_id, model)
) WITHOUT ROWID;
