-- What each replica counts per client key, so that a key's per-minute limits and its
-- concurrency hold across replicas: requests admitted and tokens charged in the last
-- 60 s, and requests in flight, published every sync round (only keys with such a
-- limit and something to count; a key's row goes once it counts nothing). The others
-- add the rows seen within the replica timeout to their own figures. seen_at is Unix
-- milliseconds.
CREATE TABLE replica_key_load (
    replica_id TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    in_flight BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (replica_id, key_id)
);
