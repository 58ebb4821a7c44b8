//! Client keys through the real router: the admin API, authentication, every limit at
//! its boundary, budgets across a local midnight and a restart, and the figures per
//! key against the records.

use std::time::Duration;

use chrono::{Days, TimeZone, Utc};
use chrono_tz::Tz;
use llm_router::keys::ClientAuth;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn keys_are_created_shown_once_changed_and_revoked() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (s, created) = h
        .admin(
            Method::POST,
            "/api/keys",
            Some(json!({"name": "alice", "rpm_limit": 10, "allowed_models": ["m"], "budget_tz": "Europe/Paris"})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("sk-lr-") && secret.len() >= 6 + 32, "{secret}");
    assert_eq!(created["prefix"], secret[..12]);
    assert_eq!(created["rpm_limit"], 10);
    assert_eq!(created["tpm_limit"], Value::Null);
    assert_eq!(created["allowed_models"], json!(["m"]));
    assert_eq!(created["budget_tz"], "Europe/Paris");
    assert_eq!(
        (created["enabled"].clone(), created["revoked"].clone()),
        (json!(true), json!(false))
    );
    let id = created["id"].as_i64().unwrap();

    // The secret is never shown again.
    let list = h.get("/api/keys").await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));
    let one = h.get(&format!("/api/keys/{id}")).await;
    assert!(one.get("key").is_none());
    assert_eq!(one["name"], "alice");

    // PATCH: absent leaves a field, null clears it.
    let (s, v) = h
        .admin(
            Method::PATCH,
            &format!("/api/keys/{id}"),
            Some(json!({"name": "alice-2", "rpm_limit": null, "daily_token_budget": 500})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["name"].clone(),
            v["rpm_limit"].clone(),
            v["daily_token_budget"].clone(),
            v["allowed_models"].clone()
        ),
        (json!("alice-2"), Value::Null, json!(500), json!(["m"]))
    );

    // DELETE revokes: the row stays.
    let (s, _) = h.admin(Method::DELETE, &format!("/api/keys/{id}"), None).await;
    assert_eq!(s, 204);
    let v = h.get(&format!("/api/keys/{id}")).await;
    assert_eq!(v["revoked"], true);
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"name": "x"}));
        let (s, v) = h.admin(method.clone(), "/api/keys/999", body).await;
        assert_eq!(s, 404, "{method} {v}");
    }
    let (s, v) = h.admin(Method::GET, "/api/keys/abc", None).await;
    assert_eq!(
        (s, v["error"]["message"].as_str().unwrap().contains("'id'")),
        (400, true)
    );
    // Without the admin key: 401, the client key included.
    let resp = h.http.get(h.url("/api/keys")).bearer_auth(secret).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn bad_key_fields_are_refused_naming_the_field() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let long = "x".repeat(200);
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": long}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "a", "rpm_limit": -1}), "rpm_limit"),
        (json!({"name": "a", "tpm_limit": 1.5}), "tpm_limit"),
        (json!({"name": "a", "max_concurrent": "3"}), "max_concurrent"),
        (json!({"name": "a", "daily_token_budget": true}), "daily_token_budget"),
        (json!({"name": "a", "monthly_token_budget": -5}), "monthly_token_budget"),
        (json!({"name": "a", "budget_tz": "Mars/Olympus"}), "budget_tz"),
        (json!({"name": "a", "budget_tz": 3}), "budget_tz"),
        (json!({"name": "a", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"name": "a", "expires_at": 1700000000}), "expires_at"),
        (json!({"name": "a", "allowed_models": "m"}), "allowed_models"),
        (json!({"name": "a", "allowed_models": [1]}), "allowed_models"),
        (json!({"name": "a", "enabled": "yes"}), "enabled"),
        (json!({"name": "a", "rpm_limt": 3}), "rpm_limt"),
    ];
    for (body, field) in cases {
        let (s, v) = h.admin(Method::POST, "/api/keys", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (s, v) = h
        .http
        .post(h.url("/api/keys"))
        .bearer_auth(ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(s, 400, "{:?}", v.text().await);
    // A 100-character name is accepted; nothing of the refused ones was created.
    create_key(&h, json!({"name": "y".repeat(100)})).await;
    assert_eq!(h.get("/api/keys").await["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn required_auth_refuses_before_any_node_and_open_auth_serves_anonymous() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.client_auth = ClientAuth::Required).await;
    let (_, key) = create_key(&h, json!({"name": "ci"})).await;
    for presented in [
        None,
        Some("sk-placeholder"),
        Some("sk-lr-unknownunknownunknownunknownunknown"),
    ] {
        let (s, _, v) = keyed_chat(&h, presented, "m").await;
        assert_eq!((s, code(&v)), (401, "invalid_api_key"), "{presented:?}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let resp = h.http.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(a.received().is_empty(), "a refused request reached the node");
    let (s, _, _) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!(s, 200);
    // x-api-key works as well, and neither header reaches the node.
    let resp = h
        .http
        .post(h.url("/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&chat_body("m", "one two", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let received = a.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert!(r.headers.get("authorization").is_none() && r.headers.get("x-api-key").is_none());
    }

    // Open: no key or a placeholder is anonymous; a known key is attributed.
    let b = mock("beta", &["m"]).await;
    let h = Harness::start(&[&b]).await;
    let (id, key) = create_key(&h, json!({"name": "alice"})).await;
    for presented in [None, Some("sk-placeholder"), Some(key.as_str())] {
        let (s, _, v) = keyed_chat(&h, presented, "m").await;
        assert_eq!(s, 200, "{presented:?}: {v}");
    }
    let history = h.wait_history(3).await;
    let keys: Vec<Value> = history.iter().map(|r| r["api_key_id"].clone()).collect();
    assert_eq!(keys, [json!(id), Value::Null, Value::Null]);
    assert_eq!(history[0]["api_key_name"], "alice");

    // Disabled, revoked and expired keys are refused at once, even when open.
    let (s, _) = h
        .admin(
            Method::PATCH,
            &format!("/api/keys/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (401, "invalid_api_key"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("disabled"));
    h.admin(
        Method::PATCH,
        &format!("/api/keys/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    h.admin(Method::DELETE, &format!("/api/keys/{id}"), None).await;
    let (s, _, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (401, "invalid_api_key"));
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    let (_, expired) = create_key(&h, json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"})).await;
    let (s, _, v) = keyed_chat(&h, Some(&expired), "m").await;
    assert_eq!((s, code(&v)), (401, "invalid_api_key"));
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    assert_eq!(b.received().len(), 4);
}

#[tokio::test]
async fn the_fourth_request_of_an_rpm_limit_of_three_is_refused() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (_, key) = create_key(&h, json!({"name": "ci-bot", "rpm_limit": 3, "tpm_limit": 1000})).await;
    for remaining in [2, 1, 0] {
        let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(header(&headers, "x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            Some(remaining.to_string())
        );
        assert_eq!(header(&headers, "x-ratelimit-limit-tokens").as_deref(), Some("1000"));
    }
    let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (429, "rate_limit_exceeded"), "{v}");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(a.received().len(), 3);
    // Two earlier requests of 7 tokens: the token window shows them.
    let (_, other) = create_key(&h, json!({"name": "other", "tpm_limit": 100})).await;
    let (_, headers, _) = keyed_chat(&h, Some(&other), "m").await;
    assert_eq!(header(&headers, "x-ratelimit-remaining-tokens").as_deref(), Some("100"));
    let (_, headers, _) = keyed_chat(&h, Some(&other), "m").await;
    assert_eq!(header(&headers, "x-ratelimit-remaining-tokens").as_deref(), Some("93"));
    // Anonymous answers carry no rate-limit headers.
    let (_, headers, _) = keyed_chat(&h, None, "m").await;
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), None);
}

#[tokio::test]
async fn token_and_concurrency_limits_and_allowed_models() {
    let a = slow_stream_mock("alpha", 10, Duration::from_millis(40)).await;
    let b = mock("beta", &["other"]).await;
    let h = Harness::start(&[&a, &b]).await;
    // tpm: a request of 2 + 10 tokens reaches a limit of 12; the next is refused.
    let (_, key) = create_key(&h, json!({"name": "t", "tpm_limit": 12})).await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (429, "rate_limit_exceeded"), "{v}");
    assert_eq!(v["error"]["type"], "tokens");
    assert!(header(&headers, "retry-after").is_some());

    // A monthly budget of 12 tokens: the request that reaches it is served, the next is not.
    let (_, key) = create_key(&h, json!({"name": "mb", "monthly_token_budget": 12})).await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (429, "insufficient_quota"), "{v}");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "{retry}");

    // max_concurrent 1: a second request while a stream is open is refused.
    let (_, key) = create_key(&h, json!({"name": "c", "max_concurrent": 1})).await;
    let resp = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("m", "one two", true))
        .send()
        .await
        .unwrap();
    let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (429, "rate_limit_exceeded"), "{v}");
    assert_eq!(header(&headers, "retry-after").as_deref(), Some("1"));
    resp.bytes().await.unwrap();
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);

    // allowed_models: 403, and /v1/models shows only the allowed ones.
    let (_, key) = create_key(&h, json!({"name": "m-only", "allowed_models": ["m"]})).await;
    let (s, _, v) = keyed_chat(&h, Some(&key), "other").await;
    assert_eq!((s, code(&v)), (403, "model_not_allowed"), "{v}");
    let history = h.wait_history(8).await;
    assert_eq!(
        (history[0]["http_status"].clone(), history[0]["api_key_name"].clone()),
        (json!(403), json!("m-only"))
    );
    let models = |k: Option<String>| {
        let mut req = h.http.get(h.url("/v1/models"));
        if let Some(k) = k {
            req = req.bearer_auth(k);
        }
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(models(Some(key)).await, [json!("m")]);
    assert_eq!(models(None).await, [json!("m"), json!("other")]);
    // Refused requests reached no node and count in no token figure.
    assert_eq!(b.received().len(), 0);
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    assert_eq!(u(&tokens["request_count"]), 4);
}

/// Seconds from now to the next midnight in `tz`, minus `before`.
fn offset_to_midnight(tz: Tz, before: i64) -> i64 {
    let now = Utc::now();
    let tomorrow = now.with_timezone(&tz).date_naive() + Days::new(1);
    let midnight = tz
        .from_local_datetime(&tomorrow.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap();
    (midnight.with_timezone(&Utc) - now).num_seconds() - before
}

#[tokio::test]
async fn a_daily_budget_holds_until_local_midnight_and_through_a_restart() {
    let a = mock("alpha", &["m"]).await;
    let tz: Tz = "Asia/Tokyo".parse().unwrap();
    // The router's clock is 4 s before midnight in Tokyo (not in UTC: +9 h).
    let offset = offset_to_midnight(tz, 4);
    let h = Harness::start_with(&[&a], |args| args.clock_offset_secs = offset).await;
    let (id, key) = create_key(
        &h,
        json!({"name": "ci-bot", "daily_token_budget": 14, "budget_tz": "Asia/Tokyo"}),
    )
    .await;
    // 7 tokens each: the second request reaches the budget, the third is refused.
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let h = h.restart().await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let (s, headers, v) = keyed_chat(&h, Some(&key), "m").await;
    assert_eq!((s, code(&v)), (429, "insufficient_quota"), "{v}");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry), "{retry}");
    let mine = h.get("/api/dashboard/keys").await["keys"][0].clone();
    assert_eq!((u(&mine["today_tokens"]), u(&mine["total_tokens"])), (14, 14));
    // Past midnight in Tokyo: a new day, a new budget.
    tokio::time::sleep(Duration::from_secs(retry + 1)).await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let mine = h.get("/api/dashboard/keys").await["keys"][0].clone();
    assert_eq!((u(&mine["today_tokens"]), u(&mine["total_tokens"])), (7, 21));
    assert_eq!(mine["id"], id);
    // The key's daily series in its zone: 14 on the day before midnight, 7 after.
    let day = (Utc::now() + chrono::Duration::seconds(offset - 10))
        .with_timezone(&tz)
        .date_naive();
    let days = h
        .get(&format!(
            "/api/dashboard/stats/tokens/daily?from={day}&to={}&tz=Asia/Tokyo&key_id={id}",
            day + Days::new(1)
        ))
        .await;
    let figures: Vec<u64> = days["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| u(&d["total_tokens"]))
        .collect();
    assert_eq!(figures, [14, 7]);
    assert_eq!(a.received().len(), 3);
}

#[tokio::test]
async fn a_copy_of_the_database_holds_no_secret() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (_, key) = create_key(&h, json!({"name": "leaky"})).await;
    assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    let dir = h.dir.path().to_path_buf();
    // The random part of the secret, beyond the prefix shown in lists.
    let hidden = key[12..].to_string();
    if postgres_server().is_some() {
        // Everything the database holds, as a dump.
        let dump = std::process::Command::new("pg_dump")
            .arg(h.database_url())
            .output()
            .unwrap();
        assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("leaky"), "the dump holds the key's row");
        assert!(!dump.contains(&hidden), "the dump holds the secret");
        assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
        return;
    }
    // Before and after a restart (the WAL, then the database file).
    for h in [h.restart().await] {
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("router.db") {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                // The random part of the secret, beyond the prefix shown in lists.
                let hidden = &key.as_bytes()[12..];
                assert!(
                    !bytes.windows(hidden.len()).any(|w| w == hidden),
                    "{name} holds the secret"
                );
            }
        }
        assert!(files >= 1);
        // The key still works: what is stored is enough to recognise it.
        assert_eq!(keyed_chat(&h, Some(&key), "m").await.0, 200);
    }
}

#[tokio::test]
async fn the_openai_python_sdk_uses_a_key_and_hits_its_limit() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.client_auth = ClientAuth::Required).await;
    let (id, key) = create_key(&h, json!({"name": "sdk", "rpm_limit": 2})).await;
    let base = h.router.base_url();
    let script = format!(
        r#"
import openai
c = openai.OpenAI(base_url="{base}/v1", api_key="{key}", max_retries=0)
r = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "one two"}}])
print(r.usage.total_tokens)
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "x"}}], stream=True) if ch.choices]
print(len(parts))  # the role chunk and five content chunks
try:
    c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "x"}}])
except openai.RateLimitError as e:
    print("429", e.code)
try:
    openai.OpenAI(base_url="{base}/v1", api_key="sk-wrong", max_retries=0).models.list()
except openai.AuthenticationError as e:
    print("401", e.code)
"#
    );
    assert_eq!(
        python(&script).await,
        "7\n6\n429 rate_limit_exceeded\n401 invalid_api_key\n"
    );
    let tokens = h.get(&format!("/api/dashboard/stats/tokens?key_id={id}")).await;
    assert_eq!(u(&tokens["request_count"]), 2);
    assert_eq!(a.received().len(), 2);
}
