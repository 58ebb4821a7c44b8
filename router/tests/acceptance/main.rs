//! Acceptance tests: the real router on `127.0.0.1:0`, mock nodes on real sockets,
//! requests sent as a client would. One test binary (faster to link), one module
//! per area.

mod accounting;
mod admission;
mod config_file;
mod dashboard_api;
mod dashboard_e2e;
mod keys;
mod persistence;
mod proxy;
mod support;
mod tls;
