-- Request and response bodies (DESIGN §6), written only when the router stores them
-- (--store-bodies): the client's body and the node's answer, each cut at
-- --stored-body-max-bytes (*_truncated = 1 when cut). One row per history row that
-- has one, with the same id, in a table of its own so that history pages never read
-- bodies; deleted with its history row (retention).
CREATE TABLE request_bodies (
    id INTEGER PRIMARY KEY REFERENCES request_history(id) ON DELETE CASCADE,
    request_body TEXT,
    request_truncated INTEGER NOT NULL DEFAULT 0,
    response_body TEXT,
    response_truncated INTEGER NOT NULL DEFAULT 0
);
