//! Build steps of the router:
//!
//! - Rebuilds it when a migration is added: `sqlx::migrate!` embeds the migration
//!   folders at compile time, and cargo does not watch them by itself.
//! - Writes the `cl100k_base` BPE tables of the estimates to `OUT_DIR`, serialized
//!   from bpe-openai's own: bpe-openai keeps them in a static that is never freed,
//!   and the router loads its copy only while it needs it (`token::tables`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations_pg");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let tables = rmp_serde::to_vec(&bpe_openai::cl100k_base().bpe).expect("the tables serialize");
    std::fs::write(out.join("cl100k_base.dict"), tables).expect("OUT_DIR is writable");
}
