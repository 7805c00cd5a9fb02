//! The request decoders under random input: arbitrary bytes, random JSON built from the routes'
//! own field names, and mutations of valid bodies, sent to every route of an in-process router
//! over a vector namespace. No input may panic the server or get a 5xx (every client error is a
//! 4xx with a JSON error body), and the bank must stay whole.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use memrl::{BankConfig, BatchConfig, CheckpointPolicy, Limits, Retention, SyncPolicy};
use memrl_server::api::RequestLimits;
use memrl_server::namespaces::BankSettings;
use memrl_server::{Server, ServerConfig};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const DIM: usize = 4;

/// Field names of the routes' bodies, and a few others.
const FIELDS: &[&str] = &[
    "text",
    "texts",
    "vector",
    "vectors",
    "k1",
    "k2",
    "delta",
    "lambda",
    "zsim",
    "mode",
    "mean",
    "std",
    "z_clip",
    "q_min",
    "epsilon",
    "seed",
    "thompson",
    "ucb",
    "sim_margin",
    "baseline_rate",
    "q_init_failure",
    "memories",
    "id",
    "intent",
    "experience",
    "success",
    "q",
    "metadata",
    "embedding",
    "retrieval_id",
    "reward",
    "rewards",
    "memory_ids",
    "outcomes",
    "max_pairs",
    "write",
    "fixed_zsim",
    "dim",
    "model_id",
    "dtype",
    "dedup_sim",
    "input",
    "model",
    "encoding_format",
    "dimensions",
    "user",
    "x",
];

const POST_ROUTES: &[&str] = &[
    "/v1/namespaces/ns/memories",
    "/v1/namespaces/ns/retrieve",
    "/v1/namespaces/ns/feedback",
    "/v1/namespaces/ns/calibrate",
    "/v1/embeddings",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let router = runtime.block_on(async {
        let server = Server::open(ServerConfig {
            data_dir: dir.path().join("data"),
            banks: BankSettings {
                embedder: None,
                default_config: Some(BankConfig::new(DIM, "fuzz")),
                sync: SyncPolicy::Never,
                checkpoint: CheckpointPolicy::Manual,
                retention: Retention::default(),
                limits: Limits::default(),
                device: memrl::Device::Cpu,
                batch: Some(BatchConfig::default()),
            },
            keys: None,
            limits: RequestLimits {
                max_body_bytes: 1 << 16,
                max_items: 64,
                max_text_bytes: 256,
            },
            mcp_namespace: "default".into(),
            allowed_hosts: vec![],
            shutdown_timeout: std::time::Duration::from_secs(1),
        })
        .await
        .unwrap();
        let router = server.router(CancellationToken::new());
        // Something to find, feed back and calibrate.
        let (status, _) = send(
            &router,
            "POST",
            "/v1/namespaces/ns/memories",
            json!({"memories": [
                {"id": 1, "experience": "a", "embedding": [1.0, 0.0, 0.0, 0.0]},
                {"id": 2, "experience": "b", "embedding": [0.0, 1.0, 0.0, 0.0]},
            ]})
            .to_string()
            .into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // The router holds the server's state: the namespaces stay open with it.
        drop(server);
        router
    });
    Fixture {
        runtime,
        router,
        _dir: dir,
    }
}

async fn send(router: &Router, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, bytes.to_vec())
}

impl Fixture {
    fn check(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
        let (status, bytes) = self
            .runtime
            .block_on(send(&self.router, method, path, body.clone()));
        prop_assert!(
            !status.is_server_error(),
            "{method} {path} {:?} -> {status}: {}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&bytes)
        );
        if status.is_client_error() {
            let parsed: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e})")))?;
            prop_assert!(parsed["error"]["kind"].is_string(), "{parsed}");
            prop_assert!(parsed["error"]["message"].is_string(), "{parsed}");
        }
        Ok(())
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop_oneof![
            any::<f64>(),
            Just(1e39),
            Just(-1e39),
            Just(0.0),
            Just(-0.0),
            Just(1e-45),
            -2.0..2.0f64
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("pool")),
        Just(json!("fixed")),
        Just(json!("18446744073709551615")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (prop::sample::select(FIELDS).prop_map(str::to_string), inner),
                0..6
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Valid bodies of every route, for mutation.
fn valid_bodies() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/namespaces/ns/memories",
            json!({"intent": "x", "experience": "y", "embedding": [0.5, 0.5, 0.0, 0.1]}),
        ),
        (
            "/v1/namespaces/ns/memories",
            json!({"memories": [{"experience": "y", "embedding": [0.0, 0.0, 1.0, 0.0], "q": 0.5, "metadata": {"a": 1}}]}),
        ),
        (
            "/v1/namespaces/ns/retrieve",
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "delta": -1.0, "k1": 3, "k2": 2, "lambda": 0.5, "zsim": {"mode": "fixed", "mean": 0.1, "std": 0.3}, "z_clip": 3.0, "q_min": null, "epsilon": 0.1, "seed": 3}),
        ),
        (
            "/v1/namespaces/ns/retrieve",
            json!({"vectors": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]}),
        ),
        (
            "/v1/namespaces/ns/feedback",
            json!({"memory_ids": [1], "reward": 0.5}),
        ),
        (
            "/v1/namespaces/ns/feedback",
            json!({"outcomes": [{"memory_ids": [1, 2], "reward": -1.0}]}),
        ),
        (
            "/v1/namespaces/ns/feedback",
            json!({"retrieval_id": "12345", "reward": 1.0}),
        ),
        (
            "/v1/namespaces/ns/calibrate",
            json!({"max_pairs": 10, "seed": 1, "write": false}),
        ),
        ("/v1/embeddings", json!({"input": ["a"], "model": "fuzz"})),
    ]
}

/// Replaces, removes or adds one field somewhere in `value`.
fn mutate(value: &mut Value, choice: usize, replacement: Value, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[choice % keys.len()];
            match choice % 3 {
                0 if depth < 3 => mutate(
                    map.get_mut(key).unwrap(),
                    choice / 3,
                    replacement,
                    depth + 1,
                ),
                1 => {
                    map.remove(key);
                }
                _ => {
                    map.insert(key.clone(), replacement);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            if choice.is_multiple_of(2) && depth < 3 {
                mutate(&mut items[choice % n], choice / 2, replacement, depth + 1);
            } else {
                items[choice % n] = replacement;
            }
        }
        other => *other = replacement,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_input_gets_a_5xx(
        bytes in prop::collection::vec(any::<u8>(), 0..120),
        random in json_value(),
        mutation in (0..9usize, any::<usize>(), json_value()),
        route in 0..POST_ROUTES.len(),
        segment in "\\PC{0,16}",
    ) {
        let f = FIXTURE.with(|f| f.clone());
        let path = POST_ROUTES[route];
        f.check("POST", path, bytes)?;
        f.check("POST", path, serde_json::to_vec(&random).unwrap())?;
        let (index, choice, replacement) = mutation;
        let (path, mut body) = valid_bodies().swap_remove(index);
        mutate(&mut body, choice, replacement, 0);
        f.check("POST", path, serde_json::to_vec(&body).unwrap())?;
        // Paths and queries: percent-encoded junk in the namespace, the id and the query.
        let encoded: String = segment.bytes().map(|b| format!("%{b:02X}")).collect();
        f.check("GET", &format!("/v1/namespaces/{encoded}/stats"), vec![])?;
        f.check("GET", &format!("/v1/namespaces/ns/memories/{encoded}"), vec![])?;
        f.check("GET", &format!("/v1/namespaces/ns/stats?bins={encoded}&extremes=1"), vec![])?;
        f.check("PUT", &format!("/v1/namespaces/{encoded}"), serde_json::to_vec(&random).unwrap())?;
    }
}

thread_local! {
    static FIXTURE: Arc<Fixture> = Arc::new(fixture());
}

#[test]
fn the_bank_is_whole_after_the_fuzzing() {
    let f = fixture();
    for (path, body) in valid_bodies() {
        f.check("POST", path, serde_json::to_vec(&body).unwrap())
            .unwrap();
    }
    let (status, bytes) =
        f.runtime
            .block_on(send(&f.router, "GET", "/v1/namespaces/ns/stats", vec![]));
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}
