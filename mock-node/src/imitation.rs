//! Which inference server the mock node imitates, and the probe routes that tell each
//! apart (only those: inference routes stay OpenAI's for every imitation).
//!
//! - Ollama: `GET /api/version`, and its model list at `GET /api/tags`.
//! - llama.cpp's `llama-server`: `GET /props`, `GET /slots`.
//! - vLLM: `/v1/models` entries `"owned_by": "vllm"`, `GET /version`.
//! - LM Studio: `/v1/models` entries `"owned_by": "organization_owner"`, `GET /api/v0/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Imitation {
    /// A generic OpenAI-compatible server: `/v1/models` only.
    #[default]
    #[value(name = "openai")]
    OpenAi,
    Ollama,
    Vllm,
    #[value(name = "llamacpp")]
    LlamaCpp,
    #[value(name = "lmstudio")]
    LmStudio,
}

impl Imitation {
    /// The `owned_by` of its `/v1/models` entries (`None`: the node's name).
    pub fn owned_by(self) -> Option<&'static str> {
        match self {
            Imitation::OpenAi => None,
            Imitation::Ollama => Some("library"),
            Imitation::Vllm => Some("vllm"),
            Imitation::LlamaCpp => Some("llamacpp"),
            Imitation::LmStudio => Some("organization_owner"),
        }
    }
}

/// The telltale routes of `imitation`.
pub(crate) fn routes(imitation: Imitation) -> Router<Arc<Shared>> {
    let router = Router::new();
    match imitation {
        Imitation::OpenAi => router,
        Imitation::Ollama => router
            .route("/api/version", get(ollama_version))
            .route("/api/tags", get(ollama_tags)),
        Imitation::Vllm => router.route("/version", get(vllm_version)),
        Imitation::LlamaCpp => router
            .route("/props", get(llamacpp_props))
            .route("/slots", get(llamacpp_slots)),
        Imitation::LmStudio => router.route("/api/v0/models", get(lmstudio_models)),
    }
}

async fn ollama_version(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/api/version");
    Json(json!({"version": "0.12.6"}))
}

async fn ollama_tags(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/api/tags");
    let models: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 0, "digest": "0",
                "details": {"format": "gguf", "family": "mock", "parameter_size": "1B", "quantization_level": "Q4_0"}})
        })
        .collect();
    Json(json!({"models": models}))
}

async fn vllm_version(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/version");
    Json(json!({"version": "0.0.0-mock"}))
}

async fn llamacpp_props(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/props");
    Json(json!({
        "default_generation_settings": {"n_ctx": 4096, "params": {}},
        "total_slots": s.config.slots.unwrap_or(1),
        "model_path": format!("/models/{}.gguf", s.config.models.first().map_or("mock", String::as_str)),
        "build_info": "b0-mock",
    }))
}

async fn llamacpp_slots(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/slots");
    let slots: Vec<Value> = (0..s.config.slots.unwrap_or(1))
        .map(|id| json!({"id": id, "n_ctx": 4096, "is_processing": false}))
        .collect();
    Json(Value::Array(slots))
}

async fn lmstudio_models(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/api/v0/models");
    let data: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| {
            json!({"id": m, "object": "model", "type": "llm", "publisher": "mock", "arch": "llama",
                "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "loaded", "max_context_length": 4096})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
