//! The web dashboard at `/dashboard`, the operator's console: embedded static assets,
//! the Content-Security-Policy they satisfy, and the login and logout (`session`) that
//! open and close the cookie session (the sessions and the wrong-key throttle are
//! `crate::auth`'s).
//!
//! The assets (HTML, CSS, one script per page and Chart.js 4.6.1, vendored from npm,
//! MIT) are compiled into the binary with `include_str!`, so `cargo build` needs no
//! Node.js. The page reads and writes through the same `/api/*` JSON as any other
//! client; it computes no figure of its own. No inline script or style: the policy
//! allows scripts and styles from this origin only.

pub mod session;

use axum::extract::Path;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

pub use session::{login, logout, Login};

use crate::state::AppState;

/// What the page may load: its own scripts, styles and API, nothing inline, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The page's scripts, in the order `index.html` loads them.
const SCRIPTS: [(&str, &str); 9] = [
    ("core.js", include_str!("assets/js/core.js")),
    ("overview.js", include_str!("assets/js/overview.js")),
    ("nodes.js", include_str!("assets/js/nodes.js")),
    ("keys.js", include_str!("assets/js/keys.js")),
    ("usage.js", include_str!("assets/js/usage.js")),
    ("speed.js", include_str!("assets/js/speed.js")),
    ("history.js", include_str!("assets/js/history.js")),
    ("main.js", include_str!("assets/js/main.js")),
    ("chart.umd.min.js", include_str!("assets/vendor/chart.umd.min.js")),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css", include_str!("assets/app.css")) }),
        )
        .route("/dashboard/js/{file}", get(script))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("assets/index.html"))
}

async fn script(Path(file): Path<String>) -> Response {
    match SCRIPTS.iter().find(|(name, _)| *name == file) {
        Some((_, body)) => asset("text/javascript", body),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        ],
        body,
    )
        .into_response()
}
