//! The OpenAPI 3 document, generated from the handlers' annotations (`utoipa`), so
//! it cannot drift from the code; served at `/api/openapi.json`, behind the admin key.
//!
//! It lists the handlers of every layer (`proxy`, `api`, `dashboard`), so it sits
//! above them, next to `app`, which mounts its route; no handler module depends on it.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::state::AppState;

struct AdminKeyScheme;

impl Modify for AdminKeyScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "llm-router", description = "One OpenAI-compatible endpoint over many inference nodes, with exact token accounting"),
    paths(
        crate::proxy::chat_completions, crate::proxy::completions, crate::proxy::embeddings,
        crate::proxy::responses, crate::proxy::list_models, crate::proxy::client_key::key_info,
        crate::proxy::anthropic::messages, crate::proxy::anthropic::count::count_tokens, crate::proxy::ollama::running, crate::proxy::ollama::chat,
        crate::proxy::ollama::generate, crate::proxy::ollama::embed, crate::proxy::ollama::embeddings,
        crate::proxy::ollama::tags, crate::proxy::ollama::ps, crate::proxy::ollama::show,
        crate::proxy::ollama::version,
        crate::api::keys::list_keys, crate::api::keys::create_key, crate::api::keys::get_key,
        crate::api::keys::update_key, crate::api::keys::revoke_key, crate::api::dashboard::keys,
        crate::api::nodes::list_nodes, crate::api::nodes::create_node, crate::api::nodes::get_node,
        crate::api::nodes::update_node, crate::api::nodes::delete_node,
        crate::api::dashboard::nodes, crate::api::dashboard::stats_overview, crate::api::dashboard::tokens,
        crate::api::dashboard::daily, crate::api::dashboard::monthly, crate::api::dashboard::history,
        crate::api::dashboard::history_record, crate::api::dashboard::speed, crate::api::export::export_csv,
        crate::api::metrics, crate::api::health, serve,
        crate::dashboard::session::login, crate::dashboard::session::logout,
    ),
    modifiers(&AdminKeyScheme),
    tags((name = "inference", description = "OpenAI-compatible API and Anthropic's Messages API for clients"),
        (name = "ollama", description = "Ollama's API for Ollama clients, under /ollama"),
        (name = "nodes", description = "Node registry (admin key)"),
        (name = "keys", description = "Client keys (admin key)"),
        (name = "dashboard", description = "Statistics (admin key)"),
        (name = "operations", description = "Health and metrics"))
)]
pub struct ApiDoc;

/// `/api/openapi.json`, behind the admin layer.
pub fn routes(state: AppState) -> Router<AppState> {
    api::admin_only(Router::new().route("/api/openapi.json", get(serve)), state)
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", security(("admin_key" = [])),
    responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
