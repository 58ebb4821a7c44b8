//! Every route that reads a request body, fed generated bodies through the real router
//! over a real socket: random bytes, random JSON, and requests of the right shape with
//! odd members. Each answer has its exact status and, for an error, the OpenAI error
//! shape; a panic would drop the connection and fail the property. 64 cases per route
//! in the suite; `PROPTEST_CASES` sets another count (`scripts/fuzz.sh`).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRunner};
use serde_json::{json, Map, Value};

use crate::support::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::XorShift,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "model",
            "stream",
            "messages",
            "prompt",
            "input",
            "content",
            "stream_options",
            "key"
        ])
        .prop_map(str::to_string),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key.clone(), inner), 0..4).prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object with the given members set (or left out when `None`), and more.
fn object_with(fields: Vec<(&'static str, Option<Value>)>, more: Value) -> Value {
    let mut object = match more {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in fields {
        match v {
            Some(v) => object.insert(k.to_string(), v),
            None => object.remove(k),
        };
    }
    Value::Object(object)
}

/// Bodies of inference requests: the model the mock serves, another, or none.
fn arb_inference_body() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        Just(Some(json!("m"))),
        "[a-z]{0,4}".prop_map(|m| Some(Value::String(m))),
        arb_json().prop_map(Some),
        Just(None),
    ];
    let stream = prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(json!(b))),
        arb_json().prop_map(Some)
    ];
    let request =
        (model, stream, arb_json(), arb_json(), arb_json()).prop_map(|(model, stream, messages, options, more)| {
            let v = object_with(
                vec![
                    ("model", model),
                    ("stream", stream),
                    ("messages", Some(messages)),
                    ("stream_options", Some(options)),
                ],
                more,
            );
            serde_json::to_vec(&v).unwrap()
        });
    prop_oneof![
        3 => request,
        1 => arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => vec(any::<u8>(), 0..200),
    ]
}

/// What the router must answer to an inference body: the status and the error code.
fn expected_inference(body: &[u8]) -> (u16, Option<&'static str>) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (400, Some("invalid_json"));
    };
    match request.get("model").and_then(Value::as_str) {
        None => (400, Some("missing_model")),
        Some("m") => (200, None),
        Some(_) => (404, Some("model_not_found")),
    }
}

/// Runs `property` on the bodies `bodies` generates, one request each, against a router
/// over one mock node serving the model `m`.
fn run_bodies(
    bodies: impl Strategy<Value = (usize, Vec<u8>)>,
    property: impl Fn(&[u8], u16, &[u8]) -> Result<(), TestCaseError>,
    send: impl Fn(&Harness, usize, Vec<u8>) -> reqwest::RequestBuilder,
) {
    run_bodies_after(bodies, property, send, |_| None)
}

/// [`run_bodies`], sending `before(h)` (when there is one) ahead of every case.
fn run_bodies_after(
    bodies: impl Strategy<Value = (usize, Vec<u8>)>,
    property: impl Fn(&[u8], u16, &[u8]) -> Result<(), TestCaseError>,
    send: impl Fn(&Harness, usize, Vec<u8>) -> reqwest::RequestBuilder,
    before: impl Fn(&Harness) -> Option<reqwest::RequestBuilder>,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_node, h) = runtime.block_on(async {
        let node = mock("n", &["m"]).await;
        let h = Harness::start_with(&[&node], |a| a.durability = llm_router::recorder::Durability::Async).await;
        (node, h)
    });
    TestRunner::new(config())
        .run(&bodies, |(route, body)| {
            let (status, answer) = runtime.block_on(async {
                if let Some(first) = before(&h) {
                    first.send().await.expect("an answer");
                }
                let resp = send(&h, route, body.clone())
                    .send()
                    .await
                    .expect("an answer, not a dropped connection");
                (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
            });
            property(&body, status, &answer)
        })
        .unwrap();
    runtime.block_on(async {
        let (status, _) = h.admin(reqwest::Method::GET, "/health", None).await;
        assert_eq!(status, 200, "the router still serves");
    });
}

/// The OpenAI error shape with this code (any code when `None`).
fn check_error(answer: &[u8], code: Option<&str>) -> Result<(), TestCaseError> {
    let v: Value = serde_json::from_slice(answer).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
    let e = &v["error"];
    prop_assert!(
        e["message"].is_string() && e["type"].is_string() && e["code"].is_string(),
        "{}",
        v
    );
    if let Some(code) = code {
        prop_assert_eq!(e["code"].as_str(), Some(code));
    }
    Ok(())
}

const INFERENCE: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

#[test]
fn every_inference_route_answers_every_body_with_its_exact_status() {
    run_bodies(
        (0..INFERENCE.len(), arb_inference_body()),
        |body, status, answer| {
            let (want, code) = expected_inference(body);
            prop_assert_eq!(status, want, "{}", String::from_utf8_lossy(answer));
            if code.is_some() {
                check_error(answer, code)?;
            }
            Ok(())
        },
        |h, route, body| {
            h.http
                .post(h.url(INFERENCE[route]))
                .header("content-type", "application/json")
                .body(body)
        },
    );
}

/// Bodies for the admin routes: their own shapes with odd members, JSON, bytes.
fn arb_admin_body() -> impl Strategy<Value = Vec<u8>> {
    let url = prop_oneof![
        Just(json!("http://127.0.0.1:1")),
        Just(json!("http://127.0.0.1:1/v1")),
        Just(json!("https://127.0.0.1:1")),
        Just(json!("ftp://x")),
        any::<String>().prop_map(Value::String),
        arb_json(),
    ];
    let key = prop_oneof![
        Just(json!(ADMIN_KEY)),
        Just(json!(format!(" {ADMIN_KEY} "))),
        arb_json()
    ];
    let shaped = (url, key, arb_json(), arb_json(), arb_json()).prop_map(|(url, key, name, enabled, more)| {
        let v = object_with(
            vec![
                ("base_url", Some(url)),
                ("key", Some(key)),
                ("name", Some(name)),
                ("enabled", Some(enabled)),
            ],
            more,
        );
        serde_json::to_vec(&v).unwrap()
    });
    prop_oneof![
        3 => shaped,
        1 => arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => vec(any::<u8>(), 0..200),
    ]
}

#[test]
fn node_registration_answers_every_body_with_201_400_or_409() {
    run_bodies(
        (Just(0), arb_admin_body()),
        |_, status, answer| {
            prop_assert!(
                [201, 400, 409].contains(&status),
                "{} {}",
                status,
                String::from_utf8_lossy(answer)
            );
            if status != 201 {
                check_error(answer, None)?;
            }
            Ok(())
        },
        |h, _, body| h.http.post(h.url("/api/nodes")).bearer_auth(ADMIN_KEY).body(body),
    );
}

#[test]
fn node_changes_answer_every_body_with_200_400_or_409() {
    run_bodies(
        (Just(0), arb_admin_body()),
        |_, status, answer| {
            prop_assert!(
                [200, 400, 409].contains(&status),
                "{} {}",
                status,
                String::from_utf8_lossy(answer)
            );
            if status != 200 {
                check_error(answer, None)?;
            }
            Ok(())
        },
        |h, _, body| h.http.patch(h.url("/api/nodes/1")).bearer_auth(ADMIN_KEY).body(body),
    );
}

/// Every case follows a good sign-in, which resets the address's count of wrong keys:
/// the throttle (tested in `console_api`) never answers here.
#[test]
fn the_dashboard_login_answers_every_body_with_its_exact_status() {
    run_bodies_after(
        (Just(0), arb_admin_body()),
        |body, status, answer| {
            let key = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("key").and_then(Value::as_str).map(str::to_string));
            let want = match key {
                Some(k) if k.trim() == ADMIN_KEY => 204,
                Some(_) => 401,
                // A body that is no `{"key": …}` object (serde also reads `["…"]`).
                None => {
                    prop_assert!([204, 400, 401].contains(&status), "{}", status);
                    status
                }
            };
            prop_assert_eq!(status, want);
            if status != 204 {
                check_error(answer, None)?;
            }
            Ok(())
        },
        |h, _, body| h.http.post(h.url("/dashboard/login")).body(body),
        |h| {
            Some(
                h.http
                    .post(h.url("/dashboard/login"))
                    .json(&json!({ "key": ADMIN_KEY })),
            )
        },
    );
}
