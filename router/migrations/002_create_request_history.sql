-- One row per proxied request. Times are Unix milliseconds (UTC).
CREATE TABLE request_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    request_type TEXT NOT NULL,
    model TEXT NOT NULL,
    node_id INTEGER,
    node_name TEXT,
    client_ip TEXT,
    stream INTEGER NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    error_message TEXT,
    duration_ms INTEGER NOT NULL
);
