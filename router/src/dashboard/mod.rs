//! The web dashboard at `/dashboard`: embedded static assets and a cookie session.
//!
//! The assets (HTML, CSS, JS and Chart.js 4.6.1, vendored from npm, MIT) are compiled into the
//! binary with `include_str!`, so `cargo build` needs no Node.js. Logging in with the
//! admin key creates a session cookie (HttpOnly, SameSite=Strict, 12 h); the admin
//! API accepts that cookie as well as the Bearer key. The page reads the same
//! `/api/dashboard/*` JSON as any other client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
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

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript", include_str!("assets/app.js"))),
        )
        .route(
            "/dashboard/app.css",
            get(|| asset("text/css", include_str!("assets/app.css"))),
        )
        .route(
            "/dashboard/vendor/chart.umd.min.js",
            get(|| asset("text/javascript", include_str!("assets/vendor/chart.umd.min.js"))),
        )
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("assets/index.html")).await
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize, ToSchema)]
pub struct Login {
    /// The admin key.
    pub key: String,
}

/// Exchanges the admin key for a session cookie.
#[utoipa::path(post, path = "/dashboard/login", tag = "dashboard", request_body = Login,
    responses((status = 204, description = "Logged in; Set-Cookie carries the session"), (status = 401, description = "Wrong admin key")))]
pub async fn login(State(st): State<AppState>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Login>(&body) else {
        return ApiError::BadBody("expected {\"key\": \"<admin key>\"}".into()).into_response();
    };
    if !st.admin_key.matches(req.key.trim()) {
        return ApiError::Unauthorized.into_response();
    }
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
