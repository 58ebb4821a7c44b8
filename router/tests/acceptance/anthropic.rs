//! Anthropic's Messages API, `POST /v1/messages`: the official `anthropic` Python SDK
//! against the router over a node that only speaks chat completions (translated
//! both ways, plain and streamed, tool calls included), exact figures in the store,
//! client keys in `x-api-key`, and Anthropic's error shape.

use llm_router::keys::ClientAuth;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn the_anthropic_sdk_talks_to_a_chat_completions_node_plain_and_streamed() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let out = python(&format!(
        r#"
import anthropic, json
c = anthropic.Anthropic(base_url="{}", api_key="unused")
r = c.messages.create(model="m", max_tokens=64, system="Be brief.",
    messages=[{{"role": "user", "content": [{{"type": "text", "text": "one two"}}, {{"type": "text", "text": "three"}}]}}])
print(json.dumps([r.content[0].text, r.stop_reason, r.usage.input_tokens, r.usage.output_tokens]))
with c.messages.stream(model="m", max_tokens=32, messages=[{{"role": "user", "content": "one two three"}}]) as s:
    text = "".join(s.text_stream)
    f = s.get_final_message()
print(json.dumps([text, f.stop_reason, f.usage.input_tokens, f.usage.output_tokens]))
"#,
        h.router.base_url()
    ))
    .await;
    let text = mock_text("alpha", 5);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!([text, "end_turn", 5, 5]));
    assert_eq!(lines[1], json!([text, "end_turn", 3, 5]));

    // What the node received: chat completions, all-text content as a plain string,
    // the limit as `max_tokens`, the stream asking for its usage.
    let received = a.received();
    assert!(received.iter().all(|r| r.path == "/v1/chat/completions"));
    assert_eq!(
        received[0].body,
        json!({"model": "m", "max_tokens": 64, "stream": false, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "one two\nthree"}]})
    );
    assert_eq!(received[1].body["stream_options"], json!({"include_usage": true}));
    assert_eq!(received[1].body["max_tokens"], 32);

    let records = h.wait_history(2).await;
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r["request_type"] == "messages" && r["status"] == "success"));
    assert_eq!(records[0]["stream"], true);
    assert_counts(&records[0], 3, 5, "reported");
    assert_counts(&records[1], 5, 5, "reported");
    assert_eq!(token_totals(&h).await, (8, 10, 18, 2));
}

#[tokio::test]
async fn a_tool_call_round_trip_through_the_sdk_counts_under_its_key() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.client_auth = ClientAuth::Required).await;
    let (s, v) = h
        .admin(Method::POST, "/api/keys", Some(json!({"name": "claude"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let (key_id, key) = (v["id"].as_i64().unwrap(), v["key"].as_str().unwrap().to_string());
    let out = python(&format!(
        r#"
import anthropic, json
c = anthropic.Anthropic(base_url="{}", api_key="{}")
tools = [{{"name": "lookup", "description": "Looks things up",
    "input_schema": {{"type": "object", "properties": {{"q": {{"type": "string"}}}}}}}}]
ask = {{"role": "user", "content": "find it"}}
r = c.messages.create(model="m", max_tokens=64, tools=tools, messages=[ask])
use = [b for b in r.content if b.type == "tool_use"][0]
print(json.dumps([r.stop_reason, use.name, use.input, r.usage.output_tokens]))
turns = [ask, {{"role": "assistant", "content": [{{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}}]}},
    {{"role": "user", "content": [{{"type": "tool_result", "tool_use_id": use.id, "content": "found"}}]}}]
r2 = c.messages.create(model="m", max_tokens=64, tools=tools, messages=turns)
print(json.dumps([r2.stop_reason, r2.content[0].text]))
with c.messages.stream(model="m", max_tokens=64, tools=tools, messages=[ask]) as s:
    f = s.get_final_message()
print(json.dumps([f.stop_reason, f.content[0].type, f.content[0].id, f.content[0].input, f.usage.input_tokens, f.usage.output_tokens]))
"#,
        h.router.base_url(),
        key
    ))
    .await;
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!(["tool_use", "lookup", {"q": "alpha"}, 5]));
    assert_eq!(lines[1], json!(["end_turn", mock_text("alpha", 5)]));
    assert_eq!(
        lines[2],
        json!(["tool_use", "tool_use", "call_mock", {"q": "alpha"}, 2, 5])
    );

    let received = a.received();
    assert_eq!(
        received[0].body["tools"],
        json!([{"type": "function", "function": {"name": "lookup", "description": "Looks things up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}])
    );
    assert_eq!(
        received[1].body["messages"],
        json!([{"role": "user", "content": "find it"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"q\":\"alpha\"}"}}]},
            {"role": "tool", "tool_call_id": "call_mock", "content": "found"}])
    );
    assert!(
        received.iter().all(|r| r.headers.get("x-api-key").is_none()),
        "the client's key stays here"
    );

    let records = h.wait_history(3).await;
    assert!(records
        .iter()
        .all(|r| r["api_key_id"] == key_id && r["request_type"] == "messages"));
    assert_counts(&records[2], 2, 5, "reported");
    assert_counts(&records[1], 3, 5, "reported");
    assert_counts(&records[0], 2, 5, "reported");
    assert_eq!(token_totals(&h).await, (7, 15, 22, 3));
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    let by_key = tokens["by_key"].as_array().unwrap();
    assert_eq!(by_key.len(), 1, "{by_key:?}");
    assert_eq!(
        (by_key[0]["key_id"].as_i64(), u(&by_key[0]["total_tokens"])),
        (Some(key_id), 22)
    );

    // Without a key: refused in Anthropic's shape before any node is asked.
    let before = a.received().len();
    let resp = h
        .post("/v1/messages", &json!({"model": "m", "max_tokens": 8, "messages": []}))
        .await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(a.received().len(), before);
}

#[tokio::test]
async fn messages_errors_are_in_anthropic_s_shape_and_broken_streams_are_errors() {
    let a = mock("alpha", &["m"]).await;
    let garbage = mock_with("garbage", &["g"], |c| c.garbage_stream = true).await;
    let broken = mock_with("broken", &["b"], |c| c.break_after_chunks = Some(2)).await;
    let h = Harness::start(&[&a, &garbage, &broken]).await;
    let (status, body) = h.post_raw("/v1/messages", "{\"model\": ").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );

    let ask = |model: &str, stream: bool| json!({"model": model, "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": "x y"}]});
    let resp = h.post("/v1/messages", &ask("claude-nowhere", false)).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"type": "error", "error": {"type": "not_found_error",
            "message": "the model 'claude-nowhere' is not served by any node"}})
    );

    let resp = h.post("/v1/messages", &ask("g", true)).await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(!body.windows(12).any(|w| w == b"message_stop"), "no complete message");
    let resp = h.post("/v1/messages", &ask("b", true)).await;
    assert!(resp.bytes().await.is_err(), "the client's stream breaks too");

    let records = h.wait_history(4).await;
    let by_model = |m: &str| records.iter().find(|r| r["model"] == m).unwrap().clone();
    let g = by_model("g");
    assert_eq!(
        (g["status"].clone(), g["request_type"].clone()),
        (json!("error"), json!("messages"))
    );
    assert_counts(&g, 2, 0, "estimated");
    let b = by_model("b");
    assert_eq!(b["status"], "error", "{b}");
    assert_counts(&b, 2, tokens(&mock_text("broken", 2)), "estimated");
    token_totals(&h).await;
    // Still serving.
    let resp = h.post("/v1/messages", &ask("m", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["usage"],
        json!({"input_tokens": 2, "output_tokens": 5})
    );
}

#[tokio::test]
async fn a_node_that_speaks_messages_gets_them_as_sent_and_its_usage_counts() {
    let l = mock_with("llama", &["m"], |c| c.imitate = mock_node::Imitation::LlamaCpp).await;
    let h = Harness::start(&[&l]).await;
    assert_eq!(h.node(&l.base_url()).await["kind"], "llamacpp");
    let ask = |stream: bool| {
        json!({"model": "m", "max_tokens": 8, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]})
    };
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/messages", l.base_url()))
        .json(&ask(true))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let via_router = h.post("/v1/messages", &ask(true)).await.bytes().await.unwrap();
    assert_eq!(via_router, direct, "events pass through unchanged");
    let plain: Value = h.post("/v1/messages", &ask(false)).await.json().await.unwrap();
    assert_eq!(plain["usage"], json!({"input_tokens": 3, "output_tokens": 5}));
    assert!(l
        .received()
        .iter()
        .all(|r| r.path == "/v1/messages" && r.body["messages"] == ask(true)["messages"]));
    let records = h.wait_history(2).await;
    for r in &records {
        assert_eq!(r["request_type"], "messages");
        assert_counts(r, 3, 5, "reported");
    }
    assert_eq!(token_totals(&h).await, (6, 10, 16, 2));
}

#[tokio::test]
async fn count_tokens_through_the_sdk_is_the_estimate_the_router_records_and_leaves_no_record() {
    // A node that reports no usage: the router records its own estimate of the input.
    let a = mock_with("alpha", &["m"], |c| c.usage = false).await;
    let h = Harness::start_with(&[&a], |args| args.client_auth = ClientAuth::Required).await;
    let (_, secret) = create_key(&h, json!({"name": "counter", "allowed_models": ["m", "ghost"]})).await;
    let out = python(&format!(
        r#"
import anthropic, json
c = anthropic.Anthropic(base_url="{}", api_key="{secret}")
req = dict(model="m", system="Be brief.",
    messages=[{{"role": "user", "content": "How many tokens are in this sentence, exactly?"}},
              {{"role": "assistant", "content": "Nine or ten."}},
              {{"role": "user", "content": [{{"type": "text", "text": "Count again, please."}}]}}])
n = c.messages.count_tokens(**req).input_tokens
r = c.messages.create(max_tokens=16, **req)
print(json.dumps([n, r.usage.input_tokens]))
"#,
        h.router.base_url()
    ))
    .await;
    let counted: Value = serde_json::from_str(out.trim()).unwrap();
    let n = u(&counted[0]);
    assert!(n > 15, "{counted}");
    assert_eq!(u(&counted[1]), n, "the Messages answer reports the same estimate");
    let records = h.wait_history(1).await;
    assert_eq!(records.len(), 1, "count_tokens leaves no record: {records:?}");
    assert_eq!(u(&records[0]["input_tokens"]), n);
    assert_eq!(records[0]["token_source"], "estimated");
    assert_eq!(a.received().len(), 1, "count_tokens reaches no node");

    // Refusals, in Anthropic's shape.
    let ask = |key: Option<&str>, body: Value| {
        let mut req = h.http.post(h.url("/v1/messages/count_tokens")).json(&body);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["type"], "error", "{v}");
            (status, v["error"]["type"].as_str().unwrap().to_string())
        }
    };
    let hello = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(ask(None, hello("m")).await, (401, "authentication_error".into()));
    assert_eq!(
        ask(Some(&secret), hello("other")).await,
        (403, "permission_error".into())
    );
    assert_eq!(
        ask(Some(&secret), hello("ghost")).await,
        (404, "not_found_error".into())
    );
    assert_eq!(
        ask(Some(&secret), json!({"model": "m"})).await,
        (400, "invalid_request_error".into())
    );
    assert_eq!(
        ask(Some(&secret), json!({"messages": []})).await,
        (400, "invalid_request_error".into())
    );
    assert_eq!(h.history().await.len(), 1);
}
