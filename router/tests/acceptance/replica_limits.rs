//! A client key's per-minute limits and concurrency across two router replicas on one
//! PostgreSQL database (DESIGN §12): each replica counts its own requests and adds
//! what the others published at their last sync round, so a limit holds for the
//! key as a whole, not once per replica. Needs PostgreSQL, like `replicas`.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::replicas::{two_replicas_with_key, within, TWO_SECONDS};
use crate::support::*;

#[tokio::test]
async fn a_key_s_requests_per_minute_hold_across_replicas() {
    let node = mock("n1", &["m"]).await;
    let key = json!({"name": "paced", "rpm_limit": 6});
    let (a, b, secret) = two_replicas_with_key(&[&node], key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One at a time, alternating, each replica having seen the other's requests: five
    // more are served (six in the minute), then both refuse. Alone, each replica
    // would have served six.
    let mut served = 1;
    for i in 0..8 {
        let h = if i % 2 == 0 { &a } else { &b };
        let (status, headers, v) = keyed_chat(h, Some(&secret), "m").await;
        match status {
            200 => {
                served += 1;
                let left = header(&headers, "x-ratelimit-remaining-requests");
                assert_eq!(left, Some((6 - served).to_string()), "request {i}");
            }
            429 => assert_eq!(code(&v), "rate_limit_exceeded", "{v}"),
            other => panic!("{other}: {v}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(served, 6);
    for h in [&a, &b] {
        let (status, _, v) = keyed_chat(h, Some(&secret), "m").await;
        assert_eq!((status, code(&v)), (429, "rate_limit_exceeded"), "{v}");
    }
    // The store holds the six, whichever replica served them.
    assert_eq!(token_totals(&a).await.3, 6);
}

#[tokio::test]
async fn a_key_s_concurrency_holds_across_replicas() {
    let node = slow_stream_mock("slow", 20, Duration::from_millis(100)).await;
    let key = json!({"name": "one-at-a-time", "max_concurrent": 1});
    let (a, b, secret) = two_replicas_with_key(&[&node], key).await;

    // A two-second stream through A: B refuses the key's next request while it runs.
    let stream = a
        .http
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("m", "a long answer", true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    within(TWO_SECONDS, "B counts A's request in flight", || async {
        let (status, _, v) = keyed_chat(&b, Some(&secret), "m").await;
        status == 429 && v["error"]["message"].as_str().unwrap_or("").contains("concurrent")
    })
    .await;
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    // Once it ended, B serves the key again.
    within(TWO_SECONDS, "B serves the key again", || async {
        keyed_chat(&b, Some(&secret), "m").await.0 == 200
    })
    .await;
}
