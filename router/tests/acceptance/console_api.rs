//! The operator's console, API side (DESIGN §15): the usage export, the speed figures,
//! and the safety of the cookie session (cross-site writes, the Content-Security-Policy,
//! one answer to every wrong admin key, slowed repeated attempts).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};
use reqwest::header::{HeaderMap, COOKIE, ORIGIN, REFERER};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

fn record(
    at: &str,
    key: Option<(i64, &str)>,
    node_id: i64,
    model: &str,
    input: u64,
    output: u64,
) -> RequestResponseRecord {
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
        api_key_id: key.map(|k| k.0),
        api_key_name: key.map(|k| k.1.to_string()),
        stream: false,
        status: RequestStatus::Success,
        http_status: 200,
        error_message: None,
        duration_ms: 10,
        time_to_first_token_ms: Some(3),
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        token_source: TokenSource::Reported,
        request_body: None,
        response_body: None,
    }
}

async fn csv(h: &Harness, query: &str) -> (u16, String, HeaderMap) {
    let resp = h
        .http
        .get(h.url(&format!("/api/dashboard/export.csv?{query}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.unwrap(), headers)
}

/// The fields of one CSV line (RFC 4180 quoting; no line breaks inside fields here).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// The rows of a CSV export as maps of column → value.
fn rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let header = fields(lines.next().unwrap());
    lines
        .map(|l| {
            let cells = fields(l);
            assert_eq!(cells.len(), header.len(), "{l}");
            header.iter().cloned().zip(cells).collect()
        })
        .collect()
}

fn n(row: &BTreeMap<String, String>, col: &str) -> u64 {
    row[col].parse().unwrap_or_else(|_| panic!("{col} in {row:?}"))
}

#[tokio::test]
async fn the_usage_export_splits_each_day_and_month_by_key_node_and_model_with_the_api_figures() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m"]).await;
    let h = Harness::start(&[&a, &b]).await;
    let (_, team) = h
        .admin(Method::POST, "/api/keys", Some(json!({"name": "team, \"a\""})))
        .await;
    let team_id = team["id"].as_i64().unwrap();
    // Tokyo is UTC+9: 2026-03-31T15:00Z is April 1st there.
    let records = [
        record("2026-03-30T10:00:00Z", Some((team_id, "x")), 1, "m", 10, 5),
        record("2026-03-30T11:00:00Z", Some((team_id, "x")), 1, "m", 20, 5),
        record("2026-03-30T12:00:00Z", None, 1, "m", 1, 1),
        record("2026-03-30T12:30:00Z", None, 2, "m", 100, 50),
        record("2026-03-30T14:59:59Z", None, 2, "x", 3, 0),
        record("2026-03-31T15:00:00Z", Some((team_id, "x")), 2, "m", 7, 7),
    ];
    h.router
        .state
        .store
        .writer()
        .unwrap()
        .commit(&records, llm_router::store::LockWait::Patient)
        .unwrap();

    let (status, text, headers) = csv(&h, "group=day&from=2026-03-30&to=2026-04-01&tz=Asia/Tokyo").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename="));
    let expect = format!(
        "date,key_id,key_name,node_id,node_name,model,request_count,success_count,error_count,\
         cancelled_count,estimated_count,input_tokens,output_tokens,total_tokens\r\n\
         2026-03-30,,anonymous,1,{a},m,1,1,0,0,0,1,1,2\r\n\
         2026-03-30,,anonymous,2,{b},m,1,1,0,0,0,100,50,150\r\n\
         2026-03-30,,anonymous,2,{b},x,1,1,0,0,0,3,0,3\r\n\
         2026-03-30,{team_id},\"team, \"\"a\"\"\",1,{a},m,2,2,0,0,0,30,10,40\r\n\
         2026-04-01,{team_id},\"team, \"\"a\"\"\",2,{b},m,1,1,0,0,0,7,7,14\r\n",
        a = a.base_url().trim_start_matches("http://"),
        b = b.base_url().trim_start_matches("http://"),
    );
    assert_eq!(text, expect);

    // Every day's rows sum to the daily series of the same zone; per key too.
    for tz in ["UTC", "Asia/Tokyo", "America/Los_Angeles"] {
        for (key_filter, key_col) in [("", None), ("&key_id=anonymous", Some("")), ("&key_id=1", Some("1"))] {
            let q = format!("from=2026-03-29&to=2026-04-02&tz={tz}{key_filter}");
            let (_, text, _) = csv(&h, &format!("group=day&{q}")).await;
            let exported = rows(&text);
            if let Some(k) = key_col {
                assert!(exported.iter().all(|r| r["key_id"] == k), "{text}");
            }
            let daily = h.get(&format!("/api/dashboard/stats/tokens/daily?{q}")).await;
            for day in daily["days"].as_array().unwrap() {
                let of_day: Vec<_> = exported.iter().filter(|r| r["date"] == day["date"]).collect();
                for col in ["request_count", "input_tokens", "output_tokens", "total_tokens"] {
                    assert_eq!(
                        of_day.iter().map(|r| n(r, col)).sum::<u64>(),
                        u(&day[col]),
                        "{tz} {q} {day}"
                    );
                }
            }
        }
        let (_, text, _) = csv(&h, &format!("group=month&from=2026-02&to=2026-04&tz={tz}")).await;
        let exported = rows(&text);
        let monthly = h
            .get(&format!(
                "/api/dashboard/stats/tokens/monthly?from=2026-02&to=2026-04&tz={tz}"
            ))
            .await;
        for month in monthly["months"].as_array().unwrap() {
            let total: u64 = exported
                .iter()
                .filter(|r| r["month"] == month["month"])
                .map(|r| n(r, "total_tokens"))
                .sum();
            assert_eq!(total, u(&month["total_tokens"]), "{tz} {month}");
        }
    }
    // By key over everything equals the by_key of /stats/tokens.
    let (_, text, _) = csv(&h, "group=month&from=2026-01&to=2026-12").await;
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    for k in tokens["by_key"].as_array().unwrap() {
        let id = k["key_id"].as_i64().map(|i| i.to_string()).unwrap_or_default();
        let total: u64 = rows(&text)
            .iter()
            .filter(|r| r["key_id"] == id)
            .map(|r| n(r, "total_tokens"))
            .sum();
        assert_eq!(total, u(&k["total_tokens"]), "{k}");
    }
    assert_eq!(rows(&text).iter().filter(|r| r["key_name"] == "team, \"a\"").count(), 2);

    for (query, param) in [
        ("group=week", "group"),
        ("group=month&from=2026-03-01", "from"),
        ("from=2026-03", "from"),
        ("tz=Mars/Base", "tz"),
        ("key_id=x", "key_id"),
        ("from=2026-04-02&to=2026-04-01", "from"),
    ] {
        let (status, text, _) = csv(&h, query).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            text.contains(&format!("invalid parameter '{param}'")),
            "{query}: {text}"
        );
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p).div_ceil(100) - 1]
}

fn histogram_count(metrics: &str, family: &str, labels: &str) -> u64 {
    let line = format!("{family}_count{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn speed_per_node_and_model_comes_from_the_history_agrees_with_metrics_and_survives_a_restart() {
    let slow = slow_stream_mock("slow", 6, Duration::from_millis(15)).await;
    let h = Harness::start(&[&slow]).await;
    for _ in 0..4 {
        assert_eq!(h.chat_stream(&chat_body("m", "count these words", true)).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(h.chat("m", "plain answer").await.0, 200);
    }
    let records = h.wait_history(6).await;
    let speed = h.get("/api/dashboard/stats/speed?minutes=15").await;
    assert_eq!(speed["window_minutes"], 15);
    let rows = speed["by_node_model"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{speed}");
    let s = &rows[0];
    assert_eq!(s["model"], "m");
    assert_eq!(u(&s["request_count"]), 6);
    assert_eq!(u(&s["success_count"]), 6);
    assert_eq!(s["requests_per_minute"].as_f64().unwrap(), 6.0 / 15.0);

    let mut ttft: Vec<u64> = records.iter().map(|r| u(&r["time_to_first_token_ms"])).collect();
    ttft.sort_unstable();
    assert_eq!(u(&s["ttft_count"]), 6);
    assert_eq!(u(&s["ttft_p50_ms"]), percentile(&ttft, 50));
    assert_eq!(u(&s["ttft_p95_ms"]), percentile(&ttft, 95));
    let streamed: Vec<&Value> = records.iter().filter(|r| r["stream"] == true).collect();
    assert_eq!(streamed.len(), 4);
    let gen_tokens: u64 = streamed.iter().map(|r| u(&r["output_tokens"])).sum();
    let gen_ms: u64 = streamed
        .iter()
        .map(|r| u(&r["duration_ms"]) - u(&r["time_to_first_token_ms"]))
        .sum();
    // Six chunks 15 ms apart: the first token comes well before the end.
    assert!(gen_ms >= 4 * 60, "{gen_ms}");
    assert_eq!(u(&s["generation_count"]), 4);
    assert_eq!(u(&s["generation_output_tokens"]), gen_tokens);
    assert_eq!(u(&s["generation_ms"]), gen_ms);
    // Equal to the last bits of a double (the division may be done in another order).
    let rate = s["output_tokens_per_second"].as_f64().unwrap();
    let expected = gen_tokens as f64 * 1000.0 / gen_ms as f64;
    assert!((rate - expected).abs() <= expected * 1e-12, "{rate} vs {expected}");

    // The same observations as the Prometheus histogram.
    let node_id = s["node_id"].as_i64().unwrap();
    let labels = format!(
        "node_id=\"{node_id}\",node=\"{}\",model=\"m\"",
        s["node_name"].as_str().unwrap()
    );
    let metrics = h.metrics().await;
    assert_eq!(
        histogram_count(&metrics, "llm_router_time_to_first_token_seconds", &labels),
        u(&s["ttft_count"])
    );

    let h = h.restart().await;
    let after = h.get("/api/dashboard/stats/speed?minutes=15").await;
    assert_eq!(
        after["by_node_model"], speed["by_node_model"],
        "same figures after a restart"
    );

    for bad in ["minutes=0", "minutes=10081", "minutes=soon"] {
        let (status, body) = h
            .admin(Method::GET, &format!("/api/dashboard/stats/speed?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("'minutes'"),
            "{body}"
        );
    }
}

/// Logs in and returns the session cookie (`name=value`).
async fn session_cookie(h: &Harness) -> String {
    let resp = h.post("/dashboard/login", &json!({"key": ADMIN_KEY})).await;
    assert_eq!(resp.status(), 204);
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("SameSite=Strict") && set.contains("HttpOnly"), "{set}");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn a_write_with_the_session_cookie_from_another_site_is_refused() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let cookie = session_cookie(&h).await;
    let own = h.router.base_url();
    let write = |origin: Option<(&'static str, String)>, bearer: bool, name: &'static str| {
        let mut req = h.http.post(h.url("/api/keys")).json(&json!({"name": name}));
        if bearer {
            req = req.bearer_auth(ADMIN_KEY);
        } else {
            req = req.header(COOKIE, cookie.clone());
        }
        if let Some((header, value)) = origin {
            req = req.header(header, value);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (origin, why) in [
        (
            Some((ORIGIN.as_str(), "http://evil.example".to_string())),
            "another origin",
        ),
        (Some((ORIGIN.as_str(), "null".to_string())), "an opaque origin"),
        (
            Some((REFERER.as_str(), "http://evil.example/page".to_string())),
            "another site's page",
        ),
        (None, "neither Origin nor Referer"),
    ] {
        let (status, body) = write(origin, false, "forged").await;
        assert_eq!(status, 403, "{why}: {body}");
        assert_eq!(body["error"]["code"], "cross_site_request", "{why}");
    }
    // PATCH and DELETE too.
    let (_, key) = h.admin(Method::POST, "/api/keys", Some(json!({"name": "k"}))).await;
    let path = format!("/api/keys/{}", key["id"]);
    for method in [Method::PATCH, Method::DELETE] {
        let resp = h
            .http
            .request(method.clone(), h.url(&path))
            .header(COOKIE, cookie.clone())
            .header(ORIGIN, "http://evil.example")
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{method}");
    }
    let k = h.get(&path).await;
    assert_eq!(
        (k["enabled"].as_bool(), k["revoked"].as_bool()),
        (Some(true), Some(false))
    );
    let names: Vec<Value> = h.get("/api/keys").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, [json!("k")], "no forged key was created");

    // From the dashboard's own origin (Origin, or Referer alone), and with the bearer key.
    assert_eq!(
        write(Some((ORIGIN.as_str(), own.clone())), false, "same origin")
            .await
            .0,
        201
    );
    assert_eq!(
        write(
            Some((REFERER.as_str(), format!("{own}/dashboard#/keys"))),
            false,
            "same page"
        )
        .await
        .0,
        201
    );
    assert_eq!(
        write(Some((ORIGIN.as_str(), "http://evil.example".into())), true, "bearer")
            .await
            .0,
        201
    );
    // Reads with the cookie are not writes.
    let resp = h
        .http
        .get(h.url("/api/keys"))
        .header(COOKIE, cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The login itself refuses a form posted from another site.
    let resp = h
        .http
        .post(h.url("/dashboard/login"))
        .header(ORIGIN, "http://evil.example")
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn the_dashboard_sends_a_content_security_policy_without_inline_script_or_style() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let page = h.http.get(h.url("/dashboard")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert_eq!(csp, llm_router::dashboard::CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // Every script has a src (nothing inline); no style attribute or element, no on* handler.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/dashboard/js/").count()
    );
    assert!(!html.contains("style="), "inline style");
    assert!(!html.contains("<style"), "style element");
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload="),
        "inline handler"
    );
    for src in html
        .split("<script src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
    {
        let resp = h.http.get(h.url(src)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{src}");
        assert_eq!(resp.headers()["content-type"], "text/javascript");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("eval(") || src.contains("chart"), "{src} uses eval");
    }
    let css = h.http.get(h.url("/dashboard/app.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);
    assert_eq!(
        h.http
            .get(h.url("/dashboard/js/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

async fn login_answer(client: &reqwest::Client, url: &str, body: reqwest::Body) -> (u16, Option<String>, String) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_wrong_admin_key_gets_one_answer_whatever_it_is_and_repeated_ones_are_slowed() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let url = h.url("/dashboard/login");
    let wrong: [reqwest::Body; 5] = [
        json!({"key": ""}).to_string().into(),
        json!({"key": &ADMIN_KEY[..4]}).to_string().into(),
        json!({"key": format!("{ADMIN_KEY}x")}).to_string().into(),
        json!({"key": "x".repeat(5000)}).to_string().into(),
        "not json".into(),
    ];
    let mut answers = Vec::new();
    for body in wrong {
        answers.push(login_answer(&h.http, &url, body).await);
    }
    assert_eq!(answers[0].0, 401);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");

    // The sixth attempt from this address waits, whatever the key: even the right one.
    let right = || reqwest::Body::from(json!({"key": ADMIN_KEY}).to_string());
    let (status, retry, body) = login_answer(&h.http, &url, right()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    let (status, _, _) = login_answer(&h.http, &url, json!({"key": "guess"}).to_string().into()).await;
    assert_eq!(status, 429);

    // Another address is not slowed.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(login_answer(&other, &url, right()).await.0, 204);

    // Once the wait is over, the right key signs in (and clears the address).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login_answer(&h.http, &url, right()).await.0, 204);
    assert_eq!(login_answer(&h.http, &url, "{}".into()).await.0, 401);
}
