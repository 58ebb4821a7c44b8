//! The dashboard API: endpoints, parameters and the agreement of every figure.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

fn sum(list: &Value, key: &str) -> u64 {
    list.as_array().unwrap().iter().map(|e| u(&e[key])).sum()
}

/// Sum of a Prometheus counter family over all its series.
fn prom_sum(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// Every figure of the router, checked against each other.
async fn assert_all_figures_agree(h: &Harness) -> (u64, u64, u64, u64) {
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    let (input, output, total, requests) = (
        u(&tokens["total_input_tokens"]),
        u(&tokens["total_output_tokens"]),
        u(&tokens["total_tokens"]),
        u(&tokens["request_count"]),
    );
    for list in ["by_node", "by_model", "by_key"] {
        assert_eq!(sum(&tokens[list], "input_tokens"), input, "{list}");
        assert_eq!(sum(&tokens[list], "output_tokens"), output, "{list}");
        assert_eq!(sum(&tokens[list], "total_tokens"), total, "{list}");
        assert_eq!(sum(&tokens[list], "request_count"), requests, "{list}");
    }
    for tz in ["UTC", "Asia/Tokyo", "America/Los_Angeles"] {
        let daily = h
            .get(&format!("/api/dashboard/stats/tokens/daily?days=3&tz={tz}"))
            .await;
        assert_eq!(sum(&daily["days"], "input_tokens"), input, "daily {tz}");
        assert_eq!(sum(&daily["days"], "output_tokens"), output, "daily {tz}");
        assert_eq!(sum(&daily["days"], "total_tokens"), total, "daily {tz}");
        assert_eq!(sum(&daily["days"], "request_count"), requests, "daily {tz}");
        let monthly = h
            .get(&format!("/api/dashboard/stats/tokens/monthly?months=2&tz={tz}"))
            .await;
        assert_eq!(sum(&monthly["months"], "total_tokens"), total, "monthly {tz}");
        assert_eq!(sum(&monthly["months"], "request_count"), requests, "monthly {tz}");
    }
    let stats = h.get("/api/dashboard/stats").await;
    assert_eq!(
        (
            u(&stats["total_input_tokens"]),
            u(&stats["total_output_tokens"]),
            u(&stats["total_tokens"])
        ),
        (input, output, total)
    );
    assert_eq!(u(&stats["total_requests"]), requests);
    let nodes = h.get("/api/dashboard/nodes").await;
    assert_eq!(sum(&nodes["nodes"], "total_input_tokens"), input);
    assert_eq!(sum(&nodes["nodes"], "total_output_tokens"), output);
    assert_eq!(sum(&nodes["nodes"], "total_tokens"), total);
    assert_eq!(sum(&nodes["nodes"], "total_requests"), requests);
    let metrics = h.metrics().await;
    assert_eq!(prom_sum(&metrics, "llm_router_input_tokens_total"), input);
    assert_eq!(prom_sum(&metrics, "llm_router_output_tokens_total"), output);
    assert_eq!(prom_sum(&metrics, "llm_router_tokens_total"), total);
    assert_eq!(prom_sum(&metrics, "llm_router_requests_total"), requests);
    assert_eq!(prom_sum(&metrics, "llm_router_key_tokens_total"), total);
    assert_eq!(prom_sum(&metrics, "llm_router_key_input_tokens_total"), input);
    assert_eq!(prom_sum(&metrics, "llm_router_key_requests_total"), requests);
    // The history holds every request the nodes took (none is pruned here).
    let history = h.history().await;
    let routed: Vec<&Value> = history.iter().filter(|r| !r["node_id"].is_null()).collect();
    assert_eq!(routed.len() as u64, requests);
    assert_eq!(routed.iter().map(|r| u(&r["total_tokens"])).sum::<u64>(), total);
    // Latency too: the nodes' averages are the stored durations, to the millisecond.
    let latency: u64 = routed.iter().map(|r| u(&r["duration_ms"])).sum();
    let node_latency: f64 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["average_response_time_ms"].as_f64().unwrap() * n["total_requests"].as_f64().unwrap())
        .sum();
    assert_eq!(node_latency.round() as u64, latency);
    let stats_latency = stats["average_response_time_ms"].as_f64().unwrap() * requests as f64;
    assert_eq!(stats_latency.round() as u64, latency);
    (input, output, total, requests)
}

#[tokio::test]
async fn every_figure_agrees_after_a_mixed_workload_and_a_restart() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let silent = mock_with("silent", &["m1"], |c| c.usage = false).await;
    let failing = mock_with("failing", &["m3"], |c| c.failure_rate = 1.0).await;
    let slow = mock_with("slow", &["m4"], |c| {
        c.chunks = 30;
        c.chunk_delay = Duration::from_millis(30);
    })
    .await;
    let h = Harness::start(&[&a, &failing, &slow]).await;
    // Through the API: a node that --node declares cannot be deleted.
    let silent_id = h.add_node(&silent).await;
    for i in 0..6 {
        h.chat(if i % 2 == 0 { "m1" } else { "m2" }, "a few words of prompt")
            .await;
        h.chat_stream(&chat_body("m1", "streamed prompt words", true)).await;
    }
    h.chat("m3", "this one fails").await;
    h.chat("nope", "unknown model").await;
    // A cancelled stream.
    let resp = h
        .post("/v1/chat/completions", &chat_body("m4", "cancel me", true))
        .await;
    let mut s = resp.bytes_stream();
    s.next().await;
    drop(s);
    h.wait_node(&slow.base_url(), "idle", |n| {
        n["active_requests"] == 0 && n["total_requests"] == 1
    })
    .await;
    // Nobody waits for a cancelled request's commit: let it land (15 records, the
    // unknown model's included) before comparing the store with the nodes' figures.
    assert_eq!(h.wait_history(15).await.len(), 15);
    // A deleted node keeps its figures.
    let (s, _) = h.admin(Method::DELETE, &format!("/api/nodes/{silent_id}"), None).await;
    assert_eq!(s, 204);
    let before = assert_all_figures_agree(&h).await;
    assert_eq!(before.3, 14);
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    assert!(u(&tokens["estimated_request_count"]) >= 2);

    let h = h.restart().await;
    assert_eq!(assert_all_figures_agree(&h).await, before);
    h.chat("m2", "after the restart").await;
    let after = assert_all_figures_agree(&h).await;
    assert_eq!(after.3, before.3 + 1);
}

fn record(at: &str, node_id: i64, model: &str, input: u64, output: u64) -> RequestResponseRecord {
    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc);
    RequestResponseRecord {
        id: 0,
        timestamp: t,
        completed_at: t,
        request_type: RequestType::ChatCompletions,
        model: model.into(),
        node_id: Some(node_id),
        node_name: Some("n".into()),
        client_ip: None,
        api_key_id: None,
        api_key_name: None,
        stream: false,
        status: RequestStatus::Success,
        http_status: 200,
        error_message: None,
        duration_ms: 10,
        time_to_first_token_ms: None,
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        token_source: TokenSource::Reported,
        request_body: None,
        response_body: None,
    }
}

#[tokio::test]
async fn daily_and_monthly_buckets_follow_the_time_zone_across_dst() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    // Europe/Paris moves to UTC+2 on 2026-03-29 at 01:00 UTC.
    let records = [
        record("2026-03-28T22:59:59Z", 1, "m", 1, 0),   // 23:59 on the 28th in Paris
        record("2026-03-28T23:00:00Z", 1, "m", 10, 0),  // 00:00 on the 29th
        record("2026-03-29T21:59:00Z", 1, "m", 100, 0), // 23:59 CEST on the 29th
        record("2026-03-29T22:00:00Z", 1, "x", 1000, 0), // 00:00 on the 30th
        record("2026-03-31T22:30:00Z", 1, "m", 5, 5),   // April 1st in Paris, March 31st in UTC
    ];
    h.router
        .state
        .store
        .writer()
        .unwrap()
        .commit(&records, llm_router::store::LockWait::Patient)
        .unwrap();
    let d = h
        .get("/api/dashboard/stats/tokens/daily?from=2026-03-28&to=2026-04-01&tz=Europe/Paris")
        .await;
    assert_eq!(d["tz"], "Europe/Paris");
    let days: Vec<(String, u64)> = d["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["date"].as_str().unwrap().to_string(), u(&e["total_tokens"])))
        .collect();
    let expect = [
        ("2026-03-28", 1),
        ("2026-03-29", 110),
        ("2026-03-30", 1000),
        ("2026-03-31", 0),
        ("2026-04-01", 10),
    ];
    assert_eq!(days, expect.map(|(d, n)| (d.to_string(), n)));
    let utc = h
        .get("/api/dashboard/stats/tokens/daily?from=2026-03-28&to=2026-03-31")
        .await;
    let utc_days: Vec<u64> = utc["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| u(&e["total_tokens"]))
        .collect();
    assert_eq!(utc_days, [11, 1100, 0, 10]);
    let m = h
        .get("/api/dashboard/stats/tokens/monthly?from=2026-02&to=2026-04&tz=Europe/Paris")
        .await;
    let months: Vec<(String, u64)> = m["months"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["month"].as_str().unwrap().to_string(), u(&e["total_tokens"])))
        .collect();
    assert_eq!(
        months,
        [("2026-02".into(), 0), ("2026-03".into(), 1111), ("2026-04".into(), 10)]
    );
    let m = h
        .get("/api/dashboard/stats/tokens/monthly?from=2026-03&to=2026-03&model=x")
        .await;
    assert_eq!(u(&m["months"][0]["total_tokens"]), 1000);
    let filtered = h
        .get("/api/dashboard/stats/tokens/daily?from=2026-03-28&to=2026-03-31&node_id=99")
        .await;
    assert_eq!(sum(&filtered["days"], "total_tokens"), 0);
    let by_model = h.get("/api/dashboard/stats/tokens?model=x").await;
    assert_eq!((u(&by_model["total_tokens"]), u(&by_model["request_count"])), (1000, 1));
}

#[tokio::test]
async fn default_ranges_are_zero_filled_and_ascending() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let d = h.get("/api/dashboard/stats/tokens/daily").await;
    let days = d["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days.last().unwrap()["date"], Utc::now().format("%Y-%m-%d").to_string());
    let dates: Vec<&str> = days.iter().map(|e| e["date"].as_str().unwrap()).collect();
    let mut sorted = dates.clone();
    sorted.sort();
    assert_eq!(dates, sorted);
    assert!(days.iter().all(|e| e["total_tokens"] == 0 && e["request_count"] == 0));
    let m = h.get("/api/dashboard/stats/tokens/monthly").await;
    assert_eq!(m["months"].as_array().unwrap().len(), 12);
    assert_eq!(m["tz"], "UTC");
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_the_parameter() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let cases = [
        ("/api/dashboard/stats/tokens/daily?tz=Mars/Olympus", "tz"),
        (
            "/api/dashboard/stats/tokens/daily?from=2026-05-02&to=2026-05-01",
            "from",
        ),
        ("/api/dashboard/stats/tokens/daily?from=2026-13-01", "from"),
        ("/api/dashboard/stats/tokens/daily?days=0", "days"),
        ("/api/dashboard/stats/tokens/daily?days=100000", "days"),
        ("/api/dashboard/stats/tokens/daily?days=x", "days"),
        ("/api/dashboard/stats/tokens/daily?from=1900-01-01&to=2026-01-01", "to"),
        ("/api/dashboard/stats/tokens/daily?days=3&from=2026-01-01", "days"),
        ("/api/dashboard/stats/tokens/daily?node_id=abc", "node_id"),
        ("/api/dashboard/stats/tokens/monthly?from=2026-1", "from"),
        ("/api/dashboard/stats/tokens/monthly?months=1000", "months"),
        ("/api/dashboard/stats/tokens/monthly?from=2026-06&to=2026-01", "from"),
        ("/api/dashboard/stats/tokens?node_id=1.5", "node_id"),
        ("/api/dashboard/request-history?limit=0", "limit"),
        ("/api/dashboard/request-history?status=weird", "status"),
        ("/api/dashboard/request-history?cursor=zz", "cursor"),
        ("/api/dashboard/request-history/abc", "id"),
    ];
    for (path, param) in cases {
        let (s, v) = h.admin(Method::GET, path, None).await;
        assert_eq!(s, 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("'{param}'")), "{path}: {msg}");
        assert_eq!(v["error"]["code"], "invalid_parameter");
    }
    let (s, _) = h
        .admin(Method::GET, "/api/dashboard/request-history/424242", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn request_history_filters_and_pages_with_a_cursor() {
    let a = mock("alpha", &["m1"]).await;
    let b = mock_with("beta", &["m2"], |c| c.failure_rate = 1.0).await;
    let h = Harness::start(&[&a, &b]).await;
    for _ in 0..5 {
        h.chat("m1", "x").await;
    }
    for _ in 0..2 {
        h.chat("m2", "x").await;
    }
    let page = h.get("/api/dashboard/request-history?limit=3").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    let mut ids: Vec<i64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let mut cursor = page["next_cursor"].as_str().unwrap().to_string();
    loop {
        let p = h
            .get(&format!("/api/dashboard/request-history?limit=3&cursor={cursor}"))
            .await;
        ids.extend(
            p["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(ids, [7, 6, 5, 4, 3, 2, 1]);
    let errors = h.get("/api/dashboard/request-history?status=error").await;
    assert_eq!(errors["records"].as_array().unwrap().len(), 2);
    assert!(errors["next_cursor"].is_null());
    let m1 = h.get("/api/dashboard/request-history?model=m1&node_id=1").await;
    assert_eq!(m1["records"].as_array().unwrap().len(), 5);
    // A node filter alone (read through the rollups' id ranges), paged.
    let ids_of = |page: &Value| -> Vec<i64> {
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let beta = h.get("/api/dashboard/request-history?node_id=2").await;
    assert_eq!(ids_of(&beta), [7, 6]);
    let mut alpha = Vec::new();
    let mut query = "node_id=1&limit=2".to_string();
    loop {
        let p = h.get(&format!("/api/dashboard/request-history?{query}")).await;
        alpha.push(ids_of(&p));
        match p["next_cursor"].as_str() {
            Some(c) => query = format!("node_id=1&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(alpha, [vec![5, 4], vec![3, 2], vec![1]]);
    let ok_alpha = h.get("/api/dashboard/request-history?node_id=1&status=success").await;
    assert_eq!(ids_of(&ok_alpha), [5, 4, 3, 2, 1]);
    let ok_beta = h.get("/api/dashboard/request-history?node_id=2&status=success").await;
    assert_eq!(ids_of(&ok_beta), Vec::<i64>::new());
    let failed_beta = h.get("/api/dashboard/request-history?node_id=2&status=error").await;
    assert_eq!(ids_of(&failed_beta), [7, 6]);
    for cursor in [i64::MIN, -1, 0, 1, i64::MAX] {
        let page = h
            .get(&format!("/api/dashboard/request-history?node_id=1&cursor={cursor}"))
            .await;
        let expected: Vec<i64> = (1..=5).rev().filter(|id| *id < cursor).collect();
        assert_eq!(ids_of(&page), expected, "cursor {cursor}");
    }
    let one = h.get("/api/dashboard/request-history/3").await;
    assert_eq!((one["id"].clone(), one["model"].clone()), (json!(3), json!("m1")));
    assert_eq!(one["token_source"], "reported");
}

#[tokio::test]
async fn metrics_expose_requests_tokens_latency_and_node_state() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    h.chat("m", "one two").await;
    h.chat_stream(&chat_body("m", "one two", true)).await;
    let text = h.metrics().await;
    let name = h.node(&a.base_url()).await["name"].as_str().unwrap().to_string();
    let labels = format!("node_id=\"1\",node=\"{name}\",model=\"m\"");
    for line in [
        format!("llm_router_requests_total{{{labels},status=\"success\"}} 2"),
        format!("llm_router_input_tokens_total{{{labels}}} 4"),
        format!("llm_router_output_tokens_total{{{labels}}} 10"),
        format!("llm_router_request_duration_seconds_count{{{labels}}} 2"),
        format!("llm_router_time_to_first_token_seconds_count{{{labels}}} 2"),
        format!("llm_router_node_up{{node_id=\"1\",node=\"{name}\"}} 1"),
        format!("llm_router_active_requests{{node_id=\"1\",node=\"{name}\"}} 0"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn a_request_ends_on_the_gauge_it_started_on_when_its_node_is_renamed() {
    let a = slow_stream_mock("alpha", 4, Duration::from_millis(100)).await;
    let h = Harness::start(&[&a]).await;
    let old = h.node(&a.base_url()).await["name"].as_str().unwrap().to_string();
    let rename = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (s, _) = h
            .admin(Method::PATCH, "/api/nodes/1", Some(json!({"name": "renamed"})))
            .await;
        assert_eq!(s, 200);
        h.metrics().await
    };
    let body = chat_body("m", "x", true);
    let ((status, _), during) = tokio::join!(h.chat_stream(&body), rename);
    assert_eq!(status, 200);
    let active = |name: &str, n: i64| format!("llm_router_active_requests{{node_id=\"1\",node=\"{name}\"}} {n}");
    assert!(during.lines().any(|l| l == active(&old, 1)), "{during}");
    let after = h.metrics().await;
    assert!(after.lines().any(|l| l == active(&old, 0)), "{after}");
    assert!(!after.lines().any(|l| l == active("renamed", -1)), "{after}");
    // Counted under the name it had (on a store shared by replicas, the counters are the
    // rollups', shown under the node's current name, as after a restart).
    let counted_as = if postgres_server().is_some() {
        "renamed"
    } else {
        old.as_str()
    };
    let requests =
        format!("llm_router_requests_total{{node_id=\"1\",node=\"{counted_as}\",model=\"m\",status=\"success\"}} 1");
    assert!(after.lines().any(|l| l == requests), "{after}");
}

#[tokio::test]
async fn metrics_can_require_the_admin_key() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.metrics = llm_router::config::MetricsAccess::Admin).await;
    assert_eq!(h.http.get(h.url("/metrics")).send().await.unwrap().status(), 401);
    let (s, _) = h.admin(Method::GET, "/metrics", None).await;
    assert_eq!(s, 200);
}

/// Every route the code registers is in the OpenAPI document (read from the source,
/// so a new route without documentation fails here).
#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let doc = h.get("/api/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut registered = BTreeSet::new();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut stack = vec![std::path::PathBuf::from(src)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split(".route(").skip(1) {
                    if let Some(path) = part.trim_start().strip_prefix('"') {
                        registered.insert(path.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
    }
    // Static assets of the web UI are files, not API routes.
    let assets = [
        "/",
        "/dashboard",
        "/dashboard/",
        "/dashboard/app.css",
        "/dashboard/js/{file}",
    ];
    let missing: Vec<&String> = registered
        .iter()
        .filter(|r| !documented.contains(*r) && !assets.contains(&r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    assert!(registered.len() >= 20, "{registered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_totals_agree_while_records_are_being_committed() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let h = Harness::start(&[&a]).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let traffic = async {
        let client = |model: &'static str| async {
            let mut sent = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(h.chat(model, "words to count").await.0, 200);
                sent += 1;
            }
            sent
        };
        let sent = futures_util::future::join_all(["m1", "m2", "m1", "m2", "m1", "m2"].map(client)).await;
        sent.iter().sum::<u64>()
    };
    let reads = async {
        for _ in 0..150 {
            let t = h.get("/api/dashboard/stats/tokens").await;
            let total = u(&t["total_tokens"]);
            assert_eq!(sum(&t["by_node"], "total_tokens"), total, "by node, mid-traffic");
            assert_eq!(sum(&t["by_model"], "total_tokens"), total, "by model, mid-traffic");
            assert_eq!(sum(&t["by_node"], "request_count"), u(&t["request_count"]));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (sent, ()) = tokio::join!(traffic, reads);
    assert!(sent > 0);
    let t = h.get("/api/dashboard/stats/tokens").await;
    assert_eq!(u(&t["request_count"]), sent);
}
