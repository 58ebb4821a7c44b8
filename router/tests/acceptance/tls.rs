//! Node kinds and TLS to nodes: `https://` mock nodes with certificates made at test
//! time (rcgen), trusted through `--ca-file`, untrusted, or `tls_insecure`; kinds told
//! from each imitated server's telltale routes or set by the operator.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mock_node::{Imitation, MockConfig, MockNode, TlsIdentity};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::*;

const UNKNOWN_ISSUER: &str = "certificate verify failed: UnknownIssuer";

/// A certificate authority made for one test, its certificate written to a PEM file.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

impl TestCa {
    /// A CA named `name` (two CAs of one name would be told apart by signature only).
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        TestCa { issuer, dir }
    }

    fn pem_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A node certificate for 127.0.0.1 (and localhost) signed by this CA.
    fn node_identity(&self) -> TlsIdentity {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TlsIdentity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    /// A client that trusts this CA only: reads a node's answer without the router.
    async fn direct_stream(&self, node: &MockNode, body: &Value) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.issuer.pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let req = http::Request::post(format!("{}/v1/chat/completions", node.base_url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes().to_vec()
    }
}

async fn tls_mock(name: &str, identity: TlsIdentity) -> MockNode {
    mock_with(name, &["m"], |c| c.tls = Some(identity)).await
}

/// The admin API's view of the node with this base URL.
async fn api_node(h: &Harness, base_url: &str) -> Value {
    let nodes = h.get("/api/nodes").await;
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["base_url"] == base_url)
        .cloned()
        .unwrap_or_else(|| panic!("node {base_url} not listed: {nodes}"))
}

async fn add_node(h: &Harness, body: Value) -> Value {
    let (status, node) = h.admin(Method::POST, "/api/nodes", Some(body)).await;
    assert_eq!(status, 201, "{node}");
    node
}

async fn patch_node(h: &Harness, node: &Value, body: Value) -> Value {
    let (status, node) = h
        .admin(Method::PATCH, &format!("/api/nodes/{}", node["id"]), Some(body))
        .await;
    assert_eq!(status, 200, "{node}");
    node
}

/// One plain and one streamed chat; the streamed bytes must be the node's own.
async fn assert_served_plain_and_streamed(h: &Harness, node: &MockNode, name: &str, direct: Vec<u8>) {
    let before = node.received().len();
    let (status, body) = h.chat("m", "hello there").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], mock_text(name, 5));
    let (status, streamed) = h.chat_stream(&chat_body("m", "hello again", true)).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(streamed).unwrap(),
        String::from_utf8(direct).unwrap(),
        "the client's stream is the node's stream"
    );
    // Both requests reached the node over TLS, the stream with include_usage asked.
    let received = node.received();
    assert_eq!(received.len(), before + 2);
    assert_eq!(
        received[before + 1].body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn https_node_signed_by_a_ca_file_is_served_plain_and_streamed_with_exact_tokens() {
    let ca = TestCa::new("trusted CA");
    let node = tls_mock("secure", ca.node_identity()).await;
    let base_url = node.base_url();
    assert!(base_url.starts_with("https://127.0.0.1:"), "{base_url}");
    let h = Harness::start_with(&[&node], |a| a.ca_files = vec![ca.pem_file()]).await;

    let view = api_node(&h, &base_url).await;
    assert_eq!(
        (
            &view["status"],
            &view["kind"],
            &view["last_error"],
            &view["tls_insecure"]
        ),
        (&json!("online"), &json!("openai"), &Value::Null, &json!(false))
    );
    assert_eq!(view["models"], json!(["m"]));

    let direct = ca.direct_stream(&node, &chat_body("m", "hello again", true)).await;
    assert_served_plain_and_streamed(&h, &node, "secure", direct).await;

    // The node reported usage: 2 prompt words and 5 chunks per answer.
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    assert_eq!(
        [
            u(&tokens["total_input_tokens"]),
            u(&tokens["total_output_tokens"]),
            u(&tokens["total_tokens"]),
            u(&tokens["request_count"]),
            u(&tokens["estimated_request_count"]),
        ],
        [4, 10, 14, 2, 0]
    );
    let history = h.wait_history(2).await;
    assert!(history.iter().all(|r| r["status"] == "success"), "{history:?}");

    // Connections are pooled over TLS as over plain HTTP: no handshake per request.
    let handshakes = node.tls_handshakes();
    for _ in 0..10 {
        assert_eq!(h.chat("m", "once more").await.0, 200);
        assert_eq!(h.chat_stream(&chat_body("m", "and streamed", true)).await.0, 200);
    }
    assert_eq!(node.tls_handshakes(), handshakes);
}

#[tokio::test]
async fn untrusted_certificate_takes_the_node_offline_with_the_reason_and_its_model_gets_503() {
    // Signed by a CA the router was not told about.
    let other_ca = TestCa::new("unknown CA");
    let node = tls_mock("untrusted", other_ca.node_identity()).await;
    let base_url = node.base_url();
    let h = Harness::start(&[&node]).await;

    let view = api_node(&h, &base_url).await;
    assert_eq!(
        (&view["status"], &view["last_error"], &view["models"]),
        (&json!("offline"), &json!(UNKNOWN_ISSUER), &json!([]))
    );
    let dash = h.node(&base_url).await;
    assert_eq!(
        (&dash["status"], &dash["last_error"]),
        (&json!("offline"), &json!(UNKNOWN_ISSUER))
    );
    // Never online, the node never listed its model.
    let (status, body) = h.chat("m", "hi").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")));

    // Served once the operator chooses not to verify, then refused again when verification is back.
    let view = patch_node(&h, &view, json!({"tls_insecure": true})).await;
    assert_eq!((&view["status"], &view["last_error"]), (&json!("online"), &Value::Null));
    let (status, _) = h.chat("m", "hi").await;
    assert_eq!(status, 200);
    let view = patch_node(&h, &view, json!({"tls_insecure": false})).await;
    assert_eq!(
        (&view["status"], &view["last_error"], &view["models"]),
        (&json!("offline"), &json!(UNKNOWN_ISSUER), &json!(["m"]))
    );
    let (status, body) = h.chat("m", "hi").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("no_node_available")),
        "{body}"
    );

    // No panic: the router answers on, and the node saw one request only.
    assert_eq!(h.get("/health").await["status"], "ok");
    assert_eq!(node.received().len(), 1);
}

#[tokio::test]
async fn tls_insecure_node_is_served_and_the_choice_survives_a_restart() {
    let unknown_ca = TestCa::new("unknown CA");
    let node = tls_mock("insecure", unknown_ca.node_identity()).await;
    let base_url = node.base_url();
    let h = Harness::start(&[]).await;
    let view = add_node(&h, json!({"base_url": base_url, "tls_insecure": true})).await;
    assert_eq!(
        (&view["status"], &view["tls_insecure"], &view["last_error"]),
        (&json!("online"), &json!(true), &Value::Null)
    );

    let direct = unknown_ca
        .direct_stream(&node, &chat_body("m", "hello again", true))
        .await;
    assert_served_plain_and_streamed(&h, &node, "insecure", direct).await;

    let h = h.restart().await;
    let view = api_node(&h, &base_url).await;
    assert_eq!(
        (&view["status"], &view["tls_insecure"]),
        (&json!("online"), &json!(true))
    );
    assert_eq!(h.chat("m", "after the restart").await.0, 200);
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_stops_the_start() {
    let dir = TempDir::new().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let mut args = base_args(&dir);
    args.ca_files = vec![bad.clone()];
    let err = llm_router::app::start(args).await.err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot prepare TLS to nodes: cannot use CA file {}: no PEM CERTIFICATE block",
            bad.display()
        )
    );
}

#[tokio::test]
async fn a_certificate_error_on_a_request_takes_the_node_offline_with_the_reason() {
    let ca = TestCa::new("trusted CA");
    let node = tls_mock("rotated", ca.node_identity()).await;
    let (addr, base_url) = (node.addr, node.base_url());
    let h = Harness::start_with(&[&node], |a| a.ca_files = vec![ca.pem_file()]).await;
    assert_eq!(h.chat("m", "hi").await.0, 200);

    // The node comes back on its address with a certificate of a CA the router does not know.
    node.shutdown().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let other_ca = TestCa::new("unknown CA");
    let _replaced = MockNode::serve(
        listener,
        MockConfig {
            name: "rotated".into(),
            models: vec!["m".into()],
            tls: Some(other_ca.node_identity()),
            ..MockConfig::default()
        },
    );
    // The request finds no connection to reuse (the old node closed them) and fails the
    // handshake: a connection failure, so the node goes offline at once.
    let (status, body) = h.chat("m", "hi").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (502, &json!("upstream_error")),
        "{body}"
    );
    let view = api_node(&h, &base_url).await;
    assert_eq!(
        (&view["status"], &view["last_error"]),
        (&json!("offline"), &json!(UNKNOWN_ISSUER))
    );
    let (status, body) = h.chat("m", "hi").await;
    assert_eq!((status, &body["error"]["code"]), (503, &json!("no_node_available")));
}

/// Mock nodes imitating each server, in `NodeKind` order.
async fn one_node_of_each_kind() -> Vec<(Imitation, &'static str, MockNode)> {
    let mut nodes = Vec::new();
    for (imitation, kind) in [
        (Imitation::OpenAi, "openai"),
        (Imitation::Ollama, "ollama"),
        (Imitation::Vllm, "vllm"),
        (Imitation::LlamaCpp, "llamacpp"),
        (Imitation::LmStudio, "lmstudio"),
    ] {
        let model = format!("{kind}-model");
        let node = mock_with(kind, &[&model], |c| c.imitate = imitation).await;
        nodes.push((imitation, kind, node));
    }
    nodes
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths
}

#[tokio::test]
async fn each_server_kind_is_told_from_its_telltale_routes_and_probed_where_it_lists_models() {
    let nodes = one_node_of_each_kind().await;
    let refs: Vec<&MockNode> = nodes.iter().map(|(_, _, n)| n).collect();
    let h = Harness::start(&refs).await;
    for (_, kind, node) in &nodes {
        let view = api_node(&h, &node.base_url()).await;
        assert_eq!(
            (
                &view["kind"],
                &view["kind_explicit"],
                &view["status"],
                &view["last_error"]
            ),
            (&json!(kind), &json!(false), &json!("online"), &Value::Null),
            "{view}"
        );
        assert_eq!(view["models"], json!([format!("{kind}-model")]));
        assert_eq!(h.node(&node.base_url()).await["kind"], json!(kind));
        // Inference is forwarded as before, whatever the kind.
        let (status, body) = h.chat(&format!("{kind}-model"), "hi").await;
        assert_eq!((status, &body["system_fingerprint"]), (200, &json!(kind)));
    }
    // The start-up probe: the telltale routes each server answers (asked at once),
    // then the model list where the kind keeps it.
    let probes: Vec<Vec<String>> = nodes.iter().map(|(_, _, n)| sorted(n.probes())).collect();
    let expected: [&[&str]; 5] = [
        &["/v1/models", "/v1/models"],
        &["/api/tags", "/api/version", "/v1/models"],
        &["/v1/models", "/v1/models"],
        &["/props", "/v1/models", "/v1/models"],
        &["/api/v0/models", "/v1/models", "/v1/models"],
    ];
    assert_eq!(
        probes,
        expected.map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );

    // A later round asks only for the model lists: the kinds are known while the nodes stay online.
    h.router.state.health.probe_all().await;
    let ollama = sorted(nodes[1].2.probes());
    assert_eq!(ollama, ["/api/tags", "/api/tags", "/api/version", "/v1/models"]);
}

#[tokio::test]
async fn an_explicit_kind_wins_over_detection_and_null_has_it_told_again() {
    let node = mock_with("llama", &["m"], |c| c.imitate = Imitation::LlamaCpp).await;
    let h = Harness::start(&[]).await;
    let view = add_node(&h, json!({"base_url": node.base_url(), "kind": "openai"})).await;
    assert_eq!(
        (&view["kind"], &view["kind_explicit"], &view["status"]),
        (&json!("openai"), &json!(true), &json!("online"))
    );
    assert_eq!(
        node.probes(),
        ["/v1/models"],
        "no detection for a kind the operator set"
    );

    let view = patch_node(&h, &view, json!({"kind": null})).await;
    assert_eq!(
        (&view["kind"], &view["kind_explicit"]),
        (&json!("llamacpp"), &json!(false))
    );

    // Told to be Ollama, the node is asked for Ollama's model list, which it does not serve.
    let view = patch_node(&h, &view, json!({"kind": "ollama"})).await;
    assert_eq!(
        (
            &view["kind"],
            &view["kind_explicit"],
            &view["status"],
            &view["last_error"]
        ),
        (
            &json!("ollama"),
            &json!(true),
            &json!("offline"),
            &json!("HTTP 404 from /api/tags")
        )
    );

    let h = h.restart().await;
    let view = api_node(&h, &node.base_url()).await;
    assert_eq!(
        (&view["kind"], &view["kind_explicit"], &view["status"]),
        (&json!("ollama"), &json!(true), &json!("offline"))
    );
}

#[tokio::test]
async fn a_static_node_names_its_kind_as_kind_equals_url() {
    let node = mock_with("ollama", &["llama3:latest"], |c| c.imitate = Imitation::Ollama).await;
    let h = Harness::start_with(&[], |a| a.nodes = vec![format!("ollama={}", node.base_url())]).await;
    let view = api_node(&h, &node.base_url()).await;
    assert_eq!(
        (&view["kind"], &view["kind_explicit"], &view["source"], &view["models"]),
        (
            &json!("ollama"),
            &json!(true),
            &json!("static"),
            &json!(["llama3:latest"])
        )
    );
    assert_eq!(node.probes(), ["/api/tags"]);
}

#[tokio::test]
async fn a_bad_kind_is_refused_with_400_naming_kind() {
    let node = mock("plain", &["m"]).await;
    let h = Harness::start(&[]).await;
    let message = "invalid parameter 'kind': unknown node kind 'tgi' (one of openai, ollama, vllm, llamacpp, lmstudio)";

    let (status, body) = h
        .admin(
            Method::POST,
            "/api/nodes",
            Some(json!({"base_url": node.base_url(), "kind": "tgi"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        json!({"message": message, "type": "invalid_request_error", "code": "invalid_parameter"})
    );
    assert_eq!(h.get("/api/nodes").await["nodes"], json!([]), "nothing registered");

    let view = add_node(&h, json!({"base_url": node.base_url()})).await;
    let (status, body) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{}", view["id"]),
            Some(json!({"kind": "tgi"})),
        )
        .await;
    assert_eq!((status, &body["error"]["message"]), (400, &json!(message)));
    let (status, body) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{}", view["id"]),
            Some(json!({"kind": 5})),
        )
        .await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_json")));
    assert_eq!(api_node(&h, &node.base_url()).await["kind"], "openai", "unchanged");
}
