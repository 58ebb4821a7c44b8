//! Usage per client key through the real router: a key holder's own view (`/v1/key`)
//! and every per-key figure against the records after a mixed workload and a restart.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn a_key_sees_its_own_usage_without_the_admin_key() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (id, key) = create_key(
        &h,
        json!({"name": "alice", "daily_token_budget": 100, "monthly_token_budget": 1000, "rpm_limit": 60}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    }
    let me: Value = h
        .http
        .get(h.url("/v1/key"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((me["id"].as_i64(), me["name"].as_str()), (Some(id), Some("alice")));
    assert_eq!(me["prefix"], key[..12]);
    assert!(!me.to_string().contains(&key));
    assert_eq!(me["limits"]["rpm_limit"], 60);
    assert_eq!(me["usage"]["today"], json!({"requests": 2, "tokens": 14}));
    assert_eq!(me["usage"]["month"], json!({"requests": 2, "tokens": 14}));
    assert_eq!(me["usage"]["all_time"]["tokens"], 14);
    assert_eq!(me["remaining"], json!({"daily_tokens": 86, "monthly_tokens": 986}));
    let resp = h.http.get(h.url("/v1/key")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn figures_per_key_equal_the_records_after_a_mixed_workload_and_a_restart() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let silent = mock_with("silent", &["m1"], |c| c.usage = false).await;
    let failing = mock_with("failing", &["m3"], |c| c.failure_rate = 1.0).await;
    let slow = slow_stream_mock("slow", 30, Duration::from_millis(30)).await;
    let h = Harness::start(&[&a, &silent, &failing, &slow]).await;
    let (alice, alice_key) = create_key(&h, json!({"name": "alice"})).await;
    let (bot, bot_key) = create_key(&h, json!({"name": "ci-bot"})).await;
    let send = |key: Option<String>, model: &'static str, stream: bool| {
        let mut req = h
            .http
            .post(h.url("/v1/chat/completions"))
            .json(&chat_body(model, "some prompt words", stream));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move { req.send().await.unwrap().bytes().await.unwrap() }
    };
    for i in 0..4 {
        let key = [Some(alice_key.clone()), Some(bot_key.clone()), None][i % 3].clone();
        send(key.clone(), "m1", false).await;
        send(key.clone(), "m2", true).await;
        send(key, "m3", false).await;
    }
    // A cancelled stream of ci-bot's.
    let resp = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&bot_key)
        .json(&chat_body("m", "cancel me", true))
        .send()
        .await
        .unwrap();
    let mut s = resp.bytes_stream();
    s.next().await;
    drop(s);
    assert_eq!(h.wait_history(13).await.len(), 13);
    // Renaming a key changes no figure.
    h.admin(
        Method::PATCH,
        &format!("/api/keys/{alice}"),
        Some(json!({"name": "alice-renamed"})),
    )
    .await;

    check_figures_per_key(&h, alice, bot).await;
    let h = h.restart().await;
    check_figures_per_key(&h, alice, bot).await;
}

/// Σ by_key = every other total, and each key's figures (statistics, series, history
/// page, Prometheus, dashboard list) equal the sum of its 13 records.
async fn check_figures_per_key(h: &Harness, alice: i64, bot: i64) {
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    let history = h.history().await;
    let routed: Vec<&Value> = history.iter().filter(|r| !r["node_id"].is_null()).collect();
    assert_eq!(routed.len(), 13);
    let by_key = tokens["by_key"].as_array().unwrap().clone();
    assert_eq!(by_key.len(), 3, "{by_key:?}");
    for list in ["by_node", "by_model", "by_key"] {
        for field in ["input_tokens", "output_tokens", "total_tokens", "request_count"] {
            let sum: u64 = tokens[list].as_array().unwrap().iter().map(|e| u(&e[field])).sum();
            let total_field = match field {
                "input_tokens" => "total_input_tokens",
                "output_tokens" => "total_output_tokens",
                other => other,
            };
            let total = u(&tokens[total_field]);
            assert_eq!(sum, total, "{list} {field}");
        }
    }
    let dashboard_keys = h.get("/api/dashboard/keys").await;
    let metrics = h.metrics().await;
    for (id, name) in [
        (Some(alice), "alice-renamed"),
        (Some(bot), "ci-bot"),
        (None, "anonymous"),
    ] {
        let records: Vec<&&Value> = routed.iter().filter(|r| r["api_key_id"].as_i64() == id).collect();
        let total: u64 = records.iter().map(|r| u(&r["total_tokens"])).sum();
        let entry = by_key.iter().find(|e| e["key_id"].as_i64() == id).unwrap();
        assert_eq!(entry["key_name"], name);
        assert_eq!(
            (u(&entry["total_tokens"]), u(&entry["request_count"])),
            (total, records.len() as u64)
        );
        let key_param = id.map_or("anonymous".to_string(), |i| i.to_string());
        let filtered = h.get(&format!("/api/dashboard/stats/tokens?key_id={key_param}")).await;
        assert_eq!(u(&filtered["total_tokens"]), total);
        let daily = h
            .get(&format!("/api/dashboard/stats/tokens/daily?days=2&key_id={key_param}"))
            .await;
        let daily_sum: u64 = daily["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| u(&d["total_tokens"]))
            .sum();
        assert_eq!(daily_sum, total);
        let page = h
            .get(&format!("/api/dashboard/request-history?key_id={key_param}&limit=500"))
            .await;
        let page_total: u64 = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| u(&r["total_tokens"]))
            .sum();
        assert_eq!(page_total, total);
        let label = id.map_or("anonymous".to_string(), |i| i.to_string());
        let prom: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("llm_router_key_tokens_total{") && l.contains(&format!("key_id=\"{label}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(prom, total, "prometheus {label}");
        if let Some(id) = id {
            let k = dashboard_keys["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["id"] == id)
                .unwrap();
            assert_eq!((u(&k["total_tokens"]), u(&k["today_tokens"])), (total, total));
            assert_eq!(u(&k["total_requests"]), records.len() as u64);
        }
    }
}
