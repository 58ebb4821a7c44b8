-- Rollup rows per writer (no SQLite counterpart: one router per SQLite file).
--
-- Each replica's record writer claims a shard when it connects and upserts only the
-- rollup rows of its shard, so replicas committing at once never wait for each
-- other's row locks (held through each COMMIT's fsync). Every read sums over the
-- key columns, so several rows of one key add up; rows from before this migration
-- are shard 0. shard is the last column of each primary key: reads keep the index
-- prefixes they used.
ALTER TABLE token_stats_hourly ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_hourly DROP CONSTRAINT token_stats_hourly_pkey,
    ADD PRIMARY KEY (node_id, model, hour_start, shard);

ALTER TABLE token_stats_hourly_node ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_hourly_node DROP CONSTRAINT token_stats_hourly_node_pkey,
    ADD PRIMARY KEY (node_id, hour_start, shard);

ALTER TABLE token_stats_hourly_model ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_hourly_model DROP CONSTRAINT token_stats_hourly_model_pkey,
    ADD PRIMARY KEY (model, hour_start, shard);

ALTER TABLE token_stats_hourly_all ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_hourly_all DROP CONSTRAINT token_stats_hourly_all_pkey,
    ADD PRIMARY KEY (hour_start, shard);

ALTER TABLE token_stats_total ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_total DROP CONSTRAINT token_stats_total_pkey,
    ADD PRIMARY KEY (node_id, model, shard);

ALTER TABLE token_stats_hourly_key ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_hourly_key DROP CONSTRAINT token_stats_hourly_key_pkey,
    ADD PRIMARY KEY (key_id, hour_start, node_id, model, shard);

ALTER TABLE token_stats_total_key ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_stats_total_key DROP CONSTRAINT token_stats_total_key_pkey,
    ADD PRIMARY KEY (key_id, node_id, model, shard);
