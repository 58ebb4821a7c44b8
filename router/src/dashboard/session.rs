//! The login that exchanges the admin key for a session cookie, and the logout. The
//! sessions, the cookie and the same-origin rule are `crate::auth`'s.
//!
//! A wrong key gets one answer whatever it is (the same status and body; the key is
//! compared through its hash, in constant time), and repeated wrong keys from one
//! address are slowed (`auth::LoginThrottle`).

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::ApiError;
use crate::auth::same_origin;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
pub struct Login {
    /// The admin key.
    pub key: String,
}

/// The one answer to anything but the right key.
fn refused() -> Response {
    ApiError::Unauthorized.into_response()
}

/// Exchanges the admin key for a session cookie.
#[utoipa::path(post, path = "/dashboard/login", tag = "dashboard", request_body = Login,
    responses((status = 204, description = "Logged in; Set-Cookie carries the session"),
        (status = 401, description = "Not the admin key (one answer whatever was sent)"),
        (status = 403, description = "Sent from another site's page"),
        (status = 429, description = "Too many wrong keys from this address: wait Retry-After seconds")))]
pub async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(header::ORIGIN) && !same_origin(&headers) {
        return ApiError::CrossSite.into_response();
    }
    let now = Instant::now();
    if let Err(wait) = st.login_throttle.check(peer.ip(), now) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = ApiError::TooManyAttempts(secs).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let key = serde_json::from_slice::<Login>(&body)
        .map(|l| l.key)
        .unwrap_or_default();
    if !st.admin_key.matches(key.trim()) {
        st.login_throttle.failed(peer.ip(), now);
        return refused();
    }
    st.login_throttle.succeeded(peer.ip());
    let cookie = st.sessions.open();
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// Ends the session.
#[utoipa::path(post, path = "/dashboard/logout", tag = "dashboard", responses((status = 204, description = "Logged out")))]
pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let cookie = st.sessions.close(&headers);
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}
