//! Ollama's API under `/ollama`: the official `ollama` Python client against the
//! router, NDJSON streams byte for byte, Ollama's counts in the store, Ollama's error
//! shape, and Ollama requests routed to `ollama` nodes only.

use mock_node::{Imitation, MockNode};
use serde_json::{json, Value};

use crate::support::*;

async fn ollama_mock(name: &str, models: &[&str], tweak: impl FnOnce(&mut mock_node::MockConfig)) -> MockNode {
    mock_with(name, models, |c| {
        c.imitate = Imitation::Ollama;
        tweak(c);
    })
    .await
}

/// The records of one request type, newest first.
fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["request_type"] == kind).collect()
}

#[tokio::test]
async fn the_ollama_python_client_chats_generates_and_embeds_with_exact_tokens() {
    let o = ollama_mock("llama", &["m", "e"], |_| {}).await;
    // An OpenAI node serving the same model must not get Ollama requests.
    let other = mock("other", &["m", "openai-only"]).await;
    let h = Harness::start(&[&o, &other]).await;
    assert_eq!(h.node(&o.base_url()).await["kind"], "ollama");
    let out = python(&format!(
        r#"
import json, ollama
c = ollama.Client(host="{}/ollama")
msgs = [{{"role": "user", "content": "one two three"}}]
r = c.chat(model="m", messages=msgs, stream=False)
print(json.dumps([r.message.content, r.done, r.done_reason, r.prompt_eval_count, r.eval_count]))
parts = list(c.chat(model="m", messages=msgs, stream=True))
print(json.dumps(["".join(p.message.content for p in parts), parts[-1].done, parts[-1].eval_count]))
g = c.generate(model="m", prompt="four five", stream=False)
print(json.dumps([g.response, g.prompt_eval_count, g.eval_count]))
print(json.dumps("".join(p.response for p in c.generate(model="m", prompt="four five", stream=True))))
e = c.embed(model="e", input=["a b", "c"])
print(json.dumps([len(e.embeddings), e.prompt_eval_count]))
print(json.dumps(sorted(m.model for m in c.list().models)))
"#,
        h.router.base_url()
    ))
    .await;
    let text = mock_text("llama", 5);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!([text, true, "stop", 3, 5]));
    assert_eq!(lines[1], json!([text, true, 5]));
    assert_eq!(lines[2], json!([text, 2, 5]));
    assert_eq!(lines[3], json!(text));
    assert_eq!(lines[4], json!([2, 3]));
    // The models of `ollama` nodes only.
    assert_eq!(lines[5], json!(["e", "m"]));

    let records = h.wait_history(5).await;
    assert_eq!(records.len(), 5, "{records:?}");
    let chats = of_type(&records, "ollama_chat");
    assert_eq!(chats.len(), 2);
    for r in &chats {
        assert_counts(r, 3, 5, "reported");
        assert_eq!(r["status"], "success");
        assert_eq!(r["node_name"], h.node(&o.base_url()).await["name"]);
    }
    assert_eq!(
        (chats[0]["stream"].clone(), chats[1]["stream"].clone()),
        (json!(true), json!(false))
    );
    let generates = of_type(&records, "ollama_generate");
    assert_eq!(generates.len(), 2);
    for r in &generates {
        assert_counts(r, 2, 5, "reported");
    }
    assert_eq!(generates[0]["stream"], true);
    let embeds = of_type(&records, "ollama_embed");
    assert_eq!(embeds.len(), 1);
    assert_counts(embeds[0], 3, 0, "reported");
    assert!(other.received().is_empty(), "ollama requests go to ollama nodes only");
    assert_eq!(token_totals(&h).await, (13, 20, 33, 5));
    let paths: Vec<String> = o.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/api/chat", "/api/chat", "/api/generate", "/api/generate", "/api/embed"]
    );
}

#[tokio::test]
async fn an_ollama_stream_passes_through_byte_for_byte_and_its_final_object_counts() {
    let o = ollama_mock("llama", &["m"], |c| c.chunks = 7).await;
    let h = Harness::start(&[&o]).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "a b c d"}]});
    let direct = reqwest::Client::new()
        .post(format!("{}/api/chat", o.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let resp = h.post("/ollama/api/chat", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let via_router = resp.bytes().await.unwrap();
    assert_eq!(via_router, direct, "NDJSON passes through unchanged");
    assert_eq!(via_router.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(), 8);
    let r = &h.wait_history(1).await[0];
    assert_eq!(
        (r["request_type"].clone(), r["stream"].clone()),
        (json!("ollama_chat"), json!(true))
    );
    assert_counts(r, 4, 7, "reported");
}

#[tokio::test]
async fn ollama_answers_without_counts_are_estimated() {
    let o = ollama_mock("llama", &["m"], |c| c.usage = false).await;
    let h = Harness::start(&[&o]).await;
    let chat = json!({"model": "m", "stream": false, "messages": [{"role": "user", "content": "hello world"}]});
    assert_eq!(h.post("/ollama/api/chat", &chat).await.status(), 200);
    let streamed = json!({"model": "m", "prompt": "hello world"});
    let bytes = h.post("/ollama/api/generate", &streamed).await.bytes().await.unwrap();
    let last: Value = serde_json::from_slice(bytes.trim_ascii_end().rsplit(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!((last["done"].clone(), last.get("eval_count")), (json!(true), None));
    let legacy = json!({"model": "m", "prompt": "hello world"});
    assert_eq!(h.post("/ollama/api/embeddings", &legacy).await.status(), 200);
    let records = h.wait_history(3).await;
    let out = tokens(&mock_text("llama", 5));
    assert_counts(of_type(&records, "ollama_chat")[0], 2, out, "estimated");
    assert_counts(of_type(&records, "ollama_generate")[0], 2, out, "estimated");
    assert_counts(of_type(&records, "ollama_embeddings")[0], 2, 0, "estimated");
    token_totals(&h).await;
}

#[tokio::test]
async fn ollama_errors_are_in_ollama_s_shape() {
    let o = ollama_mock("llama", &["m"], |_| {}).await;
    let other = mock("other", &["openai-only"]).await;
    let h = Harness::start(&[&o, &other]).await;
    let (status, body) = h.post_raw("/ollama/api/chat", "{not json").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not valid JSON"), "{v}");
    for model in ["nobody-serves-it", "openai-only"] {
        let resp = h
            .post("/ollama/api/generate", &json!({"model": model, "prompt": "x"}))
            .await;
        assert_eq!(resp.status(), 404, "{model}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v,
            json!({"error": format!("the model '{model}' is not served by any node")})
        );
    }
    // The node's own error passes through as it is.
    let resp = h.post("/ollama/api/show", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["details"]["family"], "mock");
    let records = h.wait_history(3).await;
    assert_eq!(records.len(), 3, "show leaves no record: {records:?}");
    assert!(records.iter().all(|r| r["status"] == "error" && r["node_id"].is_null()));
    let statuses: Vec<u64> = records.iter().map(|r| u(&r["http_status"])).collect();
    assert_eq!(statuses, [404, 404, 400]);
}

#[tokio::test]
async fn garbage_ndjson_and_a_broken_stream_are_recorded_as_errors() {
    let garbage = ollama_mock("garbage", &["g"], |c| c.garbage_stream = true).await;
    let broken = ollama_mock("broken", &["b"], |c| c.break_after_chunks = Some(2)).await;
    let h = Harness::start(&[&garbage, &broken]).await;
    let resp = h
        .post(
            "/ollama/api/chat",
            &json!({"model": "g", "messages": [{"role": "user", "content": "x y"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert!(bytes.starts_with(b"this is not json\n"), "passed through as it came");
    let resp = h
        .post("/ollama/api/generate", &json!({"model": "b", "prompt": "x y"}))
        .await;
    assert!(resp.bytes().await.is_err(), "the client's stream breaks too");
    let records = h.wait_history(2).await;
    let g = of_type(&records, "ollama_chat")[0];
    assert_eq!(g["status"], "error", "{g}");
    assert_counts(g, 2, 0, "estimated");
    let b = of_type(&records, "ollama_generate")[0];
    assert_eq!(b["status"], "error", "{b}");
    assert_counts(b, 2, tokens(&mock_text("broken", 2)), "estimated");
    token_totals(&h).await;
    // The router is still serving.
    assert_eq!(
        h.post(
            "/ollama/api/generate",
            &json!({"model": "b", "prompt": "x", "stream": false})
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn ollama_clients_send_no_key_and_are_refused_when_keys_are_required() {
    let o = ollama_mock("llama", &["m"], |_| {}).await;
    let h = Harness::start_with(&[&o], |args| args.client_auth = llm_router::keys::ClientAuth::Required).await;
    let resp = h
        .post(
            "/ollama/api/chat",
            &json!({"model": "m", "stream": false, "messages": []}),
        )
        .await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].is_string(), "{v}");
    let tags = h.http.get(h.url("/ollama/api/tags")).send().await.unwrap();
    assert_eq!(tags.status(), 401);
    assert!(o.received().is_empty());
}

#[tokio::test]
async fn ollama_requests_wait_for_a_slot_on_an_ollama_node_and_a_full_queue_answers_in_ollama_s_shape() {
    let o = ollama_mock("llama", &["m"], |c| {
        c.chunks = 3;
        c.chunk_delay = std::time::Duration::from_millis(300);
    })
    .await;
    // A free OpenAI node serving the same model must not take the waiting request.
    let other = mock("other", &["m"]).await;
    let h = Harness::start_with(&[&o, &other], |args| args.queue_size = 1).await;
    crate::admission::patch_node(&h, &o.base_url(), json!({"max_concurrent": 1})).await;
    let send = |content: &'static str| {
        let req = h
            .http
            .post(h.url("/ollama/api/chat"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": content}]}));
        tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry, resp.text().await.unwrap())
        })
    };
    let first = send("first");
    crate::admission::wait_until("the slot taken", || async { o.received().len() == 1 }).await;
    let second = send("second");
    crate::admission::wait_until("the second queued", || async {
        h.get("/api/dashboard/stats").await["queue"]["depth"] == 1
    })
    .await;
    let (status, retry, body) = send("third").await.unwrap();
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "every node serving 'm' is busy and the queue is full; retry later"})
    );
    for (name, answer) in [("first", first), ("second", second)] {
        let (status, _, body) = answer.await.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.lines().last().unwrap().contains("\"done\":true"), "{name}: {body}");
    }
    assert_eq!(
        o.received().len(),
        2,
        "both went to the ollama node, one after the other"
    );
    assert!(other.received().is_empty(), "the OpenAI node got no Ollama request");
}

#[tokio::test]
async fn a_model_without_a_tag_is_served_by_an_ollama_node_that_lists_it_as_latest() {
    let o = ollama_mock("llama", &["llama3:latest"], |_| {}).await;
    // A node of another kind is held to the exact name.
    let other = mock("other", &["qwen:latest"]).await;
    let h = Harness::start(&[&o, &other]).await;
    let out = python(&format!(
        r#"
import json, ollama
c = ollama.Client(host="{}/ollama")
r = c.chat(model="llama3", messages=[{{"role": "user", "content": "one two"}}], stream=False)
print(json.dumps([r.done, r.prompt_eval_count, r.eval_count]))
"#,
        h.router.base_url()
    ))
    .await;
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap(), json!([true, 2, 5]));
    assert_eq!(h.chat("llama3", "one two three").await.0, 200);
    assert_eq!(h.chat("qwen", "x").await.0, 404);
    // The node gets the name as the client sent it; the record keeps it too.
    let received = o.received();
    assert_eq!(received.len(), 2);
    assert!(
        received.iter().all(|r| r.body["model"] == "llama3"),
        "{:?}",
        received[0].body
    );
    let records = h.wait_history(3).await;
    let served: Vec<_> = records.iter().filter(|r| r["status"] == "success").collect();
    assert_eq!(served.len(), 2);
    assert!(served
        .iter()
        .all(|r| r["model"] == "llama3" && u(&r["input_tokens"]) > 0));
    assert_eq!(token_totals(&h).await.3, 2);
}
