-- Request and response bodies (SQLite's migration 011): written only with
-- --store-bodies, cut at --stored-body-max-bytes; one row per history row that has
-- one, with its id, deleted with it.
CREATE TABLE request_bodies (
    id BIGINT PRIMARY KEY REFERENCES request_history(id) ON DELETE CASCADE,
    request_body TEXT,
    request_truncated BIGINT NOT NULL DEFAULT 0,
    response_body TEXT,
    response_truncated BIGINT NOT NULL DEFAULT 0
);
