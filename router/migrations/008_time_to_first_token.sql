-- Time to first token (issue 16): milliseconds from the request's arrival to the
-- first byte of the node's answer (the first chunk of a stream), as observed by
-- llm_router_time_to_first_token_seconds. NULL when no byte came (the request was
-- cancelled or failed before, or no node took it) and for rows older than this
-- migration. The speed figures (tokens per second of generation, TTFT percentiles)
-- are computed from it over the history kept.
ALTER TABLE request_history ADD COLUMN time_to_first_token_ms INTEGER;
