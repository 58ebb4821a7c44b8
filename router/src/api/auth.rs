//! The admin key: where it comes from and the layer that checks it.
//!
//! `--admin-key` / `LLM_ROUTER_ADMIN_KEY` wins; otherwise a key is generated at first
//! start, stored in `<data-dir>/admin_key` with mode 0600 and printed once. Requests
//! carry it as `Authorization: Bearer <key>`; it is compared in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::AppState;

#[derive(Clone)]
pub struct AdminKey(Arc<String>);

impl AdminKey {
    pub fn new(key: String) -> Self {
        AdminKey(Arc::new(key))
    }

    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
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

/// The bearer token of a request, if any.
pub fn bearer_token(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let authorized = bearer_token(&req).is_some_and(|k| st.admin_key.matches(k))
        || crate::dashboard::session_is_valid(&st, req.headers());
    if !authorized {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}
