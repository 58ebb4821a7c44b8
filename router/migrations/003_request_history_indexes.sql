-- Retention pruning scans by time; the history page filters by node and model.
CREATE INDEX request_history_timestamp ON request_history (timestamp);
CREATE INDEX request_history_node ON request_history (node_id, id);
CREATE INDEX request_history_model ON request_history (model, id);
