//! The console's usage, speed and request pages in headless Chromium (DESIGN §15):
//! the CSV export downloaded through its button equals the API's, the speed table and
//! chart and a request's full record show the API's figures, at 390 px and by keyboard.
//! Screenshots go to `target/e2e-artifacts/console-*.png`.

use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::Locator;
use reqwest::Method;
use serde_json::{json, Value};

use crate::console_e2e::{assert_no_overflow, click_css, open_page};
use crate::dashboard_e2e::{choose, sign_in, Browser};
use crate::support::*;

#[tokio::test]
async fn the_csv_export_downloads_the_api_figures_for_the_range_and_filters_on_screen() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let h = Harness::start(&[&a]).await;
    let (_, key) = h
        .admin(Method::POST, "/api/keys", Some(json!({"name": "ci-bot"})))
        .await;
    let secret = key["key"].as_str().unwrap().to_string();
    for (model, keyed) in [("m1", true), ("m2", false), ("m1", false)] {
        let mut req = h
            .http
            .post(h.url("/v1/chat/completions"))
            .json(&chat_body(model, "words for the export", false));
        if keyed {
            req = req.bearer_auth(&secret);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    open_page(&b, "stats").await;
    choose(&b, "range", "7d").await;
    choose(&b, "tz", "Asia/Tokyo").await;
    choose(&b, "export-group", "month").await;
    b.wait(
        "export link",
        "return document.getElementById('export-link').href.includes('group=month')",
    )
    .await;
    let href = b.js("return document.getElementById('export-link').href").await;
    let href = href.as_str().unwrap().to_string();
    let query = href.split_once('?').unwrap().1.to_string();
    assert!(query.contains("tz=Asia%2FTokyo"), "{query}");
    assert_eq!(
        b.js("return document.getElementById('export-link').hasAttribute('download')")
            .await,
        true
    );
    // Download through the button: the file is the API's answer, byte for byte.
    click_css(&b, "#export-link").await;
    let mut file = None;
    for _ in 0..100 {
        file = std::fs::read_dir(b.downloads.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "csv"));
        if file.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file = file.expect("the CSV was downloaded");
    let downloaded = std::fs::read_to_string(&file).unwrap();
    let api = h
        .http
        .get(h.url(&format!("/api/dashboard/export.csv?{query}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(downloaded, api);
    let lines: Vec<&str> = api.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("month,key_id,key_name,node_id,node_name,model,request_count"));
    assert_eq!(lines.len(), 1 + 3, "anonymous m1, anonymous m2, ci-bot m1: {api}");
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    let total: u64 = lines[1..]
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, u(&tokens["total_tokens"]));

    // With a key filter the export holds that key's rows only.
    choose(&b, "key-filter", &key["id"].to_string()).await;
    b.wait(
        "filtered link",
        &format!(
            "return document.getElementById('export-link').href.includes('key_id={}')",
            key["id"]
        ),
    )
    .await;
    let filtered = b
        .js("return fetch(document.getElementById('export-link').href).then(r => r.text())")
        .await;
    let filtered = filtered.as_str().unwrap();
    assert_eq!(
        filtered.split("\r\n").filter(|l| !l.is_empty()).count(),
        2,
        "{filtered}"
    );
    assert!(filtered.contains(",ci-bot,"), "{filtered}");
    b.close().await;
}

#[tokio::test]
async fn speed_and_request_detail_show_the_api_figures_at_390_px_and_by_keyboard() {
    let slow = slow_stream_mock("slow", 5, Duration::from_millis(10)).await;
    let h = Harness::start_with(&[&slow], |a| {
        a.store_bodies = true;
        a.stored_body_max_bytes = 60;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(h.chat_stream(&chat_body("m", "stream me", true)).await.0, 200);
    }
    assert_eq!(h.chat("m", "plain").await.0, 200);
    let b = Browser::start().await;
    b.client.set_window_size(390, 844).await.unwrap();
    sign_in(&b, &h).await;

    // Speed: the table and the chart hold the API's figures.
    b.client.goto(&h.url("/dashboard#/speed")).await.unwrap();
    b.wait(
        "speed rows",
        "return document.querySelectorAll('#speed-table tbody tr').length === 1",
    )
    .await;
    let speed = h.get("/api/dashboard/stats/speed?minutes=60").await;
    let s = &speed["by_node_model"][0];
    let row = format!("#speed-table tr[data-key=\"{}/m\"]", s["node_id"]);
    // The exact value each cell carries (what it shows is rounded).
    let value = |col: usize| {
        let b = &b;
        let row = row.clone();
        async move {
            let v = b
                .js(&format!(
                    "return document.querySelector('{row} td:nth-child({col})').dataset.value"
                ))
                .await;
            v.as_str().unwrap().parse::<f64>().unwrap()
        }
    };
    let f = |key: &str| s[key].as_f64().unwrap_or_else(|| panic!("{key}: {s}"));
    assert_eq!(u(&s["request_count"]), 4);
    for (col, key) in [
        (3, "request_count"),
        (4, "requests_per_minute"),
        (5, "ttft_p50_ms"),
        (6, "ttft_p95_ms"),
        (7, "output_tokens_per_second"),
    ] {
        assert_eq!(value(col).await, f(key), "{key}");
    }
    let chart = b
        .js("const c = Chart.getChart('speed-chart'); return c.data.datasets.map(d => d.data[0]);")
        .await;
    let chart: Vec<f64> = chart.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(
        chart,
        [f("output_tokens_per_second"), f("ttft_p50_ms"), f("ttft_p95_ms")]
    );
    assert_no_overflow(&b, "speed").await;
    b.screenshot("console-speed-narrow").await;
    choose(&b, "speed-window", "5").await;
    b.wait(
        "5-minute window",
        &format!(
            "return document.querySelector('{row} td:nth-child(4)').dataset.value === '{}'",
            4.0 / 5.0
        ),
    )
    .await;

    // Request detail: Tab to the newest row's time, Enter opens the full record.
    b.client.goto(&h.url("/dashboard#/history")).await.unwrap();
    b.wait(
        "history rows",
        "return document.querySelectorAll('#history-table tbody tr').length === 4",
    )
    .await;
    let newest = &h.history().await[0];
    let record = h.get(&format!("/api/dashboard/request-history/{}", newest["id"])).await;
    let open = b
        .client
        .find(Locator::Css(&format!(
            "#history-table tr[data-key=\"{}\"] button[data-action='open']",
            newest["id"]
        )))
        .await
        .unwrap();
    open.send_keys(&Key::Enter.to_string()).await.unwrap();
    b.wait("record dialog", "return document.getElementById('record').open")
        .await;
    for (field, v) in record.as_object().unwrap() {
        let shown = b
            .js(&format!(
                "const e = document.querySelector('#record-fields dd[data-field=\"{field}\"]'); return e ? e.textContent : null;"
            ))
            .await;
        let expect = match v {
            // A stored body: its text, and a note when it was cut.
            Value::Object(body) if body["truncated"] == true => {
                format!(
                    "{}Cut: only the first bytes are stored.",
                    body["text"].as_str().unwrap()
                )
            }
            Value::Object(body) => body["text"].as_str().unwrap().to_string(),
            Value::Null => "–".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(shown, expect, "{field}");
    }
    assert!(record["time_to_first_token_ms"].is_u64(), "{record}");
    // Both bodies were stored, cut at 60 bytes (the node's answer is longer).
    let sent = serde_json::to_string(&chat_body("m", "plain", false)).unwrap();
    assert_eq!(
        record["request_body"],
        json!({"text": &sent[..sent.len().min(60)], "truncated": sent.len() > 60})
    );
    assert_eq!(record["response_body"]["truncated"], true, "{record}");
    assert_eq!(record["response_body"]["text"].as_str().unwrap().len(), 60);
    assert_eq!(record["token_source"], "reported");
    assert_eq!(record["api_key_name"], Value::Null);
    assert_no_overflow(&b, "record").await;
    b.screenshot("console-record-narrow").await;
    b.client
        .find(Locator::Id("record-close"))
        .await
        .unwrap()
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    b.wait("closed", "return !document.getElementById('record').open").await;

    // Every page fits 390 px.
    for page in ["overview", "nodes", "keys", "stats", "history"] {
        b.client.goto(&h.url(&format!("/dashboard#/{page}"))).await.unwrap();
        b.wait(page, &format!("return !document.getElementById('page-{page}').hidden"))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_no_overflow(&b, page).await;
        b.screenshot(&format!("console-{page}-narrow")).await;
    }
    b.close().await;
}
