-- Node kinds and TLS to nodes (issue 14).
-- kind: which server the node runs (openai, ollama, vllm, llamacpp, lmstudio), told by
-- the health checker from the node's routes unless kind_explicit (set by the operator).
-- tls_insecure: the operator chose not to verify this https node's certificate.
ALTER TABLE nodes ADD COLUMN kind TEXT NOT NULL DEFAULT 'openai';
ALTER TABLE nodes ADD COLUMN kind_explicit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN tls_insecure INTEGER NOT NULL DEFAULT 0;
