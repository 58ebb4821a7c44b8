//! The web dashboard in a real headless Chromium (Debian `chromium` + `chromium-driver`,
//! driven over WebDriver with `fantoccini`): after a known workload through the proxy,
//! the figures on screen must equal the API's. A missing browser fails these tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::*;

pub(crate) struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    /// Where the browser saves downloads.
    pub downloads: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver must be installed (Debian package chromium-driver)");
        let profile = tempfile::TempDir::new().unwrap();
        let downloads = tempfile::TempDir::new().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "prefs": {
                    "download.default_directory": downloads.path().display().to_string(),
                    "download.prompt_for_download": false,
                },
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run", "--disable-component-update",
                    "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display())]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let mut last_err = None;
        for _ in 0..50 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                        downloads,
                    }
                }
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot start Chromium through chromedriver: {last_err:?}");
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Polls `script` until it returns something truthy (10 s at most).
    pub async fn wait(&self, what: &str, script: &str) -> Value {
        for _ in 0..200 {
            let v = self.js(script).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.screenshot(&format!("timeout-{}", what.replace(' ', "-"))).await;
        panic!("timed out waiting for {what}");
    }

    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Clicks the element `locator` finds. The page re-renders its lists on every
    /// refresh, so the element found may be replaced before the click lands: the
    /// driver then refuses the click as stale (nothing was clicked) and the element
    /// is found again.
    pub async fn click(&self, locator: Locator<'_>) {
        for _ in 0..50 {
            let element = self.client.find(locator).await.unwrap();
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("click {locator:?}: {e}"),
            }
        }
        panic!("click {locator:?}: the element was replaced 50 times in a row");
    }

    pub async fn number(&self, selector: &str) -> u64 {
        let v = self
            .js(&format!(
                "const e = document.querySelector('{selector}'); return e ? e.dataset.value : null;"
            ))
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no figure at {selector}"))
            .parse()
            .unwrap()
    }

    pub async fn close(mut self) {
        let errors = self.js("return window.__dashboardErrors").await;
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
        assert_eq!(errors, json!([]), "the page raised errors");
    }
}

async fn workload(h: &Harness) {
    for _ in 0..3 {
        assert_eq!(h.chat("m1", "the quick brown fox").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            h.chat_stream(&chat_body("m2", "jumps over the lazy dog", true)).await.0,
            200
        );
    }
    assert_eq!(h.chat("m3", "this fails").await.0, 500);
}

/// Opens the dashboard and submits `key` in the login form.
pub(crate) async fn submit_key(b: &Browser, h: &Harness, key: &str) {
    b.client.goto(&h.url("/dashboard")).await.unwrap();
    b.wait("login form", "return !document.getElementById('login').hidden")
        .await;
    let input = b.client.find(Locator::Id("admin-key")).await.unwrap();
    input.send_keys(key).await.unwrap();
    b.click(Locator::Css("#login-form button")).await;
}

pub(crate) async fn sign_in(b: &Browser, h: &Harness) {
    submit_key(b, h, ADMIN_KEY).await;
    b.wait("overview", "return document.getElementById('card-total').dataset.value")
        .await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_right_one_signs_in_and_out() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    let b = Browser::start().await;
    submit_key(&b, &h, "not-the-key").await;
    let msg = b
        .wait("refusal", "return document.getElementById('login-error').textContent")
        .await;
    assert_eq!(msg, "Wrong admin key.");
    assert_eq!(
        b.js("return document.getElementById('page-overview').hidden").await,
        true
    );
    b.screenshot("login-refused").await;

    sign_in(&b, &h).await;
    let cookie = b.client.get_named_cookie("llm_router_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    b.click(Locator::Id("logout")).await;
    b.wait("login form again", "return !document.getElementById('login').hidden")
        .await;
    let status = b
        .js("return fetch('/api/dashboard/stats', {credentials: 'same-origin'}).then(r => r.status)")
        .await;
    assert_eq!(status, 401, "the session is gone after logout");
    b.close().await;
}

#[tokio::test]
async fn overview_nodes_statistics_and_history_show_the_api_figures() {
    let a = mock("alpha", &["m1"]).await;
    let silent = mock_with("silent", &["m2"], |c| c.usage = false).await;
    let failing = mock_with("failing", &["m3"], |c| c.failure_rate = 1.0).await;
    let h = Harness::start(&[&a, &silent, &failing]).await;
    workload(&h).await;
    let b = Browser::start().await;
    sign_in(&b, &h).await;

    // Overview cards and the nodes table (P-1).
    let stats = h.get("/api/dashboard/stats").await;
    for (id, key) in [
        ("card-requests", "total_requests"),
        ("card-success", "successful_requests"),
        ("card-failed", "failed_requests"),
        ("card-input", "total_input_tokens"),
        ("card-output", "total_output_tokens"),
        ("card-total", "total_tokens"),
    ] {
        assert_eq!(b.number(&format!("#{id}")).await, u(&stats[key]), "{id}");
    }
    assert_eq!(u(&stats["total_requests"]), 6);
    let nodes = h.get("/api/dashboard/nodes").await;
    b.wait(
        "node rows",
        "return document.querySelectorAll('#nodes-table tbody tr').length === 3",
    )
    .await;
    for n in nodes["nodes"].as_array().unwrap() {
        let row = format!("#nodes-table tr[data-key=\"{}\"]", n["id"]);
        for (col, key) in [
            (4, "total_requests"),
            (6, "total_input_tokens"),
            (7, "total_output_tokens"),
            (8, "total_tokens"),
        ] {
            assert_eq!(
                b.number(&format!("{row} td:nth-child({col})")).await,
                u(&n[key]),
                "{row} {key}"
            );
        }
    }
    let title = b.js("return document.querySelector('#card-total').title").await;
    assert_eq!(title, u(&stats["total_tokens"]).to_string(), "exact value on hover");
    b.screenshot("overview").await;

    // Statistics page (P-2): chart data equals the API's daily series.
    b.click(Locator::Css("a[data-page='stats']")).await;
    let chart_sums = "const c = Chart.getChart('daily-chart'); if (!c) return null; \
        return c.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0));";
    let sums = b.wait("daily chart", chart_sums).await;
    let tz = b.js("return document.getElementById('tz').value").await;
    let api_daily = h
        .get(&format!(
            "/api/dashboard/stats/tokens/daily?days=30&tz={}",
            tz.as_str().unwrap()
        ))
        .await;
    let sum = |key: &str| {
        api_daily["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| u(&d[key]))
            .sum::<u64>()
    };
    assert_eq!(sums, json!([sum("input_tokens"), sum("output_tokens")]));
    assert_eq!(
        b.js("return Chart.getChart('daily-chart').data.labels.length").await,
        30
    );
    let monthly = b
        .js("return Chart.getChart('monthly-chart').data.datasets[0].data.reduce((a, b) => a + b, 0)")
        .await;
    assert_eq!(monthly, sum("input_tokens"));
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    for m in tokens["by_model"].as_array().unwrap() {
        let row = format!("#by-model tr[data-key=\"{}\"]", m["model"].as_str().unwrap());
        assert_eq!(b.number(&format!("{row} td:nth-child(5)")).await, u(&m["total_tokens"]));
    }
    b.screenshot("statistics").await;

    // A node filter changes the chart data to that node's series.
    let silent_id = h.node(&silent.base_url()).await["id"].as_i64().unwrap();
    b.js(&format!(
        "const s = document.getElementById('node-filter'); s.value = '{silent_id}'; s.dispatchEvent(new Event('change'));"
    ))
    .await;
    let filtered = h.get(&format!("/api/dashboard/stats/tokens?node_id={silent_id}")).await;
    let expect = json!([u(&filtered["total_input_tokens"]), u(&filtered["total_output_tokens"])]);
    assert_ne!(expect, sums);
    let script = format!("const c = Chart.getChart('daily-chart'); const s = c.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0)); return JSON.stringify(s) === '{expect}';");
    b.wait("filtered chart", &script).await;
    b.screenshot("statistics-filtered").await;

    // Request history.
    b.click(Locator::Css("a[data-page='history']")).await;
    b.wait(
        "history rows",
        "return document.querySelectorAll('#history-table tbody tr').length === 6",
    )
    .await;
    let newest = &h.history().await[0];
    let row = format!("#history-table tr[data-key=\"{}\"]", newest["id"]);
    assert_eq!(
        b.number(&format!("{row} td:nth-child(6)")).await,
        u(&newest["input_tokens"])
    );
    let source = b
        .js(&format!(
            "return document.querySelector('{row} td:nth-child(8)').textContent"
        ))
        .await;
    assert_eq!(source, newest["token_source"]);
    b.js(
        "const s = document.getElementById('history-status'); s.value = 'error'; s.dispatchEvent(new Event('change'));",
    )
    .await;
    b.wait(
        "error filter",
        "return document.querySelectorAll('#history-table tbody tr').length === 1",
    )
    .await;
    b.screenshot("history").await;

    // Narrow screen: nothing overflows the page horizontally.
    b.client.set_window_size(390, 844).await.unwrap();
    b.click(Locator::Css("a[data-page='overview']")).await;
    b.wait("overview", "return !document.getElementById('page-overview').hidden")
        .await;
    let overflow = b
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(overflow.as_i64().unwrap() <= 0, "page overflows by {overflow}px");
    b.screenshot("overview-narrow").await;
    b.close().await;
}

#[tokio::test]
async fn figures_refresh_by_themselves() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    assert_eq!(b.number("#card-requests").await, 0);
    h.chat("m1", "one two three").await;
    b.wait(
        "auto refresh",
        "return document.getElementById('card-requests').dataset.value === '1'",
    )
    .await;
    assert_eq!(b.number("#card-total").await, 8);
    b.close().await;
}

/// Sets a `<select>` or `<input>` and fires `change`, as a user's choice would.
pub(crate) async fn choose(b: &Browser, id: &str, value: &str) {
    b.js(&format!(
        "const e = document.getElementById('{id}'); e.value = '{value}'; e.dispatchEvent(new Event('change'));"
    ))
    .await;
}

#[tokio::test]
async fn range_presets_custom_range_and_time_zone_drive_the_charts() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    h.chat("m1", "one two three").await;
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    b.click(Locator::Css("a[data-page='stats']")).await;
    let labels =
        |n: usize| format!("const c = Chart.getChart('daily-chart'); return !!c && c.data.labels.length === {n};");
    b.wait("30 days", &labels(30)).await;
    choose(&b, "range", "7d").await;
    b.wait("7 days", &labels(7)).await;
    choose(&b, "range", "90d").await;
    b.wait("90 days", &labels(90)).await;
    choose(&b, "range", "12m").await;
    b.wait(
        "12 months",
        "const c = Chart.getChart('monthly-chart'); return c.data.labels.length === 12;",
    )
    .await;
    choose(&b, "range", "custom").await;
    assert_eq!(
        b.js("return document.getElementById('from').offsetParent !== null")
            .await,
        true
    );
    choose(&b, "from", "2026-01-01").await;
    choose(&b, "to", "2026-01-10").await;
    b.wait("custom range", &labels(10)).await;
    let first = b.js("return Chart.getChart('daily-chart').data.labels[0]").await;
    assert_eq!(first, "2026-01-01");
    assert_eq!(
        b.js("return !document.getElementById('stats-empty').hidden").await,
        true,
        "empty state"
    );

    // A time zone far from UTC: the chart shows the API's series for that zone.
    choose(&b, "range", "7d").await;
    choose(&b, "tz", "Pacific/Kiritimati").await;
    let api = h
        .get("/api/dashboard/stats/tokens/daily?days=7&tz=Pacific/Kiritimati")
        .await;
    let column = |key: &str| -> Vec<Value> { api["days"].as_array().unwrap().iter().map(|d| d[key].clone()).collect() };
    let (expect, dates) = (column("input_tokens"), column("date"));
    // Both the values and the dates: the UTC series can hold the same values (today's
    // tokens in its last day), and the chart must have been redrawn for the new zone.
    let script = format!(
        "const c = Chart.getChart('daily-chart'); \
         return JSON.stringify(c.data.datasets[0].data) === '{}' && JSON.stringify(c.data.labels) === '{}';",
        Value::from(expect.clone()),
        Value::from(dates)
    );
    b.wait("Kiritimati series", &script).await;
    let last = b.js("return Chart.getChart('daily-chart').data.labels[6]").await;
    assert_eq!(last, api["days"][6]["date"]);
    assert_eq!(expect.iter().map(u).sum::<u64>(), 3, "{api}");
    b.close().await;
}

#[tokio::test]
async fn history_pages_with_older_and_newer() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    for _ in 0..30 {
        h.chat("m1", "x").await;
    }
    let b = Browser::start().await;
    sign_in(&b, &h).await;
    b.click(Locator::Css("a[data-page='history']")).await;
    let rows = |n: usize| format!("return document.querySelectorAll('#history-table tbody tr').length === {n};");
    b.wait("first page", &rows(25)).await;
    let first_id = b
        .js("return document.querySelector('#history-table tbody tr').dataset.key")
        .await;
    assert_eq!(first_id, "30");
    b.click(Locator::Id("older")).await;
    b.wait("second page", &rows(5)).await;
    assert_eq!(b.js("return document.getElementById('older').disabled").await, true);
    b.click(Locator::Id("newer")).await;
    b.wait("first page again", &rows(25)).await;
    b.close().await;
}

#[tokio::test]
async fn a_refresh_keeps_the_scroll_and_replaces_nothing_that_did_not_change() {
    let a = mock("alpha", &["m1"]).await;
    let h = Harness::start(&[&a]).await;
    for _ in 0..30 {
        h.chat("m1", "x").await;
    }
    let b = Browser::start().await;
    b.client.set_window_size(900, 500).await.unwrap();
    sign_in(&b, &h).await;
    b.click(Locator::Css("a[data-page='history']")).await;
    b.wait(
        "rows",
        "return document.querySelectorAll('#history-table tbody tr').length === 25",
    )
    .await;
    b.js("window.scrollTo(0, 400); document.querySelector('#history-table tbody').dataset.marker = 'kept';")
        .await;
    let y = b.js("return window.scrollY").await;
    assert!(y.as_f64().unwrap() > 0.0, "the page scrolls");
    // One refresh (every 5 s) with nothing new: the same table body, the same scroll.
    tokio::time::sleep(Duration::from_millis(5600)).await;
    assert_eq!(
        b.js("return document.querySelector('#history-table tbody').dataset.marker")
            .await,
        "kept"
    );
    assert_eq!(b.js("return window.scrollY").await, y);
    b.close().await;
}
