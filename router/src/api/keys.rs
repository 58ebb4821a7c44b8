//! `/api/keys`: create, list, change and revoke client keys.
//!
//! Bodies are read field by field from a JSON object, so that every bad value is a
//! 400 naming its field (a typo in a field name too). The secret is in the answer
//! to `POST` only; no route returns it again.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::ApiError;
use crate::keys::{ClientKey, KeyError};
use crate::state::AppState;
use crate::store::{KeyChanges, KeyLimits};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/keys", get(list_keys).post(create_key))
        .route("/api/keys/{id}", get(get_key).patch(update_key).delete(revoke_key))
}

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Largest priority, either way.
const MAX_PRIORITY: i64 = 1_000_000;

/// A client key as the admin API shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: i64,
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    pub enabled: bool,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `null`: every model.
    pub allowed_models: Option<Vec<String>>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub daily_token_budget: Option<u64>,
    pub monthly_token_budget: Option<u64>,
    pub budget_tz: String,
    /// Place in the admission queue when every node is full: higher first (anonymous: 0).
    pub priority: i64,
}

/// The answer to `POST /api/keys`: the key and, this once, its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret (`sk-lr-…`): shown in this answer only.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

fn view(k: &ClientKey) -> KeyView {
    let s = k.settings();
    let l = &s.limits;
    KeyView {
        id: k.id,
        name: s.name.clone(),
        prefix: k.prefix.clone(),
        enabled: s.enabled,
        revoked: s.revoked,
        created_at: k.created_at,
        last_used_at: k.last_used_at(),
        expires_at: l.expires_at,
        allowed_models: l.allowed_models.clone(),
        rpm_limit: l.rpm_limit,
        tpm_limit: l.tpm_limit,
        max_concurrent: l.max_concurrent,
        daily_token_budget: l.daily_token_budget,
        monthly_token_budget: l.monthly_token_budget,
        budget_tz: l.budget_tz.clone(),
        priority: l.priority,
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound(id) => ApiError::NotFound(format!("key {id}")),
            KeyError::Invalid { field, message } => ApiError::BadParam { param: field, message },
            KeyError::Store(s) => s.into(),
        }
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: field,
        message: message.into(),
    }
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| bad("id", format!("'{raw}' is not a key id")))
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadBody("expected a JSON object".into())),
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

fn name(v: &Value) -> Result<String, ApiError> {
    let name = v.as_str().ok_or_else(|| bad("name", "must be a string"))?.trim();
    if name.is_empty() {
        return Err(bad("name", "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("name", "must not contain control characters"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad("name", format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    Ok(name.to_string())
}

/// A limit: `null` (none) or a non-negative integer.
fn limit(field: &'static str, v: &Value) -> Result<Option<u64>, ApiError> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_u64()
        .filter(|n| *n <= i64::MAX as u64)
        .map(Some)
        .ok_or_else(|| bad(field, format!("must be a non-negative integer or null, not {v}")))
}

fn models(v: &Value) -> Result<Option<Vec<String>>, ApiError> {
    if v.is_null() {
        return Ok(None);
    }
    let list = v
        .as_array()
        .ok_or_else(|| bad("allowed_models", "must be an array of model names or null"))?;
    list.iter()
        .map(|m| {
            m.as_str()
                .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
                .map(str::to_string)
                .ok_or_else(|| bad("allowed_models", format!("{m} is not a model name")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn instant(v: &Value) -> Result<Option<DateTime<Utc>>, ApiError> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| Some(t.with_timezone(&Utc)))
        .ok_or_else(|| bad("expires_at", format!("{v} is not an RFC 3339 date-time or null")))
}

fn zone(v: &Value) -> Result<String, ApiError> {
    let tz = v
        .as_str()
        .ok_or_else(|| bad("budget_tz", "must be an IANA time zone name"))?;
    tz.parse::<chrono_tz::Tz>()
        .map(|z| z.name().to_string())
        .map_err(|_| bad("budget_tz", format!("unknown time zone '{tz}'")))
}

/// The fields of a body as changes: absent leaves a field, `null` clears it.
fn changes(body: &Map<String, Value>) -> Result<KeyChanges, ApiError> {
    let mut c = KeyChanges::default();
    for (field, v) in body {
        match field.as_str() {
            "name" => c.name = Some(name(v)?),
            "enabled" => c.enabled = Some(v.as_bool().ok_or_else(|| bad("enabled", "must be true or false"))?),
            "allowed_models" => c.allowed_models = Some(models(v)?),
            "expires_at" => c.expires_at = Some(instant(v)?),
            "rpm_limit" => c.rpm_limit = Some(limit("rpm_limit", v)?),
            "tpm_limit" => c.tpm_limit = Some(limit("tpm_limit", v)?),
            "max_concurrent" => c.max_concurrent = Some(limit("max_concurrent", v)?),
            "daily_token_budget" => c.daily_token_budget = Some(limit("daily_token_budget", v)?),
            "monthly_token_budget" => c.monthly_token_budget = Some(limit("monthly_token_budget", v)?),
            "budget_tz" => c.budget_tz = Some(zone(v)?),
            "priority" => {
                c.priority = Some(v.as_i64().filter(|p| p.abs() <= MAX_PRIORITY).ok_or_else(|| {
                    bad(
                        "priority",
                        format!("must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {v}"),
                    )
                })?)
            }
            _ => {
                return Err(ApiError::BadParam {
                    param: "body",
                    message: format!("unknown field '{field}'"),
                })
            }
        }
    }
    Ok(c)
}

/// Every key, revoked ones included.
#[utoipa::path(get, path = "/api/keys", tag = "keys", security(("admin_key" = [])),
    responses((status = 200, body = KeyList), (status = 401, description = "No admin key")))]
pub async fn list_keys(State(st): State<AppState>) -> Json<KeyList> {
    Json(KeyList {
        keys: st.keys.all().iter().map(|k| view(k)).collect(),
    })
}

/// Creates a key. The answer holds its secret, which no later answer shows.
#[utoipa::path(post, path = "/api/keys", tag = "keys", security(("admin_key" = [])),
    request_body(content = Object, description = "name (required), allowed_models, expires_at, rpm_limit, tpm_limit, max_concurrent, daily_token_budget, monthly_token_budget, budget_tz, priority"),
    responses((status = 201, body = CreatedKey), (status = 400, description = "A bad field, named in the message")))]
pub async fn create_key(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let body = object(&body)?;
    let c = changes(&body)?;
    let name = c.name.clone().ok_or_else(|| bad("name", "is required"))?;
    let limits = c.apply(&KeyLimits {
        budget_tz: "UTC".into(),
        ..KeyLimits::default()
    });
    let (key, secret) = st.keys.create(name, limits).await?;
    if c.enabled == Some(false) {
        st.keys
            .update(
                key.id,
                &KeyChanges {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view: view(&key),
            key: secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = KeyView), (status = 404, description = "No such key")))]
pub async fn get_key(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let key = st.keys.get(parse_id(&id)?)?;
    Ok(Json(view(&key)))
}

/// Changes a key's name, `enabled` or limits; takes effect on the next request.
#[utoipa::path(patch, path = "/api/keys/{id}", tag = "keys", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Key id")),
    request_body(content = Object, description = "Any field of POST, and enabled; null clears a limit"),
    responses((status = 200, body = KeyView), (status = 400, description = "A bad field"), (status = 404, description = "No such key")))]
pub async fn update_key(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_id(&id)?;
    let c = changes(&object(&body)?)?;
    let key = st.keys.update(id, &c).await?;
    Ok(Json(view(&key)))
}

/// Revokes a key: refused from the next request on, for good; its row and
/// statistics stay.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such key")))]
pub async fn revoke_key(State(st): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    st.keys.revoke(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
