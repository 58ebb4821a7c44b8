//! Acceptance tests: the real router on `127.0.0.1:0`, mock nodes on real sockets,
//! requests sent as a client would. One test binary (faster to link), one module
//! per area.

mod accounting;
mod admission;
mod anthropic;
mod bodies;
mod config_file;
mod console_api;
mod console_e2e;
mod console_usage_e2e;
mod dashboard_api;
mod dashboard_e2e;
mod fuzz_bodies;
mod hostile;
mod key_usage;
mod keys;
mod ollama;
mod open_files;
mod persistence;
mod process;
mod proxy;
mod replica_limits;
mod replicas;
mod support;
mod tls;
