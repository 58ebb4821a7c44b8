//! Dashboard sessions: random tokens carried by a cookie, and the same-origin rule for
//! writes made with it.
//!
//! The cookie is HttpOnly and SameSite=Strict, so a browser does not send it with a
//! request that another site starts; the admin API also refuses a write (any method
//! but GET and HEAD) made with the cookie unless `Origin` (or, without it, `Referer`)
//! names this router. Bearer-key requests are not sent by browsers on their own and
//! are not checked. The login and logout handlers are `dashboard::session`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

const COOKIE: &str = "llm_router_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Live dashboard sessions: random token → expiry.
#[derive(Default)]
pub struct Sessions {
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Starts a session: the `Set-Cookie` value that carries it.
    pub fn open(&self) -> String {
        let token = self.create();
        format!(
            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_TTL.as_secs()
        )
    }

    /// Ends the session the request carries, if any: the `Set-Cookie` value that
    /// clears the cookie.
    pub fn close(&self, headers: &HeaderMap) -> String {
        if let Some(t) = session_token(headers) {
            self.remove(t);
        }
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }

    /// Whether the request carries a live dashboard session cookie.
    pub fn is_open(&self, headers: &HeaderMap) -> bool {
        session_token(headers).is_some_and(|t| self.is_valid(t))
    }

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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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
