//! The records and DTOs that cross crate and HTTP boundaries.
//!
//! `RequestResponseRecord` is the one row the router writes per proxied request;
//! the `Dashboard*` and `*TokenStats` types are the JSON bodies of the dashboard API.
//! Token counts are `u64` and never missing: a request whose node produced nothing
//! counts zero.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a record's token figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// Taken from the node's `usage` field.
    Reported,
    /// Counted with the BPE tokenizer because the node reported no usage.
    Estimated,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Reported => "reported",
            TokenSource::Estimated => "estimated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reported" => Some(TokenSource::Reported),
            "estimated" => Some(TokenSource::Estimated),
            _ => None,
        }
    }
}

/// How a proxied request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// The node answered with a 2xx and the response reached its end.
    Success,
    /// The node answered with an error, broke the stream, or no node could serve it.
    Error,
    /// The client went away before the response was complete.
    Cancelled,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Success => "success",
            RequestStatus::Error => "error",
            RequestStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(RequestStatus::Success),
            "error" => Some(RequestStatus::Error),
            "cancelled" => Some(RequestStatus::Cancelled),
            _ => None,
        }
    }
}

/// The inference endpoint a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestType {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    /// Ollama's `POST /api/chat`, under the router's `/ollama`.
    OllamaChat,
    /// Ollama's `POST /api/generate`.
    OllamaGenerate,
    /// Ollama's `POST /api/embed`.
    OllamaEmbed,
    /// Ollama's legacy `POST /api/embeddings`.
    OllamaEmbeddings,
    /// Anthropic's Messages API, `POST /v1/messages`.
    Messages,
}

impl RequestType {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::ChatCompletions => "chat_completions",
            RequestType::Completions => "completions",
            RequestType::Embeddings => "embeddings",
            RequestType::Responses => "responses",
            RequestType::OllamaChat => "ollama_chat",
            RequestType::OllamaGenerate => "ollama_generate",
            RequestType::OllamaEmbed => "ollama_embed",
            RequestType::OllamaEmbeddings => "ollama_embeddings",
            RequestType::Messages => "messages",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "chat_completions" => Some(RequestType::ChatCompletions),
            "completions" => Some(RequestType::Completions),
            "embeddings" => Some(RequestType::Embeddings),
            "responses" => Some(RequestType::Responses),
            "ollama_chat" => Some(RequestType::OllamaChat),
            "ollama_generate" => Some(RequestType::OllamaGenerate),
            "ollama_embed" => Some(RequestType::OllamaEmbed),
            "ollama_embeddings" => Some(RequestType::OllamaEmbeddings),
            "messages" => Some(RequestType::Messages),
            _ => None,
        }
    }

    /// The path of this endpoint below the node's base URL (a Messages request to a
    /// node that only speaks chat completions is translated and goes to
    /// `/v1/chat/completions` instead).
    pub fn upstream_path(self) -> &'static str {
        match self {
            RequestType::ChatCompletions => "/v1/chat/completions",
            RequestType::Completions => "/v1/completions",
            RequestType::Embeddings => "/v1/embeddings",
            RequestType::Responses => "/v1/responses",
            RequestType::OllamaChat => "/api/chat",
            RequestType::OllamaGenerate => "/api/generate",
            RequestType::OllamaEmbed => "/api/embed",
            RequestType::OllamaEmbeddings => "/api/embeddings",
            RequestType::Messages => "/v1/messages",
        }
    }
}

/// Token figures of one request. `total_tokens` is the node's total when it reported
/// one, else `input_tokens + output_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

impl TokenUsage {
    /// Usage from its parts, with the total derived when the node gave none.
    pub fn new(input_tokens: u64, output_tokens: u64, total_tokens: Option<u64>) -> Self {
        TokenUsage {
            input_tokens,
            output_tokens,
            total_tokens: total_tokens.unwrap_or(input_tokens.saturating_add(output_tokens)),
        }
    }
}

/// One row of `request_history`: everything the router knows about one proxied request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestResponseRecord {
    /// Store id; `0` until the record is committed.
    pub id: i64,
    /// When the request arrived; it counts in the hour/day/month of this instant.
    pub timestamp: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub request_type: RequestType,
    pub model: String,
    /// The node that served it; `None` when no node was chosen (404, 503, all failed).
    pub node_id: Option<i64>,
    pub node_name: Option<String>,
    pub client_ip: Option<String>,
    /// The client key the request was made with; `None`: anonymous.
    pub api_key_id: Option<i64>,
    /// The key's name when the request was made.
    pub api_key_name: Option<String>,
    pub stream: bool,
    pub status: RequestStatus,
    /// The HTTP status the client received (0 when it went away before headers).
    pub http_status: u16,
    pub error_message: Option<String>,
    pub duration_ms: u64,
    /// From the request's arrival to the first byte of the node's answer (the first
    /// chunk of a stream); `None` when no byte came.
    pub time_to_first_token_ms: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub token_source: TokenSource,
    /// The body the client sent, when the router stores bodies (`--store-bodies`).
    /// Only in one record's detail: never in a page of the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<StoredBody>,
    /// The body the node answered (a stream's bytes as they came, before the router
    /// hid or translated anything), when the router stores bodies; like
    /// `request_body`, only in one record's detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<StoredBody>,
}

/// A request's or a response's body as stored: its first bytes, up to the router's
/// `--stored-body-max-bytes`, as text (bytes that are not UTF-8 are replaced by U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoredBody {
    pub text: String,
    /// The body was longer than what is stored.
    pub truncated: bool,
}

/// A node as the dashboard shows it, with its load and token totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardNode {
    pub id: i64,
    pub name: String,
    pub base_url: String,
    /// `online`, `offline`, `unknown` (not probed yet) or `disabled`.
    pub status: String,
    pub models: Vec<String>,
    pub active_requests: u64,
    pub total_requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    pub average_response_time_ms: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
    pub average_tokens_per_request: f64,
    pub last_seen: Option<DateTime<Utc>>,
    pub deleted: bool,
    /// `openai`, `ollama`, `vllm`, `llamacpp` or `lmstudio` (told from the node's routes
    /// or set by the operator).
    pub kind: String,
    /// Why the node is offline (connection refused, certificate error, HTTP status);
    /// null when online.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardNodes {
    pub nodes: Vec<DashboardNode>,
}

/// Router-wide figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardStats {
    pub total_nodes: u64,
    pub online_nodes: u64,
    pub offline_nodes: u64,
    pub total_requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    pub active_requests: u64,
    pub average_response_time_ms: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
    /// The admission queue (requests waiting for a node slot), since start-up.
    pub queue: QueueFigures,
}

/// The admission queue's figures since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueFigures {
    /// Requests waiting now.
    pub depth: u64,
    /// Requests that waited, then went to a node.
    pub served: u64,
    /// Their average wait, in milliseconds.
    pub average_wait_ms: f64,
    /// Refused at once: the queue was full (503 `queue_full`).
    pub full: u64,
    /// Refused after waiting the whole timeout (503 `queue_timeout`).
    pub timed_out: u64,
    /// Clients that left while queued (recorded `cancelled`, without a node).
    pub cancelled: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeTokenStats {
    pub node_id: i64,
    pub node_name: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
}

/// Token figures of one client key; `key_id: null` is every anonymous request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyTokenStats {
    pub key_id: Option<i64>,
    /// `anonymous` for requests without a key.
    pub key_name: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelTokenStats {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
}

/// Body of `GET /api/dashboard/stats/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenStats {
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
    pub estimated_request_count: u64,
    pub by_node: Vec<NodeTokenStats>,
    pub by_model: Vec<ModelTokenStats>,
    pub by_key: Vec<KeyTokenStats>,
}

/// A client key with its usage, as `GET /api/dashboard/keys` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardKey {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub enabled: bool,
    pub revoked: bool,
    pub last_used_at: Option<DateTime<Utc>>,
    pub total_requests: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
    /// Tokens of the current day and month in the key's `budget_tz`.
    pub today_tokens: u64,
    pub month_tokens: u64,
    pub daily_token_budget: Option<u64>,
    pub monthly_token_budget: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardKeys {
    pub keys: Vec<DashboardKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DailyTokenStats {
    /// `YYYY-MM-DD` in the requested time zone.
    pub date: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MonthlyTokenStats {
    /// `YYYY-MM` in the requested time zone.
    pub month: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub request_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DailyTokenSeries {
    pub tz: String,
    pub days: Vec<DailyTokenStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MonthlyTokenSeries {
    pub tz: String,
    pub months: Vec<MonthlyTokenStats>,
}

/// Speed of one node × model over the window of `GET /api/dashboard/stats/speed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeModelSpeed {
    pub node_id: i64,
    pub node_name: String,
    pub model: String,
    /// Requests that started in the window on this node and model, any status.
    pub request_count: u64,
    pub success_count: u64,
    /// `request_count` / the window's minutes.
    pub requests_per_minute: f64,
    /// Requests with a time to first token (what the Prometheus histogram observed).
    pub ttft_count: u64,
    /// Time to first token, nearest-rank percentiles, in ms; null without requests.
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p95_ms: Option<u64>,
    /// Streamed successful requests whose first token came before their end.
    pub generation_count: u64,
    /// Their output tokens.
    pub generation_output_tokens: u64,
    /// Their generation time: Σ (duration − time to first token), in ms.
    pub generation_ms: u64,
    /// `generation_output_tokens` / (`generation_ms` / 1000); null when no generation.
    pub output_tokens_per_second: Option<f64>,
}

/// Body of `GET /api/dashboard/stats/speed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SpeedStats {
    pub window_minutes: u32,
    /// The window: requests that started in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Ordered by node id, then model.
    pub by_node_model: Vec<NodeModelSpeed>,
}

/// A page of `GET /api/dashboard/request-history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestHistoryPage {
    pub records: Vec<RequestResponseRecord>,
    /// Pass as `cursor` to get the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_serializes_token_fields_and_source() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let rec = RequestResponseRecord {
            id: 7,
            timestamp: t,
            completed_at: t,
            request_type: RequestType::ChatCompletions,
            model: "m".into(),
            node_id: Some(1),
            node_name: Some("n".into()),
            client_ip: None,
            api_key_id: Some(3),
            api_key_name: Some("alice".into()),
            stream: true,
            status: RequestStatus::Success,
            http_status: 200,
            error_message: None,
            duration_ms: 5,
            time_to_first_token_ms: Some(2),
            input_tokens: 10,
            output_tokens: 20,
            total_tokens: 30,
            token_source: TokenSource::Estimated,
            request_body: None,
            response_body: None,
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["input_tokens"], 10);
        assert_eq!(v["output_tokens"], 20);
        assert_eq!(v["total_tokens"], 30);
        assert_eq!(v["token_source"], "estimated");
        assert_eq!(v["request_type"], "chat_completions");
        assert_eq!(v["timestamp"], "2026-01-02T03:04:05Z");
        let back: RequestResponseRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn total_is_derived_only_when_missing() {
        assert_eq!(TokenUsage::new(3, 4, None).total_tokens, 7);
        assert_eq!(TokenUsage::new(3, 4, Some(9)).total_tokens, 9);
        assert_eq!(TokenUsage::new(u64::MAX, 4, None).total_tokens, u64::MAX);
    }
}
