//! The OpenAI routes of the mock: chat completions, completions (plain and streamed,
//! with the knobs of [`MockConfig`](crate::MockConfig)), embeddings and the Responses
//! API.

use super::*;

pub(crate) async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(s, "/v1/chat/completions", headers, body, Kind::Chat).await
}

pub(crate) async fn completions(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(s, "/v1/completions", headers, body, Kind::Completion).await
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

async fn generate(s: Arc<Shared>, path: &str, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let (call, value) = match accept(&s, path, headers, &body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let busy = Busy::start(&s).await;
    pause(s.config.latency).await;
    let n = s.config.chunks;
    let name = s.config.name.clone();
    if call.stream && s.config.garbage_stream {
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from("data: {not json\n\n\u{1}garbage without events\n\n"))
            .unwrap();
    }
    if let Some(tool) = tools::tool_to_call(&value) {
        return tools::tool_call_answer(&s.config, &call, &tool);
    }
    if !call.stream {
        drop(busy);
        let text: String = (0..n).map(|i| chunk_text(&name, i)).collect();
        let mut out = match kind {
            Kind::Chat => json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": call.model,
                "system_fingerprint": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
            }),
            Kind::Completion => json!({
                "id": "cmpl-mock", "object": "text_completion", "created": 0, "model": call.model,
                "system_fingerprint": name,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]
            }),
        };
        if s.config.usage {
            out["usage"] = usage_json(call.prompt_tokens, n as u64);
        }
        return Json(out).into_response();
    }
    let cfg = s.config.clone();
    let events = stream::unfold(0usize, move |i| {
        // Held by the stream: the request is in flight until the stream ends or is dropped.
        let _busy = &busy;
        let cfg = cfg.clone();
        let call_model = call.model.clone();
        let include_usage = call.include_usage && cfg.usage;
        let prompt = call.prompt_tokens;
        async move {
            if i > n + 2 {
                return None;
            }
            if i > 0 && i <= n {
                pause(cfg.chunk_delay).await;
            }
            if let Some(b) = cfg.break_after_chunks {
                if i == b + 1 {
                    // Let the chunks already written reach the peer before dying.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    return Some((Err(std::io::Error::other("mock node broke the stream")), n + 3));
                }
            }
            let usage_null = include_usage && cfg.usage_null_in_chunks;
            let event = if i == 0 {
                Some(stream_chunk(kind, &call_model, &cfg.name, Delta::Role, usage_null))
            } else if i <= n {
                Some(stream_chunk(
                    kind,
                    &call_model,
                    &cfg.name,
                    Delta::Text(chunk_text(&cfg.name, i - 1)),
                    usage_null,
                ))
            } else if i == n + 1 {
                include_usage.then(|| {
                    let mut v = json!({"id": "chatcmpl-mock", "object": object(kind), "created": 0,
                        "model": call_model, "system_fingerprint": cfg.name, "choices": []});
                    v["usage"] = usage_json(prompt, n as u64);
                    format!("data: {v}\n\n")
                })
            } else {
                Some("data: [DONE]\n\n".to_string())
            };
            Some((Ok(Bytes::from(event.unwrap_or_default())), i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(events))
        .unwrap()
}

enum Delta {
    Role,
    Text(String),
}

fn object(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    }
}

fn stream_chunk(kind: Kind, model: &str, name: &str, delta: Delta, usage_null: bool) -> String {
    let choice = match (kind, delta) {
        (Kind::Chat, Delta::Role) => {
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})
        }
        (Kind::Chat, Delta::Text(t)) => {
            json!({"index": 0, "delta": {"content": t}, "finish_reason": null})
        }
        (Kind::Completion, Delta::Role) => json!({"index": 0, "text": "", "finish_reason": null}),
        (Kind::Completion, Delta::Text(t)) => json!({"index": 0, "text": t, "finish_reason": null}),
    };
    let id = match kind {
        Kind::Chat => "chatcmpl-mock",
        Kind::Completion => "cmpl-mock",
    };
    // Written by hand (not serde) so the field order matches real servers and the
    // `"usage":null` field sits where vLLM puts it: last.
    let mut s = format!(
        r#"data: {{"id":"{id}","object":"{}","created":0,"model":{},"system_fingerprint":{},"choices":[{choice}]"#,
        object(kind),
        Value::from(model),
        Value::from(name)
    );
    if usage_null {
        s.push_str(r#","usage":null"#);
    }
    s.push_str("}\n\n");
    s
}

pub(crate) async fn embeddings(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (call, value) = match accept(&s, "/v1/embeddings", headers, &body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let _busy = Busy::start(&s).await;
    pause(s.config.latency).await;
    let inputs = match value.get("input") {
        Some(Value::Array(a)) => a.len().max(1),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]}))
        .collect();
    let mut out = json!({"object": "list", "data": data, "model": call.model});
    if s.config.usage {
        out["usage"] = json!({"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens});
    }
    Json(out).into_response()
}

pub(crate) async fn responses(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (call, _) = match accept(&s, "/v1/responses", headers, &body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let busy = Busy::start(&s).await;
    pause(s.config.latency).await;
    let n = s.config.chunks;
    let name = s.config.name.clone();
    let text: String = (0..n).map(|i| chunk_text(&name, i)).collect();
    let usage = s.config.usage.then(|| {
        json!({"input_tokens": call.prompt_tokens, "output_tokens": n, "total_tokens": call.prompt_tokens + n as u64})
    });
    let response = |status: &str, text: &str| {
        let mut r = json!({"id": "resp-mock", "object": "response", "status": status, "model": call.model,
            "output": [{"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": text}]}]});
        if status == "completed" {
            if let Some(u) = &usage {
                r["usage"] = u.clone();
            }
        }
        r
    };
    if !call.stream {
        return Json(response("completed", &text)).into_response();
    }
    let mut events = vec![format!(
        "event: response.created\ndata: {}\n\n",
        json!({"type": "response.created", "response": response("in_progress", "")})
    )];
    for i in 0..n {
        events.push(format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            json!({"type": "response.output_text.delta", "delta": chunk_text(&name, i)})
        ));
    }
    events.push(format!(
        "event: response.completed\ndata: {}\n\n",
        json!({"type": "response.completed", "response": response("completed", &text)})
    ));
    let delay = s.config.chunk_delay;
    let body = stream::unfold(events.into_iter(), move |mut it| {
        let _busy = &busy;
        async move {
            let e = it.next()?;
            pause(delay).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(e)), it))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}
