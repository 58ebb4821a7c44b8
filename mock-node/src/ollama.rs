//! The mock node's Ollama API (with `--imitate ollama`): `/api/chat`,
//! `/api/generate`, `/api/embed`, `/api/embeddings`, `/api/show` and `/api/ps`,
//! answering as Ollama does: NDJSON streams (`application/x-ndjson`) unless
//! `"stream": false`, the counts `prompt_eval_count` / `eval_count` and the
//! durations (nanoseconds) in the final object, `done` / `done_reason`, errors as
//! `{"error": "…"}`.
//!
//! Counts are deterministic like the OpenAI routes': the prompt's words in, one
//! token per content chunk out.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};

use crate::{chunk_text, keep_request, pause, prompt_words, Shared};

const CREATED_AT: &str = "2025-01-01T00:00:00Z";

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
}

/// An error answer, as Ollama shapes it: `{"error": "…"}`.
struct OllamaError(StatusCode, String);

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> OllamaError {
    OllamaError(status, message.into())
}

/// Parses and keeps the request; refuses unknown models as Ollama does.
fn accept(s: &Shared, path: &str, headers: HeaderMap, body: &Bytes) -> Result<(String, Value), OllamaError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    keep_request(s, path, headers, &value);
    let model = value.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    if !s.config.serves(&model) {
        return Err(error(StatusCode::NOT_FOUND, format!("model '{model}' not found")));
    }
    Ok((model, value))
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(s, "/api/chat", headers, body, Kind::Chat).await
}

async fn generate(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(s, "/api/generate", headers, body, Kind::Generate).await
}

/// One object of an answer: a piece of text, or the final object with the counts.
fn object(kind: Kind, model: &str, text: &str, last: Option<(u64, u64, bool)>) -> Value {
    let mut v = match kind {
        Kind::Chat => json!({"model": model, "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": text}, "done": false}),
        Kind::Generate => json!({"model": model, "created_at": CREATED_AT, "response": text, "done": false}),
    };
    if let Some((prompt, eval, counts)) = last {
        v["done"] = json!(true);
        v["done_reason"] = json!("stop");
        v["total_duration"] = json!(5_000_000u64);
        v["load_duration"] = json!(1_000_000u64);
        v["prompt_eval_duration"] = json!(1_000_000u64);
        v["eval_duration"] = json!(3_000_000u64);
        if counts {
            v["prompt_eval_count"] = json!(prompt);
            v["eval_count"] = json!(eval);
        }
        if matches!(kind, Kind::Generate) {
            v["context"] = json!([1, 2, 3]);
        }
    }
    v
}

async fn answer(s: Arc<Shared>, path: &str, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let (model, value) = match accept(&s, path, headers, &body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    pause(s.config.latency).await;
    let n = s.config.chunks;
    let name = s.config.name.clone();
    let prompt = prompt_words(&value);
    let counts = s.config.usage;
    if !value.get("stream").and_then(Value::as_bool).unwrap_or(true) {
        let text: String = (0..n).map(|i| chunk_text(&name, i)).collect();
        return Json(object(kind, &model, &text, Some((prompt, n as u64, counts)))).into_response();
    }
    let ndjson = |status: StatusCode, body: Body| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .unwrap()
    };
    if s.config.garbage_stream {
        return ndjson(
            StatusCode::OK,
            Body::from("this is not json\n{\"model\": \"m\", \"done\": fal\n"),
        );
    }
    let cfg = s.config.clone();
    let lines = stream::unfold(0usize, move |i| {
        let cfg = cfg.clone();
        let model = model.clone();
        async move {
            if i > n {
                return None;
            }
            if i > 0 {
                pause(cfg.chunk_delay).await;
            }
            if cfg.break_after_chunks == Some(i) {
                tokio::time::sleep(Duration::from_millis(30)).await;
                return Some((Err(std::io::Error::other("mock node broke the stream")), n + 1));
            }
            let v = if i < n {
                object(kind, &model, &chunk_text(&cfg.name, i), None)
            } else {
                object(kind, &model, "", Some((prompt, n as u64, cfg.usage)))
            };
            Some((Ok(Bytes::from(format!("{v}\n"))), i + 1))
        }
    });
    ndjson(StatusCode::OK, Body::from_stream(lines))
}

async fn embed(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (model, value) = match accept(&s, "/api/embed", headers, &body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let inputs = match value.get("input") {
        Some(Value::Array(a)) => a.len().max(1),
        _ => 1,
    };
    let embeddings: Vec<Value> = (0..inputs).map(|_| json!([0.1, 0.2, 0.3, 0.4])).collect();
    let mut out = json!({"model": model, "embeddings": embeddings, "total_duration": 2_000_000u64,
        "load_duration": 1_000_000u64});
    if s.config.usage {
        out["prompt_eval_count"] = json!(prompt_words(&value));
    }
    Json(out).into_response()
}

/// The legacy route reports no counts, as Ollama's does not.
async fn embeddings(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = accept(&s, "/api/embeddings", headers, &body) {
        return r.into_response();
    }
    Json(json!({"embedding": [0.1, 0.2, 0.3, 0.4]})).into_response()
}

fn details() -> Value {
    json!({"parent_model": "", "format": "gguf", "family": "mock", "families": ["mock"],
        "parameter_size": "1B", "quantization_level": "Q4_0"})
}

async fn show(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = accept(&s, "/api/show", headers, &body) {
        return r.into_response();
    }
    Json(
        json!({"modelfile": "FROM mock", "parameters": "", "template": "{{ .Prompt }}",
        "details": details(), "model_info": {"general.architecture": "mock"},
        "capabilities": ["completion"], "modified_at": CREATED_AT}),
    )
    .into_response()
}

async fn ps(State(s): State<Arc<Shared>>) -> Json<Value> {
    let models: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "size": 1024, "digest": "0", "details": details(),
                "expires_at": "2099-01-01T00:00:00Z", "size_vram": 1024})
        })
        .collect();
    Json(json!({"models": models}))
}
