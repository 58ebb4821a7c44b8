//! The operator's console in a real headless Chromium (DESIGN §15): every action is
//! performed through the page (typing, clicking, confirming), then checked against
//! the API; every figure on screen must equal the API's. Screenshots go to
//! `target/e2e-artifacts/console-*.png`. The usage, speed and request pages are in
//! `console_usage_e2e`.

use fantoccini::key::Key;
use fantoccini::Locator;
use serde_json::{json, Value};

use crate::dashboard_e2e::{choose, sign_in, Browser};
use crate::support::*;

/// Types `text` into the field `id`, replacing what it held.
pub(crate) async fn type_in(b: &Browser, id: &str, text: &str) {
    let field = b.client.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    if !text.is_empty() {
        field.send_keys(text).await.unwrap();
    }
}

pub(crate) async fn click_css(b: &Browser, css: &str) {
    b.click(Locator::Css(css)).await;
}

pub(crate) async fn text_of(b: &Browser, css: &str) -> String {
    let v = b
        .js(&format!(
            "const e = document.querySelector('{css}'); return e ? e.textContent.trim() : null;"
        ))
        .await;
    v.as_str().unwrap_or_else(|| panic!("nothing at {css}")).to_string()
}

pub(crate) async fn open_page(b: &Browser, page: &str) {
    click_css(b, &format!("a[data-page='{page}']")).await;
    b.wait(page, &format!("return !document.getElementById('page-{page}').hidden"))
        .await;
}

/// The live nodes of the API, by name.
async fn api_node(h: &Harness, name: &str) -> Option<Value> {
    h.get("/api/nodes").await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

/// Nothing overflows the page horizontally at the current window size.
pub(crate) async fn assert_no_overflow(b: &Browser, page: &str) {
    let overflow = b
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    if overflow.as_i64().unwrap() > 0 {
        // Name the outermost elements that stick out.
        let wide = b
            .js("const out = (e) => e.getBoundingClientRect().right > window.innerWidth + 1; \
                 return Array.from(document.querySelectorAll('body *')).filter(e => out(e) && !out(e.parentElement)) \
                 .map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))")
            .await;
        b.screenshot(&format!("overflow-{page}")).await;
        panic!("{page} overflows by {overflow}px: {wide}");
    }
}

#[tokio::test]
async fn nodes_are_added_edited_disabled_and_deleted_through_the_page() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let h = Harness::start(&[]).await;
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    open_page(&b, "nodes").await;
    b.wait(
        "empty list",
        "return !document.getElementById('node-list-empty').hidden",
    )
    .await;

    // A bad URL: the API's message next to the URL field, nothing added.
    type_in(&b, "node-add-base_url", "ftp://gpu-1").await;
    click_css(&b, "#node-add-submit").await;
    let msg = b
        .wait(
            "URL error",
            "return document.getElementById('node-add-base_url-error').textContent",
        )
        .await;
    assert!(
        msg.as_str().unwrap().starts_with("invalid parameter 'base_url'"),
        "{msg}"
    );
    assert_eq!(
        b.js("return document.getElementById('node-add-base_url').getAttribute('aria-invalid')")
            .await,
        "true"
    );
    assert_eq!(h.get("/api/nodes").await["nodes"], json!([]));
    b.screenshot("console-node-error").await;

    // Add the node with a name and a key, by keyboard (Enter submits).
    type_in(&b, "node-add-base_url", &a.base_url()).await;
    type_in(&b, "node-add-name", "gpu-a").await;
    type_in(&b, "node-add-api_key", "node-secret").await;
    b.client
        .find(Locator::Id("node-add-api_key"))
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    b.wait(
        "node row",
        "return document.querySelectorAll('#node-list tbody tr').length === 1",
    )
    .await;
    let node = api_node(&h, "gpu-a").await.expect("the node was added");
    assert_eq!(node["base_url"], a.base_url());
    assert_eq!(node["has_api_key"], true);
    assert_eq!(node["status"], "online");
    assert_eq!(node["models"], json!(["m1", "m2"]));
    let id = node["id"].as_i64().unwrap();
    let row = format!("#node-list tr[data-key=\"{id}\"]");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(1)")).await, "gpu-a");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(4)")).await, "online");
    assert_eq!(
        text_of(&b, &format!("{row} td:nth-child(3)")).await,
        "openai (detected)"
    );
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(6)")).await, "no limit");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(7)")).await, "1");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(9)")).await, "m1, m2");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(10)")).await, "–");

    // The same URL again: the conflict is shown at the URL field.
    type_in(&b, "node-add-base_url", &a.base_url()).await;
    click_css(&b, "#node-add-submit").await;
    let msg = b
        .wait(
            "conflict",
            "return document.getElementById('node-add-base_url-error').textContent",
        )
        .await;
    assert!(msg.as_str().unwrap().contains("already exists"), "{msg}");
    type_in(&b, "node-add-base_url", "").await;

    // Edit: a new name, the kind set, a capacity and a weight, usage on streams off.
    click_css(&b, &format!("{row} button[data-action='edit']")).await;
    b.wait("edit dialog", "return document.getElementById('node-edit').open")
        .await;
    assert_eq!(
        b.js("return document.activeElement.id").await,
        "node-edit-name",
        "the dialog takes the focus"
    );
    type_in(&b, "node-edit-name", "gpu-a2").await;
    choose(&b, "node-edit-kind", "vllm").await;
    type_in(&b, "node-edit-max_concurrent", "3").await;
    type_in(&b, "node-edit-weight", "2").await;
    click_css(&b, "#node-edit-include_usage").await;
    b.screenshot("console-node-edit").await;
    click_css(&b, "#node-edit-save").await;
    b.wait("dialog closed", "return !document.getElementById('node-edit').open")
        .await;
    let node = api_node(&h, "gpu-a2").await.expect("renamed");
    assert_eq!(
        (node["kind"].as_str(), node["kind_explicit"].as_bool()),
        (Some("vllm"), Some(true))
    );
    assert_eq!(node["include_usage"], false);
    assert_eq!(
        (node["max_concurrent"].as_u64(), node["weight"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(node["has_api_key"], true, "an empty key field leaves the key");
    b.wait(
        "renamed row",
        &format!("return document.querySelector('{row} td:nth-child(1)').textContent === 'gpu-a2'"),
    )
    .await;
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(3)")).await, "vllm");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(6)")).await, "3");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(7)")).await, "2");
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(8)")).await, "not asked");

    // Edit again: a weight of 0 is refused next to its field; then remove the key and
    // clear the capacity. Then Escape closes the dialog without saving.
    click_css(&b, &format!("{row} button[data-action='edit']")).await;
    b.wait("edit dialog", "return document.getElementById('node-edit').open")
        .await;
    type_in(&b, "node-edit-weight", "0").await;
    click_css(&b, "#node-edit-save").await;
    b.wait(
        "weight error",
        "return document.getElementById('node-edit-weight-error').textContent.includes('weight')",
    )
    .await;
    type_in(&b, "node-edit-weight", "2").await;
    type_in(&b, "node-edit-max_concurrent", "").await;
    click_css(&b, "#node-edit-clear_key").await;
    click_css(&b, "#node-edit-save").await;
    b.wait("dialog closed", "return !document.getElementById('node-edit').open")
        .await;
    let node = api_node(&h, "gpu-a2").await.unwrap();
    assert_eq!(node["has_api_key"], false);
    assert_eq!(
        (node["max_concurrent"].clone(), node["weight"].as_u64()),
        (Value::Null, Some(2))
    );
    click_css(&b, &format!("{row} button[data-action='edit']")).await;
    b.wait("edit dialog", "return document.getElementById('node-edit').open")
        .await;
    type_in(&b, "node-edit-name", "never-saved").await;
    b.client
        .find(Locator::Id("node-edit-name"))
        .await
        .unwrap()
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    b.wait("escape closes", "return !document.getElementById('node-edit').open")
        .await;
    assert!(api_node(&h, "never-saved").await.is_none());

    // Disable from the row; the API and the row agree.
    click_css(&b, &format!("{row} button[data-action='disable']")).await;
    b.wait(
        "disabled row",
        &format!("return document.querySelector('{row} td:nth-child(4)').textContent === 'disabled'"),
    )
    .await;
    assert_eq!(api_node(&h, "gpu-a2").await.unwrap()["enabled"], false);
    assert_eq!(h.chat("m1", "hello").await.0, 503, "a disabled node takes no request");
    click_css(&b, &format!("{row} button[data-action='enable']")).await;
    b.wait(
        "enabled row",
        &format!("return document.querySelector('{row} td:nth-child(5)').textContent === 'yes'"),
    )
    .await;
    assert_eq!(api_node(&h, "gpu-a2").await.unwrap()["enabled"], true);
    assert_eq!(h.chat("m1", "hello").await.0, 200);

    // Delete, after a confirmation; cancelling first deletes nothing.
    click_css(&b, &format!("{row} button[data-action='delete']")).await;
    b.wait("confirmation", "return document.getElementById('confirm').open")
        .await;
    assert_eq!(text_of(&b, "#confirm-title").await, "Delete gpu-a2?");
    b.screenshot("console-node-delete").await;
    click_css(&b, "#confirm-cancel").await;
    b.wait("cancelled", "return !document.getElementById('confirm').open")
        .await;
    assert!(api_node(&h, "gpu-a2").await.is_some());
    click_css(&b, &format!("{row} button[data-action='delete']")).await;
    b.wait("confirmation", "return document.getElementById('confirm').open")
        .await;
    click_css(&b, "#confirm-ok").await;
    b.wait(
        "deleted",
        "return document.querySelectorAll('#node-list tbody tr').length === 0",
    )
    .await;
    assert_eq!(h.get("/api/nodes").await["nodes"], json!([]));
    let gone = h.node(&a.base_url()).await;
    assert_eq!(
        (gone["deleted"].as_bool(), u(&gone["total_requests"])),
        (Some(true), 1),
        "statistics stay"
    );

    b.client.set_window_size(390, 844).await.unwrap();
    assert_no_overflow(&b, "nodes").await;
    b.screenshot("console-nodes-narrow").await;
    b.close().await;
}

#[tokio::test]
async fn keys_are_created_limited_and_revoked_through_the_page_and_its_requests_count_under_it() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    open_page(&b, "keys").await;

    // A bad budget is refused next to its field.
    type_in(&b, "key-add-name", "team-a").await;
    type_in(&b, "key-add-daily_token_budget", "lots").await;
    click_css(&b, "#key-add-submit").await;
    let msg = b
        .wait(
            "budget error",
            "return document.getElementById('key-add-daily_token_budget-error').textContent",
        )
        .await;
    assert!(
        msg.as_str()
            .unwrap()
            .starts_with("invalid parameter 'daily_token_budget'"),
        "{msg}"
    );
    assert_eq!(h.get("/api/keys").await["keys"], json!([]));

    type_in(&b, "key-add-daily_token_budget", "1000").await;
    type_in(&b, "key-add-monthly_token_budget", "20000").await;
    click_css(&b, "#key-add-submit").await;
    b.wait("secret dialog", "return document.getElementById('key-secret').open")
        .await;
    let secret = b.js("return document.getElementById('key-secret-value').value").await;
    let secret = secret.as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-lr-"), "{secret}");
    let warning = text_of(&b, "#key-secret .warning").await;
    assert!(warning.contains("shown this once"), "{warning}");
    click_css(&b, "#key-secret-copy").await;
    b.wait(
        "copied",
        "return document.getElementById('key-secret-copied').textContent",
    )
    .await;
    b.screenshot("console-key-secret").await;
    click_css(&b, "#key-secret-close").await;
    b.wait("dialog closed", "return !document.getElementById('key-secret').open")
        .await;
    // The secret is nowhere in the page any more.
    let found = b
        .js(&format!(
            "const s = '{secret}'; \
             return document.documentElement.outerHTML.includes(s) \
               || Array.from(document.querySelectorAll('input')).some(i => i.value.includes(s)) \
               || JSON.stringify(localStorage).includes(s) || JSON.stringify(sessionStorage).includes(s);"
        ))
        .await;
    assert_eq!(found, false, "the secret stays in the page");

    let keys = h.get("/api/keys").await;
    let key = &keys["keys"][0];
    assert_eq!(key["name"], "team-a");
    assert_eq!(
        (u(&key["daily_token_budget"]), u(&key["monthly_token_budget"])),
        (1000, 20000)
    );
    assert_eq!(key["rpm_limit"], Value::Null);
    let id = key["id"].as_i64().unwrap();
    let row = format!("#key-list tr[data-key=\"{id}\"]");
    b.wait("key row", &format!("return !!document.querySelector('{row}')"))
        .await;
    assert_eq!(
        text_of(&b, &format!("{row} td:nth-child(2)")).await,
        format!("{}…", key["prefix"].as_str().unwrap())
    );
    assert_eq!(text_of(&b, &format!("{row} td:nth-child(3)")).await, "active");

    // A request with the key made in the page counts under it, on screen as in the API.
    let resp = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("m1", "count me under team-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let record = &h.wait_history(1).await[0];
    assert_eq!(
        (record["api_key_id"].as_i64(), record["api_key_name"].as_str()),
        (Some(id), Some("team-a"))
    );
    let used = u(&record["total_tokens"]);
    let dash = h.get("/api/dashboard/keys").await;
    let d = &dash["keys"][0];
    assert_eq!(
        (u(&d["today_tokens"]), u(&d["month_tokens"]), u(&d["total_tokens"])),
        (used, used, used)
    );
    let today = format!("{row} td:nth-child(4) span[data-value]");
    b.wait(
        "usage on screen",
        &format!("return document.querySelector('{today}').dataset.value === '{used}'"),
    )
    .await;
    assert_eq!(b.number(&format!("{row} td:nth-child(5) span[data-value]")).await, used);
    assert_eq!(
        b.number(&format!("{row} td:nth-child(6)")).await,
        u(&d["total_requests"])
    );
    assert_eq!(b.number(&format!("{row} td:nth-child(7)")).await, u(&d["total_tokens"]));
    let meter = b
        .js(&format!(
            "const m = document.querySelector('{row} td:nth-child(4) meter'); return [m.value, m.max];"
        ))
        .await;
    assert_eq!(meter, json!([used, 1000]));
    assert_eq!(
        text_of(&b, &format!("{row} td:nth-child(4) span")).await,
        format!("{used} / 1,000")
    );
    b.screenshot("console-keys").await;

    // Limits: a bad value at its field, then a good one.
    click_css(&b, &format!("{row} button[data-action='edit']")).await;
    b.wait("edit dialog", "return document.getElementById('key-edit').open")
        .await;
    type_in(&b, "key-edit-rpm_limit", "-3").await;
    click_css(&b, "#key-edit-save").await;
    let msg = b
        .wait(
            "rpm error",
            "return document.getElementById('key-edit-rpm_limit-error').textContent",
        )
        .await;
    assert!(
        msg.as_str().unwrap().starts_with("invalid parameter 'rpm_limit'"),
        "{msg}"
    );
    type_in(&b, "key-edit-rpm_limit", "30").await;
    type_in(&b, "key-edit-daily_token_budget", "5000").await;
    type_in(&b, "key-edit-monthly_token_budget", "").await;
    type_in(&b, "key-edit-allowed_models", "m1, m9").await;
    click_css(&b, "#key-edit-save").await;
    b.wait("dialog closed", "return !document.getElementById('key-edit').open")
        .await;
    let k = h.get(&format!("/api/keys/{id}")).await;
    assert_eq!(u(&k["rpm_limit"]), 30);
    assert_eq!(u(&k["daily_token_budget"]), 5000);
    assert_eq!(
        k["monthly_token_budget"],
        Value::Null,
        "an emptied field clears the budget"
    );
    assert_eq!(k["allowed_models"], json!(["m1", "m9"]));
    b.wait(
        "new budget on screen",
        &format!("return document.querySelector('{row} td:nth-child(4) meter').max === 5000"),
    )
    .await;

    // Disable: the key is refused; enable again.
    let with_key = || {
        h.http
            .post(h.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("m1", "again", false))
            .send()
    };
    click_css(&b, &format!("{row} button[data-action='disable']")).await;
    b.wait(
        "disabled",
        &format!("return document.querySelector('{row} td:nth-child(3)').textContent === 'disabled'"),
    )
    .await;
    assert_eq!(h.get(&format!("/api/keys/{id}")).await["enabled"], false);
    assert_eq!(with_key().await.unwrap().status(), 401);
    click_css(&b, &format!("{row} button[data-action='enable']")).await;
    b.wait(
        "enabled",
        &format!("return document.querySelector('{row} td:nth-child(3)').textContent === 'active'"),
    )
    .await;
    assert_eq!(with_key().await.unwrap().status(), 200);

    // Revoke, after a confirmation.
    click_css(&b, &format!("{row} button[data-action='revoke']")).await;
    b.wait("confirmation", "return document.getElementById('confirm').open")
        .await;
    assert_eq!(text_of(&b, "#confirm-title").await, "Revoke team-a?");
    click_css(&b, "#confirm-ok").await;
    b.wait(
        "revoked",
        &format!("return document.querySelector('{row} td:nth-child(3)').textContent === 'revoked'"),
    )
    .await;
    assert_eq!(h.get(&format!("/api/keys/{id}")).await["revoked"], true);
    assert_eq!(with_key().await.unwrap().status(), 401);
    assert_eq!(
        b.js(&format!("return document.querySelectorAll('{row} button').length"))
            .await,
        0,
        "a revoked key has no action left"
    );

    // Usage page: the key filter and the by-key table show the API's figures.
    h.chat("m1", "an anonymous request").await;
    open_page(&b, "stats").await;
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    for k in tokens["by_key"].as_array().unwrap() {
        let key = k["key_id"]
            .as_i64()
            .map(|i| i.to_string())
            .unwrap_or("anonymous".into());
        let r = format!("#by-key tr[data-key=\"{key}\"]");
        b.wait("by-key row", &format!("return !!document.querySelector('{r}')"))
            .await;
        assert_eq!(
            text_of(&b, &format!("{r} td:nth-child(1)")).await,
            k["key_name"].as_str().unwrap()
        );
        assert_eq!(b.number(&format!("{r} td:nth-child(2)")).await, u(&k["request_count"]));
        assert_eq!(b.number(&format!("{r} td:nth-child(5)")).await, u(&k["total_tokens"]));
    }
    choose(&b, "key-filter", &id.to_string()).await;
    let mine = h.get(&format!("/api/dashboard/stats/tokens?key_id={id}")).await;
    let expect = json!([u(&mine["total_input_tokens"]), u(&mine["total_output_tokens"])]);
    b.wait(
        "key-filtered chart",
        &format!(
            "const c = Chart.getChart('daily-chart'); \
             return JSON.stringify(c.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0))) === '{expect}';"
        ),
    )
    .await;
    b.screenshot("console-usage-by-key").await;
    b.close().await;
}
