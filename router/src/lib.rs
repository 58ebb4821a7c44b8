//! llm-router: one OpenAI-compatible endpoint over many inference nodes, accounting
//! for every token.
//!
//! The modules follow a request's data flow: `proxy` (client side) → `balancer`
//! (pick a node, lease) → `upstream` (talk to the node) → `token` (usage, estimates,
//! the stream tap) → `balancer::finish_request` → `recorder` (group commit) → `store`
//! (SQLite) → `stats` → `api` (JSON) → `dashboard` (web UI). `nodes` keeps the
//! registry and health checks; `server` accepts client connections and bounds
//! them; `auth` holds the operator's credentials; `state` is what every handler
//! reaches; `openapi` documents every layer's routes; `app` assembles everything;
//! `demo` runs a showcase.

pub mod api;
pub mod app;
pub mod auth;
pub mod balancer;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod proxy;
pub mod recorder;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod token;
pub mod upstream;
