//! The admin key and where it comes from.
//!
//! `--admin-key` / `LLM_ROUTER_ADMIN_KEY` wins; otherwise a key is generated at first
//! start, stored in `<data-dir>/admin_key` with mode 0600 and printed once. Requests
//! carry it as `Authorization: Bearer <key>` (checked by the admin layer, `api::auth`);
//! it is compared in constant time.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AdminKey(Arc<String>);

impl AdminKey {
    pub fn new(key: String) -> Self {
        AdminKey(Arc::new(key))
    }

    /// Compares SHA-256 digests in constant time, so that neither the content nor the
    /// length of a wrong candidate changes how long the answer takes.
    pub fn matches(&self, candidate: &str) -> bool {
        let digest = |s: &str| Sha256::digest(s.as_bytes());
        digest(&self.0).as_slice().ct_eq(digest(candidate).as_slice()).into()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The admin key and whether it was generated now.
pub fn resolve_admin_key(configured: Option<String>, data_dir: &Path) -> std::io::Result<(AdminKey, bool)> {
    if let Some(k) = configured.filter(|k| !k.trim().is_empty()) {
        return Ok((AdminKey::new(k.trim().to_string()), false));
    }
    let path = data_dir.join("admin_key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        if !k.trim().is_empty() {
            return Ok((AdminKey::new(k.trim().to_string()), false));
        }
    }
    let key = format!("lr-{}", hex(&rand::random::<[u8; 24]>()));
    write_private(&path, &key)?;
    Ok((AdminKey::new(key), true))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}
