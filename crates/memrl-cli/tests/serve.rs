//! `memrl serve` as a real process on 127.0.0.1, on the tiny model the tests build: every route,
//! every error status with its JSON body, the namespace isolation matrix of API keys, oversize
//! bodies, malformed JSON and UTF-8, wrong dimensions, a full queue, a corrupt namespace, the
//! refusal to listen openly without keys, and a graceful shutdown that checkpoints.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod server;

use std::collections::BTreeSet;
use std::time::Duration;

use common::tiny_model::{self, TinyPooling, HIDDEN};
use serde_json::{json, Value};
use server::{Http, Server};

const KEY_A: &str = "key-of-namespace-a-0123456789";
const KEY_B: &str = "key-of-namespace-b-0123456789";
const ADMIN: &str = "admin-key-every-namespace-42";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        tiny_model::write(
            &dir.path().join("tiny-model"),
            TinyPooling::Mean,
            Some(24),
            42,
        );
        Self { dir }
    }

    fn model(&self) -> String {
        self.dir.path().join("tiny-model").display().to_string()
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A server with the tiny model and `args`.
    fn start(&self, args: &[&str]) -> Server {
        let model = self.model();
        let mut all = vec!["--model", model.as_str()];
        all.extend_from_slice(args);
        Server::start(&self.data(), &all, &[])
    }

    fn keys_file(&self) -> String {
        let path = self.dir.path().join("keys.txt");
        std::fs::write(
            &path,
            format!("# test keys\n{KEY_A} a\n{KEY_B} b,shared\n{ADMIN} *\n"),
        )
        .unwrap();
        path.display().to_string()
    }
}

fn vector(seed: usize) -> Vec<f32> {
    (0..HIDDEN)
        .map(|i| {
            if i == seed % HIDDEN {
                1.0
            } else {
                0.01 * ((i * 7 + seed) % 5) as f32
            }
        })
        .collect()
}

#[test]
fn every_route_answers() {
    let setup = Setup::new();
    let server = setup.start(&[]);
    let mut c = server.http();

    let health = c.ok("GET", "/health", None, None);
    assert_eq!(health["status"], "ok");
    let doc = c.ok("GET", "/openapi.json", None, None);
    assert_eq!(doc["openapi"], "3.1.0");

    // Adds: one by text, a batch by text, a batch with vectors.
    let one = c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"intent": "parse a date", "experience": "use chrono", "success": true})),
    );
    let first = one["id"].as_u64().unwrap();
    let many = c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"memories": [
            {"intent": "read a file", "experience": "use std::fs::read", "metadata": {"lang": "rust"}},
            {"intent": "fix a slow test", "experience": "profile it first", "q": 0.5},
        ]})),
    );
    assert_eq!(many["ids"].as_array().unwrap().len(), 2);
    let vectors = c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"memories": [
            {"id": 100, "experience": "vector one", "embedding": vector(1)},
            {"id": 101, "experience": "vector two", "embedding": vector(2)},
        ]})),
    );
    assert_eq!(vectors["ids"], json!([100, 101]));

    let list = c.ok("GET", "/v1/namespaces", None, None);
    assert_eq!(list["namespaces"], json!([{"name": "ns", "memories": 5}]));
    let info = c.ok("GET", "/v1/namespaces/ns", None, None);
    assert_eq!(info["config"]["dim"], HIDDEN);
    assert_eq!(info["text"], true);
    assert_eq!(info["memories"], 5);

    // Retrieval: one text, several, one vector, with every option.
    let r = c.ok(
        "POST",
        "/v1/namespaces/ns/retrieve",
        None,
        // lambda 0: by similarity alone (memory 2's Q of 0.5 would lead the z-scored mix).
        Some(&json!({"text": "parse a date", "delta": -1.0, "k2": 3, "lambda": 0.0})),
    );
    let rid = r["retrieval_id"].as_str().unwrap().to_string();
    assert!(rid.parse::<u64>().is_ok());
    assert_eq!(r["hits"][0]["id"], first);
    assert_eq!(r["hits"].as_array().unwrap().len(), 3);
    let rs = c.ok(
        "POST",
        "/v1/namespaces/ns/retrieve",
        None,
        Some(&json!({"texts": ["read a file", "slow test"], "delta": -1.0})),
    );
    assert_eq!(rs["results"].as_array().unwrap().len(), 2);
    let rv = c.ok(
        "POST",
        "/v1/namespaces/ns/retrieve",
        None,
        Some(
            &json!({"vector": vector(1), "k1": 5, "k2": 1, "delta": -1.0, "lambda": 0.0,
                     "zsim": {"mode": "fixed", "mean": 0.1, "std": 0.2}, "z_clip": 2.0,
                     "q_min": null, "epsilon": 0.0, "seed": 7, "thompson": 0.0, "ucb": 0.0,
                     "sim_margin": 2.0}),
        ),
    );
    assert_eq!(rv["hits"][0]["id"], 100);
    let vs = c.ok(
        "POST",
        "/v1/namespaces/ns/retrieve",
        None,
        Some(&json!({"vectors": [vector(1), vector(2)], "delta": -1.0, "k2": 1, "lambda": 0.0})),
    );
    assert_eq!(vs["results"][1]["hits"][0]["id"], 101);

    // Feedback by retrieval id (once), by memory ids, as outcomes, as a list of rewards.
    let report = c.ok(
        "POST",
        "/v1/namespaces/ns/feedback",
        None,
        Some(&json!({"retrieval_id": rid, "reward": 1.0})),
    );
    assert_eq!(report["memories"], 3);
    let again = c.call(
        "POST",
        "/v1/namespaces/ns/feedback",
        None,
        Some(&json!({"retrieval_id": rid, "reward": 1.0})),
    );
    assert_eq!(
        (again.status, again.error_kind().as_str()),
        (404, "not_found")
    );
    let m = c.ok(
        "GET",
        &format!("/v1/namespaces/ns/memories/{first}"),
        None,
        None,
    );
    assert!((m["q"].as_f64().unwrap() - 0.3).abs() < 1e-6, "{m}");
    assert_eq!(m["visits"], 1);
    c.ok(
        "POST",
        "/v1/namespaces/ns/feedback",
        None,
        Some(&json!({"memory_ids": [100], "reward": -1.0})),
    );
    c.ok(
        "POST",
        "/v1/namespaces/ns/feedback",
        None,
        Some(&json!({"outcomes": [{"memory_ids": [100, 101], "reward": 1.0}]})),
    );
    let ids: Vec<String> = rs["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["retrieval_id"].as_str().unwrap().to_string())
        .collect();
    let both = c.ok(
        "POST",
        "/v1/namespaces/ns/feedback",
        None,
        Some(&json!({"rewards": [{"retrieval_id": ids[0], "reward": 0.5},
                                 {"retrieval_id": ids[1].parse::<u64>().unwrap(), "reward": -0.5}]})),
    );
    assert_eq!(both["outcomes"], 2);
    let m100 = c.ok("GET", "/v1/namespaces/ns/memories/100", None, None);
    // Two outcomes by id, then both retrievals of `rs` (each returned all five memories).
    assert_eq!(rs["results"][0]["hits"].as_array().unwrap().len(), 5);
    assert_eq!(m100["visits"], 4);

    // Stats and calibration.
    let stats = c.ok(
        "GET",
        "/v1/namespaces/ns/stats?bins=4&extremes=2",
        None,
        None,
    );
    assert_eq!(stats["memories"], 5);
    assert_eq!(stats["q_histogram"].as_array().unwrap().len(), 4);
    assert_eq!(stats["top"].as_array().unwrap().len(), 2);
    let cal = c.ok(
        "POST",
        "/v1/namespaces/ns/calibrate",
        None,
        Some(&json!({"write": true, "fixed_zsim": true})),
    );
    let delta = cal["calibration"]["delta"].as_f64().unwrap();
    assert!((cal["retrieval_config"]["delta"].as_f64().unwrap() - delta).abs() < 1e-6);
    let info = c.ok("GET", "/v1/namespaces/ns", None, None);
    assert_eq!(info["retrieval_config"]["zsim"]["mode"], "fixed");

    // Remove a memory.
    let removed = c.ok("DELETE", "/v1/namespaces/ns/memories/101", None, None);
    assert_eq!(removed["experience"], "vector two");
    let gone = c.call("GET", "/v1/namespaces/ns/memories/101", None, None);
    assert_eq!(
        (gone.status, gone.error_kind().as_str()),
        (404, "not_found")
    );

    // OpenAI-compatible embeddings: one string, a list, base64.
    let model = setup.model();
    let e = c.ok(
        "POST",
        "/v1/embeddings",
        None,
        Some(&json!({"input": "parse a date", "model": model})),
    );
    assert_eq!(e["object"], "list");
    let v: Vec<f64> = serde_json::from_value(e["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(v.len(), HIDDEN);
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    assert!(e["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let e2 = c.ok(
        "POST",
        "/v1/embeddings",
        None,
        Some(
            &json!({"input": ["parse a date", "read a file"], "model": model,
                     "encoding_format": "base64", "user": "agent-7"}),
        ),
    );
    assert_eq!(e2["data"][1]["index"], 1);
    assert!(e2["data"][0]["embedding"].is_string());
    for (body, status) in [
        (json!({"input": "x", "model": "other"}), 404),
        (json!({"input": "x", "model": model, "dimensions": 3}), 400),
        (json!({"input": [1, 2], "model": model}), 400),
        (
            json!({"input": "x", "model": model, "encoding_format": "int8"}),
            400,
        ),
    ] {
        let r = c.call("POST", "/v1/embeddings", None, Some(&body));
        assert_eq!(r.status, status, "{body}");
        r.error_kind();
    }

    // Metrics.
    let metrics = c.send("GET", "/metrics", &[], None).unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for line in [
        "memrl_http_requests_total{route=\"/v1/namespaces/{ns}/retrieve\",method=\"POST\",status=\"200\"} 4",
        "memrl_memories{namespace=\"ns\"} 4",
        "memrl_queue_depth{namespace=\"ns\"} 0",
        "memrl_batch_size_count{namespace=\"ns\"}",
        "memrl_http_request_duration_seconds_bucket{route=\"/health\",method=\"GET\",status=\"200\",le=\"+Inf\"} 1",
        "memrl_q{namespace=\"ns\",quantile=\"1\"}",
        "memrl_log_fsyncs_total{namespace=\"ns\"}",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    let tokens: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("memrl_embedding_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens > 0);

    // A namespace of another shape, created explicitly; then deleted.
    let created = c.call(
        "PUT",
        "/v1/namespaces/vec",
        None,
        Some(&json!({"dim": 4, "model_id": "my-vectors", "dtype": "f16"})),
    );
    assert_eq!(
        created.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&created.body)
    );
    let same = c.call(
        "PUT",
        "/v1/namespaces/vec",
        None,
        Some(&json!({"dim": 4, "model_id": "my-vectors", "dtype": "f16"})),
    );
    assert_eq!(same.status, 200);
    let other = c.call(
        "PUT",
        "/v1/namespaces/vec",
        None,
        Some(&json!({"dim": 5, "model_id": "x"})),
    );
    assert_eq!(
        (other.status, other.error_kind().as_str()),
        (409, "conflict")
    );
    c.ok(
        "POST",
        "/v1/namespaces/vec/memories",
        None,
        Some(&json!({"experience": "four", "embedding": [1.0, 0.0, 0.0, 0.0]})),
    );
    let text_on_vectors = c.call(
        "POST",
        "/v1/namespaces/vec/retrieve",
        None,
        Some(&json!({"text": "hello"})),
    );
    assert_eq!(
        (
            text_on_vectors.status,
            text_on_vectors.error_kind().as_str()
        ),
        (400, "invalid_input")
    );
    let deleted = c.ok("DELETE", "/v1/namespaces/vec", None, None);
    assert_eq!(deleted["deleted"], "vec");
    for (method, path) in [
        ("GET", "/v1/namespaces/vec"),
        ("DELETE", "/v1/namespaces/vec"),
    ] {
        let r = c.call(method, path, None, None);
        assert_eq!(
            (r.status, r.error_kind().as_str()),
            (404, "not_found"),
            "{method} {path}"
        );
    }
    assert!(!server.data.join("vec").exists());
    // A write creates it again, empty, with the server's model.
    c.ok(
        "POST",
        "/v1/namespaces/vec/memories",
        None,
        Some(&json!({"intent": "hello", "experience": "again"})),
    );
    assert_eq!(
        c.ok("GET", "/v1/namespaces/vec", None, None)["config"]["dim"],
        HIDDEN
    );
}

/// Sends `body` to `path` and checks the status and the error kind.
#[test]
fn configs_change_durably_field_by_field_and_a_bad_field_changes_nothing() {
    let setup = Setup::new();
    let server = setup.start(&[]);
    let mut c = server.http();
    let health = c.ok("GET", "/health", None, None);
    assert_eq!(health["model"], setup.model().as_str());
    assert_eq!(health["dim"], HIDDEN);
    let config = "/v1/namespaces/ns/config";
    // A first PATCH creates the namespace, as a first write does.
    let both = c.ok(
        "PATCH",
        config,
        None,
        Some(
            &json!({"retrieval_config": {"k2": 2, "lambda": 0.25, "clip_zsim": true},
                     "learning_config": {"alpha": 0.5,
                         "reward_range": {"min": -1.0, "max": 1.0, "out_of_range": "clamp"}}}),
        ),
    );
    assert_eq!(both["retrieval_config"]["k2"], 2);
    assert_eq!(both["retrieval_config"]["clip_zsim"], true);
    assert_eq!(
        both["retrieval_config"]["k1"], 10,
        "fields not given keep their value"
    );
    assert_eq!(both["learning_config"]["alpha"], 0.5);
    let before = c.ok("GET", "/v1/namespaces/ns", None, None);
    // Misspelt, unknown, out of range, the wrong type: 400, naming the field, and nothing
    // changes, not even the valid half of the request.
    for (body, names) in [
        (
            json!({"retrieval_config": {"k2": 3, "lamda": 0.1}}),
            "lamda",
        ),
        (json!({"retrieval_config": {"k2": 0}}), "k2"),
        (
            json!({"retrieval_config": {"k2": 3}, "learning_config": {"alpha": 2.0}}),
            "alpha",
        ),
        (
            json!({"learning_config": {"alpha": "high"}}),
            "learning_config",
        ),
        (json!({"retrieval": {"k2": 3}}), "retrieval"),
    ] {
        let r = expect(
            &mut c,
            "PATCH",
            config,
            body.to_string().as_bytes(),
            400,
            "invalid_input",
        );
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }
    assert_eq!(c.ok("GET", "/v1/namespaces/ns", None, None), before);
    // Per-request clip_zsim, a checkpoint, and the configs survive a restart.
    let r = c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"intent": "parse a date", "experience": "use chrono"})),
    );
    assert_eq!(r["id"], 0);
    c.ok(
        "POST",
        "/v1/namespaces/ns/retrieve",
        None,
        Some(&json!({"text": "parse a date", "clip_zsim": false, "delta": -1.0})),
    );
    // Every field of the retrieval config is an option of a retrieval (the class of
    // `clip_zsim`, added to the config after the route was written and unreachable from it).
    let stored = c.ok("GET", "/v1/namespaces/ns", None, None)["retrieval_config"].clone();
    for (field, value) in stored.as_object().unwrap() {
        let mut body = json!({"text": "parse a date"});
        body[field] = value.clone();
        let r = c.call("POST", "/v1/namespaces/ns/retrieve", None, Some(&body));
        assert_eq!(
            r.status,
            200,
            "{field}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let seq = c.ok("POST", "/v1/namespaces/ns/checkpoint", None, None);
    assert!(seq["log_seq"].as_u64().is_some());
    let missing = c.call("POST", "/v1/namespaces/none/checkpoint", None, None);
    assert_eq!(missing.status, 404);
    server.kill();
    let server = setup.start(&[]);
    let mut c = server.http();
    let after = c.ok("GET", "/v1/namespaces/ns", None, None);
    assert_eq!(after["retrieval_config"], before["retrieval_config"]);
    assert_eq!(after["learning_config"], before["learning_config"]);
}

fn expect(c: &mut Http, method: &str, path: &str, body: &[u8], status: u16, kind: &str) -> Value {
    let r = c
        .send(
            method,
            path,
            &[("content-type", "application/json")],
            Some(body),
        )
        .unwrap();
    assert_eq!(
        r.status,
        status,
        "{method} {path} {:?}: {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error_kind(), kind, "{method} {path}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

#[test]
fn every_error_status_has_a_json_body() {
    let setup = Setup::new();
    let server = setup.start(&[
        "--max-body-bytes",
        "8192",
        "--max-items",
        "4",
        "--max-text-bytes",
        "200",
    ]);
    let mut c = server.http();
    c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"id": 1, "intent": "parse a date", "experience": "use chrono"})),
    );
    let add = "/v1/namespaces/ns/memories";
    let retrieve = "/v1/namespaces/ns/retrieve";

    // Malformed JSON, malformed UTF-8, wrong shapes, unknown and missing fields.
    expect(
        &mut c,
        "POST",
        retrieve,
        b"{\"text\": ",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        retrieve,
        b"{\"text\": \"\xff\xfe\"}",
        400,
        "invalid_input",
    );
    expect(&mut c, "POST", retrieve, b"[1, 2]", 400, "invalid_input");
    let e = expect(
        &mut c,
        "POST",
        retrieve,
        b"{\"txt\": \"a\"}",
        400,
        "invalid_input",
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("txt"),
        "{e}"
    );
    expect(&mut c, "POST", retrieve, b"{}", 400, "invalid_input");
    expect(
        &mut c,
        "POST",
        retrieve,
        b"{\"text\": \"a\", \"vector\": [1]}",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        add,
        b"{\"intent\": \"no experience\"}",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        add,
        b"{\"experience\": 3}",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/ns/feedback",
        b"{\"reward\": 1}",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/ns/feedback",
        b"{\"retrieval_id\": \"x1\", \"reward\": 1}",
        400,
        "invalid_input",
    );
    // Wrong dimensions, non-finite values (1e39 is infinite as f32), out-of-range options.
    let e = expect(
        &mut c,
        "POST",
        retrieve,
        b"{\"vector\": [1.0, 2.0]}",
        400,
        "invalid_input",
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimension"),
        "{e}"
    );
    let wrong_dim = json!({"experience": "x", "embedding": [1.0, 0.0, 0.0]}).to_string();
    expect(
        &mut c,
        "POST",
        add,
        wrong_dim.as_bytes(),
        400,
        "invalid_input",
    );
    let inf = format!("{{\"vector\": [1e39{}]}}", ", 0.0".repeat(HIDDEN - 1));
    expect(
        &mut c,
        "POST",
        retrieve,
        inf.as_bytes(),
        400,
        "invalid_input",
    );
    for option in [
        "\"k1\": 0",
        "\"k1\": 18446744073709551615",
        "\"k2\": 100000",
        "\"lambda\": 2",
        "\"epsilon\": -1",
        "\"z_clip\": 0",
        "\"delta\": 1e39",
    ] {
        let body = format!("{{\"text\": \"a\", {option}}}");
        expect(
            &mut c,
            "POST",
            retrieve,
            body.as_bytes(),
            400,
            "invalid_input",
        );
    }
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/ns/feedback",
        b"{\"memory_ids\": [1], \"reward\": 1e39}",
        400,
        "invalid_input",
    );
    // Limits: items, text bytes, body bytes.
    let five = json!({"texts": ["a", "b", "c", "d", "e"]}).to_string();
    expect(
        &mut c,
        "POST",
        retrieve,
        five.as_bytes(),
        400,
        "invalid_input",
    );
    let long = json!({"text": "a".repeat(201)}).to_string();
    expect(
        &mut c,
        "POST",
        retrieve,
        long.as_bytes(),
        400,
        "invalid_input",
    );
    let huge = json!({"text": "a".repeat(10_000)}).to_string();
    expect(
        &mut c,
        "POST",
        retrieve,
        huge.as_bytes(),
        413,
        "payload_too_large",
    );
    // Not JSON at all.
    let r = c
        .send("POST", retrieve, &[], Some(b"{\"text\": \"a\"}"))
        .unwrap();
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (415, "unsupported_media_type")
    );
    let r = c
        .send(
            "POST",
            retrieve,
            &[("content-type", "text/plain")],
            Some(b"{\"text\": \"a\"}"),
        )
        .unwrap();
    assert_eq!(r.status, 415);
    // Routes, methods, names, ids.
    expect(&mut c, "GET", "/v1/nothing", b"", 404, "not_found");
    expect(
        &mut c,
        "PATCH",
        "/v1/namespaces/ns",
        b"",
        405,
        "method_not_allowed",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/.hidden/stats",
        b"",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/..%2Fetc/stats",
        b"",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/ns/memories/abc",
        b"",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/ns/memories/7",
        b"",
        404,
        "not_found",
    );
    expect(
        &mut c,
        "DELETE",
        "/v1/namespaces/ns/memories/7",
        b"",
        404,
        "not_found",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/ns/stats?bins=x",
        b"",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/ns/stats?colour=red",
        b"",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/ns/calibrate",
        b"{\"max_pairs\": 0}",
        400,
        "invalid_input",
    );
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/ns/feedback",
        b"{\"memory_ids\": [7], \"reward\": 1}",
        404,
        "not_found",
    );
    // A read of a missing namespace is 404 and creates nothing.
    expect(
        &mut c,
        "GET",
        "/v1/namespaces/missing/stats",
        b"",
        404,
        "not_found",
    );
    expect(
        &mut c,
        "POST",
        "/v1/namespaces/missing/retrieve",
        b"{\"text\": \"a\"}",
        404,
        "not_found",
    );
    assert!(!server.data.join("missing").exists());
    // Conflicts.
    let dup = json!({"id": 1, "intent": "x", "experience": "y"}).to_string();
    expect(&mut c, "POST", add, dup.as_bytes(), 409, "conflict");
    // The bank is unchanged by all of it.
    let stats = c.ok("GET", "/v1/namespaces/ns/stats", None, None);
    assert_eq!(stats["memories"], 1);
    assert_eq!(
        c.ok("GET", "/v1/namespaces/ns/memories/1", None, None)["visits"],
        0
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let setup = Setup::new();
    let server = setup.start(&["--queue", "1", "--max-batch", "1"]);
    let mut c = server.http();
    c.ok(
        "POST",
        "/v1/namespaces/ns/memories",
        None,
        Some(&json!({"memories": (0..200).map(|i| json!({"experience": format!("m{i}"), "embedding": vector(i)})).collect::<Vec<_>>()})),
    );
    let addr = server.addr.clone();
    let answers: Vec<(u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let addr = addr.clone();
                s.spawn(move || {
                    let mut c = Http::connect(&addr);
                    let mut seen = Vec::new();
                    for i in 0..40 {
                        let r = c.call(
                            "POST",
                            "/v1/namespaces/ns/retrieve",
                            None,
                            Some(&json!({"vector": vector(t * 40 + i), "delta": -1.0, "k1": 200})),
                        );
                        let kind = if r.status == 200 {
                            String::new()
                        } else {
                            r.error_kind()
                        };
                        seen.push((r.status, r.header("retry-after").map(str::to_string), kind));
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let overloaded: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200 || *s == 429),
        "{answers:?}"
    );
    assert!(
        !overloaded.is_empty(),
        "16 clients against a queue of 1 never saw a 429"
    );
    for (_, retry, kind) in overloaded {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(kind, "overloaded");
    }
}

/// The isolation matrix: every route, for no key, a wrong key, the namespace's key, another
/// namespace's key and the admin key.
#[test]
fn api_keys_scope_namespaces() {
    let setup = Setup::new();
    let keys = setup.keys_file();
    let server = setup.start(&["--keys", &keys]);
    let mut c = server.http();
    for (ns, key) in [("a", KEY_A), ("b", KEY_B)] {
        let r = c.ok(
            "POST",
            &format!("/v1/namespaces/{ns}/memories"),
            Some(key),
            Some(&json!({"id": 1, "intent": "parse a date", "experience": format!("secret of {ns}")})),
        );
        assert_eq!(r["id"], 1);
    }
    let retrieval = |c: &mut Http, ns: &str, key: &str| -> String {
        c.ok(
            "POST",
            &format!("/v1/namespaces/{ns}/retrieve"),
            Some(key),
            Some(&json!({"text": "parse a date", "delta": -1.0})),
        )["retrieval_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let rid_b = retrieval(&mut c, "b", KEY_B);
    // Every namespace route on namespace b, as (method, path, body).
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/namespaces/b".into(), None),
        ("PUT", "/v1/namespaces/b".into(), Some(json!({}))),
        (
            "POST",
            "/v1/namespaces/b/memories".into(),
            Some(json!({"intent": "x", "experience": "y"})),
        ),
        ("GET", "/v1/namespaces/b/memories/1".into(), None),
        (
            "POST",
            "/v1/namespaces/b/retrieve".into(),
            Some(json!({"text": "parse a date", "delta": -1.0})),
        ),
        (
            "POST",
            "/v1/namespaces/b/feedback".into(),
            Some(json!({"retrieval_id": rid_b, "reward": 1.0})),
        ),
        (
            "POST",
            "/v1/namespaces/b/feedback".into(),
            Some(json!({"memory_ids": [1], "reward": 1.0})),
        ),
        ("GET", "/v1/namespaces/b/stats".into(), None),
        (
            "POST",
            "/v1/namespaces/b/calibrate".into(),
            Some(json!({"write": true})),
        ),
        (
            "PATCH",
            "/v1/namespaces/b/config".into(),
            Some(json!({"learning_config": {"alpha": 1.0}})),
        ),
        ("POST", "/v1/namespaces/b/checkpoint".into(), None),
        ("DELETE", "/v1/namespaces/b/memories/1".into(), None),
        ("DELETE", "/v1/namespaces/b".into(), None),
        // A namespace that does not exist: 403 too, so a key cannot probe for names.
        ("GET", "/v1/namespaces/c/stats".into(), None),
    ];
    let mut bodies = Vec::new();
    for (method, path, body) in &routes {
        for (key, status, kind) in [
            (None, 401, "unauthorized"),
            (Some("not-a-key-of-this-server-000"), 401, "unauthorized"),
            (Some(KEY_A), 403, "forbidden"),
        ] {
            let r = c.call(method, path, key, body.as_ref());
            assert_eq!(
                r.status,
                status,
                "{method} {path} with {key:?}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.error_kind(), kind);
            if status == 401 {
                assert!(r.header("www-authenticate").is_some());
            }
            bodies.push(String::from_utf8(r.body).unwrap());
        }
    }
    // Nothing of b changed, and b's key still reads it.
    let m = c.ok("GET", "/v1/namespaces/b/memories/1", Some(KEY_B), None);
    assert_eq!(
        (m["experience"].as_str(), m["visits"].as_u64()),
        (Some("secret of b"), Some(0))
    );
    // The same retrieval id cannot be reported through namespace a either: ids are per namespace.
    let r = c.call(
        "POST",
        "/v1/namespaces/a/feedback",
        Some(KEY_A),
        Some(&json!({"retrieval_id": rid_b, "reward": 1.0})),
    );
    assert_eq!(r.status, 404);
    // The list shows each key its own namespaces; the admin sees all.
    let names = |c: &mut Http, key: &str| -> BTreeSet<String> {
        c.ok("GET", "/v1/namespaces", Some(key), None)["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&mut c, KEY_A), BTreeSet::from(["a".to_string()]));
    assert_eq!(names(&mut c, KEY_B), BTreeSet::from(["b".to_string()]));
    assert_eq!(
        names(&mut c, ADMIN),
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );
    // The metrics name every namespace: admin only.
    assert_eq!(c.call("GET", "/metrics", Some(KEY_A), None).status, 403);
    assert_eq!(c.call("GET", "/metrics", None, None).status, 401);
    assert_eq!(c.call("GET", "/metrics", Some(ADMIN), None).status, 200);
    // Health and the document need no key; embeddings need one (any).
    assert_eq!(c.call("GET", "/health", None, None).status, 200);
    assert_eq!(c.call("GET", "/openapi.json", None, None).status, 200);
    let model = setup.model();
    let embed = json!({"input": "x", "model": model});
    assert_eq!(
        c.call("POST", "/v1/embeddings", None, Some(&embed)).status,
        401
    );
    assert_eq!(
        c.call("POST", "/v1/embeddings", Some(KEY_A), Some(&embed))
            .status,
        200
    );
    // Each key does everything in its own namespace, the admin in any.
    let rid_a = retrieval(&mut c, "a", KEY_A);
    c.ok(
        "POST",
        "/v1/namespaces/a/feedback",
        Some(KEY_A),
        Some(&json!({"retrieval_id": rid_a, "reward": 1.0})),
    );
    let rid = retrieval(&mut c, "b", ADMIN);
    c.ok(
        "POST",
        "/v1/namespaces/b/feedback",
        Some(ADMIN),
        Some(&json!({"retrieval_id": rid, "reward": 1.0})),
    );
    c.ok(
        "POST",
        "/v1/namespaces/shared/memories",
        Some(KEY_B),
        Some(&json!({"intent": "x", "experience": "y"})),
    );
    // No answer ever carries a key.
    for body in &bodies {
        for key in [KEY_A, KEY_B, ADMIN] {
            assert!(!body.contains(key), "{body}");
        }
    }
}

#[test]
fn keys_from_the_environment_and_no_open_listening_without_keys() {
    let setup = Setup::new();
    // Without keys, only loopback.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memrl"))
        .args(["serve", "--no-model", "--listen", "0.0.0.0:0", "--data"])
        .arg(setup.data())
        .env_remove("MEMRL_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen") && err.contains("--insecure"),
        "{err}"
    );
    // A bad key file names its line, never the key.
    let bad = setup.dir.path().join("bad-keys.txt");
    std::fs::write(&bad, format!("{KEY_A} a\nshortkey b\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memrl"))
        .args(["serve", "--no-model", "--data"])
        .arg(setup.data())
        .arg("--keys")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-keys.txt:2:") && !err.contains("shortkey"),
        "{err}"
    );
    // Keys from MEMRL_API_KEYS.
    let server = Server::start(
        &setup.data(),
        &["--no-model", "--dim", "4", "--model-id", "v"],
        &[("MEMRL_API_KEYS", &format!("{KEY_A} a; {ADMIN} *"))],
    );
    let mut c = server.http();
    let body = json!({"experience": "x", "embedding": [1.0, 0.0, 0.0, 0.0]});
    assert_eq!(
        c.call("POST", "/v1/namespaces/a/memories", None, Some(&body))
            .status,
        401
    );
    assert_eq!(
        c.call(
            "POST",
            "/v1/namespaces/a/memories",
            Some(KEY_A),
            Some(&body)
        )
        .status,
        200
    );
    assert_eq!(
        c.call(
            "POST",
            "/v1/namespaces/z/memories",
            Some(KEY_A),
            Some(&body)
        )
        .status,
        403
    );
}

#[test]
fn sigterm_drains_checkpoints_and_exits_zero() {
    let setup = Setup::new();
    let server = setup.start(&[]);
    let mut c = server.http();
    for i in 0..20 {
        c.ok(
            "POST",
            "/v1/namespaces/ns/memories",
            None,
            Some(&json!({"intent": format!("task {i}"), "experience": format!("lesson {i}")})),
        );
    }
    let data = server.data.clone();
    let status = server.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // Checkpointed: the log holds no record (its header only), the snapshot every memory.
    let log = std::fs::metadata(data.join("ns/bank.safetensors.wal"))
        .unwrap()
        .len();
    assert!(
        log < 128,
        "the log still holds {log} bytes after a graceful shutdown"
    );
    let server = setup.start(&[]);
    let stats = server
        .http()
        .ok("GET", "/v1/namespaces/ns/stats", None, None);
    assert_eq!(stats["memories"], 20);
}

#[test]
fn a_corrupt_namespace_is_500_and_the_others_serve() {
    let setup = Setup::new();
    {
        let server = setup.start(&[]);
        let mut c = server.http();
        for ns in ["good", "broken"] {
            c.ok(
                "POST",
                &format!("/v1/namespaces/{ns}/memories"),
                None,
                Some(&json!({"intent": "x", "experience": "y"})),
            );
        }
        server.terminate(Duration::from_secs(60));
    }
    let snapshot = setup.data().join("broken").join("bank.safetensors");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&snapshot, bytes).unwrap();
    let server = setup.start(&[]);
    let mut c = server.http();
    let r = c.call("GET", "/v1/namespaces/broken/stats", None, None);
    assert_eq!((r.status, r.error_kind().as_str()), (500, "corrupt"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        !message.contains(&setup.data().display().to_string()),
        "{message}"
    );
    assert!(message.contains("<data>"), "{message}");
    assert_eq!(
        c.ok("GET", "/v1/namespaces/good/stats", None, None)["memories"],
        1
    );
    // An operator can still delete it.
    c.ok("DELETE", "/v1/namespaces/broken", None, None);
}
