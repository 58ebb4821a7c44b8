//! Wire types shared by the router, the mock node, tools and tests.
//!
//! This crate holds plain data only: no I/O, no HTTP, no SQL. `protocol` is the
//! vocabulary every other crate speaks (records, token usage, dashboard DTOs).

pub mod protocol;
