//! The layer that guards the admin routes: the admin key ([`crate::auth::AdminKey`]) as
//! a Bearer token, or a dashboard session ([`crate::auth::Sessions`]) with the
//! same-origin rule for writes.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::same_origin;
use crate::state::AppState;

/// The bearer token of a request, if any.
pub fn bearer_token(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The admin key as a Bearer token, or a dashboard session; a write made with the
/// session must come from the dashboard's own origin (cross-site request forgery).
pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if bearer_token(&req).is_some_and(|k| st.admin_key.matches(k)) {
        return next.run(req).await;
    }
    if !st.sessions.is_open(req.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && !same_origin(req.headers()) {
        return ApiError::CrossSite.into_response();
    }
    next.run(req).await
}
