//! Dashboard sessions: the login that exchanges the admin key for a cookie, the
//! logout, and the same-origin rule for writes made with the cookie.
//!
//! The cookie is HttpOnly and SameSite=Strict, so a browser does not send it with a
//! request that another site starts; the admin API also refuses a write (any method
//! but GET and HEAD) made with the cookie unless `Origin` (or, without it, `Referer`)
//! names this router. Bearer-key requests are not sent by browsers on their own and
//! are not checked.
//!
//! A wrong key gets one answer whatever it is (the same status and body; the key is
//! compared through its hash, in constant time), and repeated wrong keys from one
//! address are slowed (`throttle`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::ApiError;
use crate::app::AppState;

const COOKIE: &str = "llm_router_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Live dashboard sessions: random token → expiry.
#[derive(Default)]
pub struct Sessions {
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn create(&self) -> String {
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.tokens.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, exp| *exp > now);
        map.insert(token.clone(), now + SESSION_TTL);
        token
    }

    fn is_valid(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|exp| *exp > Instant::now())
    }

    fn remove(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Whether the request carries a live dashboard session cookie.
pub fn session_is_valid(st: &AppState, headers: &HeaderMap) -> bool {
    session_token(headers).is_some_and(|t| st.sessions.is_valid(t))
}

/// Whether a browser's request comes from a page of this router: `Origin`, else
/// `Referer`, names the host the request was sent to. A request with neither, or with
/// `Sec-Fetch-Site: cross-site`/`same-site`, is not.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if matches!(
        text(header::HeaderName::from_static("sec-fetch-site")),
        Some("cross-site" | "same-site")
    ) {
        return false;
    }
    let Some(host) = text(header::HOST) else {
        return false;
    };
    let source = text(header::ORIGIN).or_else(|| text(header::REFERER));
    source
        .and_then(|s| url::Url::parse(s).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .is_some_and(|u| {
            let authority = match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => return false,
            };
            authority.eq_ignore_ascii_case(host)
        })
}

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
    let token = st.sessions.create();
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// Ends the session.
#[utoipa::path(post, path = "/dashboard/logout", tag = "dashboard", responses((status = 204, description = "Logged out")))]
pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(t) = session_token(&headers) {
        st.sessions.remove(t);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_or_referer_must_name_the_host() {
        let host = ("host", "127.0.0.1:32768");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:32768")])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "http://127.0.0.1:32768/dashboard#/keys")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:9999")])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])), "neither header");
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:32768"),
            ("sec-fetch-site", "cross-site")
        ])));
        // Origin wins over a Referer that would pass.
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example"),
            ("referer", "http://127.0.0.1:32768/dashboard")
        ])));
    }
}
