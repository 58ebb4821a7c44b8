//! A mock OpenAI-compatible inference node: a real HTTP server for tests, benchmarks
//! and the demo.
//!
//! It answers `/v1/models`, `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/responses`, plain or streamed, with deterministic text
//! and usage so tests can assert exact token figures. Knobs in [`MockConfig`] make it
//! behave like the various servers in the field (no usage, `"usage": null` in every
//! chunk, rejecting `stream_options`, breaking mid-stream, failing at random, refusing
//! with 429/503, serving a bounded number of requests at a time like llama-server's
//! slots), answer the probe routes of the server it imitates ([`Imitation`]), Ollama's
//! own API when it imitates Ollama (`ollama`), Anthropic's Messages API when it
//! imitates a server that speaks it (`messages`), and serve over TLS ([`TlsIdentity`]).
//! A chat request with `tools` is answered with a call of the first tool unless its
//! last message is a tool result. It counts the requests it has in flight and their
//! peak. It must stay dumb: no routing or accounting logic lives here.

mod capacity;
mod connections;
mod imitation;
mod messages;
mod ollama;
mod openai;
mod tls;
mod tools;

pub use capacity::Refuse;
pub use imitation::Imitation;
pub use tls::TlsIdentity;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use capacity::Busy;

/// How a mock node behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Put in every answer (`"system_fingerprint"` and the generated text) so a test
    /// can tell which node served a request.
    pub name: String,
    pub models: Vec<String>,
    /// Content chunks per streamed answer (and words per plain answer).
    pub chunks: usize,
    pub chunk_delay: Duration,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Report `usage`. When off, the node behaves like servers that never count.
    pub usage: bool,
    /// Add `"usage": null` to every streamed chunk when include_usage is on (vLLM does).
    pub usage_null_in_chunks: bool,
    /// Answer 400 to any request that carries `stream_options`.
    pub reject_stream_options: bool,
    /// Abort the connection after this many content chunks of a stream.
    pub break_after_chunks: Option<usize>,
    /// Answer streams with bytes that are not events (SSE) or not JSON (NDJSON).
    pub garbage_stream: bool,
    /// Probability in [0, 1] of answering 500 (with usage of the prompt when `usage`).
    pub failure_rate: f64,
    /// The error message of those 500s.
    pub failure_message: String,
    /// The server whose probe routes it answers.
    pub imitate: Imitation,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// Requests generated at once; more wait inside the node (llama-server's slots,
    /// told as `total_slots` by its `/props`). `None`: no limit.
    pub slots: Option<usize>,
    /// Refuse inference requests with this answer before generating anything.
    pub refuse: Option<Refuse>,
}

impl MockConfig {
    /// Whether the node serves `model`: a listed name, or for an Ollama imitation a
    /// name listed with its `:latest` tag (as Ollama resolves `llama3`).
    pub fn serves(&self, model: &str) -> bool {
        self.models
            .iter()
            .any(|m| m == model || (self.imitate == Imitation::Ollama && m.strip_suffix(":latest") == Some(model)))
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".into(),
            models: vec!["mock-model".into()],
            chunks: 5,
            chunk_delay: Duration::ZERO,
            latency: Duration::ZERO,
            usage: true,
            usage_null_in_chunks: false,
            reject_stream_options: false,
            break_after_chunks: None,
            garbage_stream: false,
            failure_rate: 0.0,
            failure_message: "mock failure".into(),
            imitate: Imitation::OpenAi,
            tls: None,
            slots: None,
            refuse: None,
        }
    }
}

/// A request the mock node received, for tests to inspect.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Arrival order among every mock node of the process (from 1).
    pub seq: u64,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Requests kept for [`MockNode::received`]: the oldest are dropped beyond it, so that
/// a node under a long benchmark does not grow without bound (it once reached 24 GB).
pub const KEPT_REQUESTS: usize = 10_000;

/// Requests received by every mock node of the process: their order of arrival.
static ARRIVALS: AtomicU64 = AtomicU64::new(0);

struct Shared {
    config: MockConfig,
    received: Mutex<VecDeque<ReceivedRequest>>,
    probes: Mutex<VecDeque<String>>,
    tls_handshakes: Arc<AtomicU64>,
    /// Connections open now (see `connections`).
    open_connections: Arc<AtomicUsize>,
    /// Inference requests accepted and not finished (a stream until its end).
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    slots: Option<Arc<Semaphore>>,
    refused: AtomicUsize,
}

impl Shared {
    /// Keeps the path of a probe (a `GET` of a model list or a telltale route).
    fn note_probe(&self, path: &str) {
        let mut probes = self.probes.lock().unwrap();
        if probes.len() == KEPT_REQUESTS {
            probes.pop_front();
        }
        probes.push_back(path.to_string());
    }
}

/// A running mock node. Dropping it (or calling [`MockNode::shutdown`]) stops it.
pub struct MockNode {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MockNode {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(config: MockConfig) -> std::io::Result<MockNode> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(listener, config))
    }

    /// Serves on an already bound listener (over TLS when the config has an identity).
    pub fn serve(listener: TcpListener, config: MockConfig) -> MockNode {
        let addr = listener.local_addr().expect("bound listener has an address");
        let tls = config.tls.clone();
        let shared = Arc::new(Shared {
            slots: config.slots.map(|n| Arc::new(Semaphore::new(n))),
            config,
            received: Mutex::new(VecDeque::new()),
            probes: Mutex::new(VecDeque::new()),
            tls_handshakes: Arc::default(),
            open_connections: Arc::default(),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let open = shared.open_connections.clone();
        let task = match tls {
            None => tokio::spawn(async move {
                let listener = connections::Counted::new(listener, open);
                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
            }),
            Some(identity) => {
                let listener = tls::TlsListener::new(listener, &identity, shared.tls_handshakes.clone());
                let listener = connections::Counted::new(listener, open);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                })
            }
        };
        MockNode {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:port`, or `https://…` in TLS mode.
    pub fn base_url(&self) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// TLS connections accepted so far (each one a full handshake; 0 in plain mode).
    pub fn tls_handshakes(&self) -> u64 {
        self.shared.tls_handshakes.load(Ordering::Relaxed)
    }

    /// Connections open now (plain or TLS, handshake done).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Inference requests in flight now (accepted, not finished).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most inference requests it ever had in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Requests it refused (the [`Refuse`] knob).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// The paths of the probes received (model lists and telltale routes), oldest first.
    pub fn probes(&self) -> Vec<String> {
        self.shared.probes.lock().unwrap().iter().cloned().collect()
    }

    /// The requests received, oldest first (the last [`KEPT_REQUESTS`]).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.received.lock().unwrap().iter().cloned().collect()
    }

    /// Stops accepting and closes every open connection at once (streams break).
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for MockNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let native = match shared.config.imitate {
        Imitation::Ollama => ollama::routes(),
        Imitation::LlamaCpp | Imitation::Vllm => Router::new().route("/v1/messages", post(messages::messages)),
        Imitation::OpenAi | Imitation::LmStudio => Router::new(),
    };
    imitation::routes(shared.config.imitate)
        .merge(native)
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/responses", post(openai::responses))
        .with_state(shared)
}

async fn models(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.note_probe("/v1/models");
    let owned_by = s.config.imitate.owned_by().unwrap_or(&s.config.name);
    let data: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": owned_by}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Deterministic prompt size: the number of whitespace-separated words of every
/// string in the request's `messages`, `prompt` or `input`.
pub fn prompt_words(body: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "content" | "text"))
                .map(|(_, v)| words(v))
                .sum(),
            _ => 0,
        }
    }
    ["messages", "prompt", "input"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(words)
        .sum()
}

/// The text of content chunk `i`: one word, so a streamed answer of `n` chunks has
/// `n` words and the usage the node reports is `n` completion tokens.
pub fn chunk_text(name: &str, i: usize) -> String {
    format!("{name}{i} ")
}

struct Call {
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
}

/// An error answer of the node.
struct Rejection {
    status: StatusCode,
    message: String,
    usage: Option<Value>,
    retry_after: Option<u64>,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = error(self.status, &self.message, self.usage);
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert("retry-after", secs.into());
        }
        response
    }
}

fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        message: message.into(),
        usage: None,
        retry_after: None,
    }
}

/// Keeps a request for the tests (the last `KEPT_REQUESTS`), numbered by arrival.
fn keep_request(s: &Shared, path: &str, headers: HeaderMap, value: &Value) {
    let mut received = s.received.lock().unwrap();
    if received.len() == KEPT_REQUESTS {
        received.pop_front();
    }
    received.push_back(ReceivedRequest {
        seq: ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1,
        path: path.into(),
        headers,
        body: value.clone(),
    });
}

fn accept(s: &Shared, path: &str, headers: HeaderMap, body: &Bytes) -> Result<(Call, Value), Rejection> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| reject(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    keep_request(s, path, headers, &value);
    if let Some(r) = s.config.refuse {
        let n = s.refused.fetch_add(1, Ordering::SeqCst);
        if r.times.is_none_or(|times| n < times) {
            return Err(Rejection {
                status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                message: "mock node busy".into(),
                usage: None,
                retry_after: r.retry_after,
            });
        }
        s.refused.fetch_sub(1, Ordering::SeqCst);
    }
    let model = value.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    if !s.config.serves(&model) {
        return Err(reject(StatusCode::NOT_FOUND, format!("model {model} not found")));
    }
    if s.config.reject_stream_options && value.get("stream_options").is_some() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "Unrecognized request argument supplied: stream_options",
        ));
    }
    let call = Call {
        model,
        stream: value.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        prompt_tokens: prompt_words(&value),
    };
    if s.config.failure_rate > 0.0 && rand::random::<f64>() < s.config.failure_rate {
        return Err(Rejection {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: s.config.failure_message.clone(),
            usage: s.config.usage.then(|| usage_json(call.prompt_tokens, 0)),
            retry_after: None,
        });
    }
    Ok((call, value))
}

/// Sleeps unless `d` is zero: a zero sleep still waits for tokio's next timer tick
/// (about 1 ms), which would make the mock slower than any real server's fast path.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn error(status: StatusCode, message: &str, usage: Option<Value>) -> Response {
    let mut body = json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
    if let Some(u) = usage {
        body["usage"] = u;
    }
    (status, Json(body)).into_response()
}

fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}
