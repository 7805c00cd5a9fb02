//! `memrl pipe` end to end: an agent loop through one long-running process. Every request gets
//! one answer, in order, with its id; failures are answers with an error kind, never the end of
//! the loop; what the loop wrote is in the bank's files when it ends.

mod support;

use serde_json::{json, Value};
use support::{ok, s, Setup, MEMORIES};

/// Runs `memrl pipe ARGS` with `requests` on stdin (one per line) and returns its answers.
fn pipe(t: &Setup, args: &[&str], requests: &[Value]) -> Vec<Value> {
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    pipe_raw(t, args, input.as_bytes())
}

fn pipe_raw(t: &Setup, args: &[&str], input: &[u8]) -> Vec<Value> {
    let mut all = vec!["pipe"];
    all.extend_from_slice(args);
    let out = t.run_with_input(&all, false, input);
    ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn error_kind(answer: &Value) -> &str {
    assert_eq!(answer["ok"], false, "{answer}");
    answer["error"]["kind"].as_str().unwrap()
}

#[test]
fn an_agent_loop_through_the_pipe() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    t.index(&t.write("memories.jsonl", MEMORIES), &bank, true);
    let b = s(&bank);
    // First round: retrieve, then feedback by the retrieval id it gave.
    let answers = pipe(
        &t,
        &["--bank", b],
        &[
            json!({"op": "retrieve", "id": "r1", "text": "parse the date", "delta": -1, "k2": 2}),
            json!({"op": "stats", "id": 2}),
        ],
    );
    assert_eq!(answers.len(), 2);
    assert_eq!(
        (&answers[0]["id"], &answers[0]["ok"]),
        (&json!("r1"), &json!(true))
    );
    let hits = answers[0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    for field in [
        "id",
        "intent",
        "experience",
        "success",
        "metadata",
        "q",
        "sim",
        "zsim",
        "zq",
        "score",
    ] {
        assert!(hits[0].get(field).is_some(), "{field}: {}", hits[0]);
    }
    assert_eq!(answers[1]["memories"], 3);

    // A retrieval id lives in the process that issued it: another process does not know it.
    let retrieval = answers[0]["retrieval"].as_str().unwrap().to_string();
    let answers = pipe(
        &t,
        &["--bank", b],
        &[json!({"op": "feedback", "retrieval": retrieval, "reward": 1})],
    );
    assert_eq!(error_kind(&answers[0]), "not_found");

    // A whole loop in one process, request by request as an agent drives it: retrieve, report,
    // learn, write memories, change the config, look.
    let mut child = t
        .command(&["pipe", "--bank", b], false)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ask = move |request: Value| -> Value {
        use std::io::{BufRead, Write};
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let r = ask(json!({"op": "retrieve", "id": 1, "text": "hello world", "delta": -1, "k2": 1}));
    let (retrieval, used) = (
        r["retrieval"].as_str().unwrap().to_string(),
        r["hits"][0]["id"].as_u64().unwrap(),
    );
    let q_before = r["hits"][0]["q"].as_f64().unwrap();
    let f = ask(json!({"op": "feedback", "id": 2, "retrieval": retrieval, "reward": 1}));
    assert_eq!(
        (&f["ok"], &f["updates"], &f["id"]),
        (&json!(true), &json!(1), &json!(2)),
        "{f}"
    );
    // Reported once only.
    let again = ask(json!({"op": "feedback", "retrieval": retrieval, "reward": 1}));
    assert_eq!(error_kind(&again), "not_found");
    let g = ask(json!({"op": "get", "memory_id": used}));
    let q_after = g["memory"]["q"].as_f64().unwrap();
    assert!(
        (q_after - (q_before + 0.3 * (1.0 - q_before))).abs() < 1e-6,
        "{g}"
    );
    // By memory ids, with a learning option for this batch only.
    let f = ask(json!({"op": "feedback", "memory_ids": [0, 1], "reward": -1, "alpha": 0.5}));
    assert_eq!(f["memories"], 2, "{f}");
    let a = ask(
        json!({"op": "add", "memory": {"intent": "book a flight", "experience": "by airport code", "success": true, "id": 500}}),
    );
    assert_eq!(a["ids"], json!([500]), "{a}");
    let a = ask(
        json!({"op": "add", "memories": [{"intent": "x", "experience": "y"}, {"intent": "z", "experience": "w", "q": 0.5}]}),
    );
    assert_eq!(a["ids"].as_array().unwrap().len(), 2, "{a}");
    let c = ask(
        json!({"op": "set_config", "learning": {"alpha": 0}, "retrieval": {"k2": 3, "zsim": {"mean": 0.1, "std": 0.2}}}),
    );
    assert_eq!(
        (&c["learning"]["alpha"], &c["retrieval"]["k2"]),
        (&json!(0.0), &json!(3)),
        "{c}"
    );
    assert_eq!(
        c["retrieval"]["zsim"],
        json!({"mode": "fixed", "mean": 0.1, "std": 0.2})
    );
    let r = ask(json!({"op": "retrieve", "texts": ["a", "b"], "delta": -1, "zsim": "pool"}));
    assert_eq!(r["results"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["results"][0]["hits"].as_array().unwrap().len(), 3);
    let calibrated = ask(json!({"op": "calibrate", "write": true}));
    assert!(calibrated["delta"].is_number(), "{calibrated}");
    let removed = ask(json!({"op": "remove", "memory_id": 500}));
    assert_eq!(removed["removed"]["intent"], "book a flight");
    assert_eq!(
        ask(json!({"op": "checkpoint", "id": "c"})),
        json!({"id": "c", "ok": true})
    );
    drop(ask); // closes stdin: the loop ends
    assert!(child.wait().unwrap().success());

    // Everything the loop wrote is in the bank.
    let memories = t.export(&bank);
    assert_eq!(memories.len(), 5);
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", b, "--json"], false)).trim()).unwrap();
    assert_eq!(config["learning"]["alpha"], 0.0);
    assert_eq!(config["retrieval"]["delta"], calibrated["delta"]);
}

#[test]
fn a_failed_request_is_an_answer_and_the_loop_goes_on() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    t.index(&t.write("memories.jsonl", MEMORIES), &bank, true);
    let b = s(&bank);
    let before = t.files(&bank);
    let mut input = Vec::new();
    let lines: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"not json".to_vec(), Some("invalid_input")),
        (b"[1, 2]".to_vec(), Some("invalid_input")),
        (b"{\"id\": 1}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"fly\", \"id\": 2}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"retrieve\", \"txt\": \"a\"}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"retrieve\", \"text\": \"a\", \"k2\": 0}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"retrieve\", \"embedding\": [1, 0]}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"feedback\", \"retrieval\": \"12\", \"reward\": 1}".to_vec(), Some("not_found")),
        (b"{\"op\": \"feedback\", \"memory_ids\": [999], \"reward\": 1}".to_vec(), Some("not_found")),
        (b"{\"op\": \"feedback\", \"memory_ids\": [0], \"reward\": 1, \"reward_range\": {\"min\": -0.5, \"max\": 0.5, \"out_of_range\": \"reject\"}}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"add\", \"memory\": {\"intent\": \"a\", \"experience\": \"x\", \"sucess\": true}}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"add\", \"memory\": {\"intent\": \"a\", \"experience\": \"x\", \"id\": 100}}".to_vec(), Some("conflict")),
        (b"{\"op\": \"get\", \"memory_id\": 12345}".to_vec(), Some("not_found")),
        (b"{\"op\": \"set_config\", \"learning\": {\"alpha\": 2}}".to_vec(), Some("invalid_input")),
        (b"{\"op\": \"config\", \"verbose\": true}".to_vec(), Some("invalid_input")),
        (b"\xff\xfe".to_vec(), Some("invalid_input")),
        (b"".to_vec(), None),
        (b"{\"op\": \"stats\", \"id\": \"last\"}".to_vec(), None),
    ];
    for (line, _) in &lines {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let answers = pipe_raw(&t, &["--bank", b], &input);
    let expected: Vec<&Option<&str>> = lines
        .iter()
        .filter(|(l, _)| !l.is_empty())
        .map(|(_, k)| k)
        .collect();
    assert_eq!(answers.len(), expected.len(), "{answers:#?}");
    for (answer, kind) in answers.iter().zip(expected) {
        match kind {
            Some(kind) => assert_eq!(error_kind(answer), *kind, "{answer}"),
            None => assert_eq!(answer["ok"], true, "{answer}"),
        }
    }
    // Errors name the line they answer and, for unknown fields, the field meant.
    assert_eq!(answers[0]["error"]["line"], 1);
    assert!(answers[4]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did you mean `text`"));
    assert!(answers[10]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did you mean `success`"));
    assert_eq!(answers[3]["id"], 2);
    assert_eq!(answers.last().unwrap()["id"], "last");
    // Nothing was written.
    assert_eq!(t.files(&bank), before);
}

#[test]
fn a_read_only_pipe_refuses_writes_and_a_new_bank_is_created() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    t.index(&t.write("memories.jsonl", MEMORIES), &bank, true);
    let answers = pipe(
        &t,
        &["--bank", s(&bank), "--read-only"],
        &[
            json!({"op": "retrieve", "text": "a", "delta": -1}),
            json!({"op": "feedback", "memory_ids": [0], "reward": 1}),
        ],
    );
    assert_eq!(answers[0]["ok"], true);
    assert_eq!(error_kind(&answers[1]), "invalid_input");
    assert!(answers[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read-only"));

    // A missing bank: created empty, with the options given, vectors only.
    let fresh = t.path("fresh.safetensors");
    let answers = pipe(
        &t,
        &[
            "--bank",
            s(&fresh),
            "--no-model",
            "--dim",
            "2",
            "--model-id",
            "m",
            "--k2",
            "1",
            "--sync",
            "never",
        ],
        &[
            json!({"op": "add", "memories": [{"intent": "a", "experience": "x", "embedding": [1, 0]}, {"intent": "b", "experience": "y", "embedding": [0, 1]}]}),
            json!({"op": "retrieve", "embedding": [0.9, 0.1], "delta": -1}),
            json!({"op": "retrieve", "text": "a"}),
        ],
    );
    assert_eq!(answers[0]["ids"], json!([0, 1]));
    assert_eq!(answers[1]["hits"].as_array().unwrap().len(), 1);
    assert_eq!(answers[1]["hits"][0]["intent"], "a");
    assert!(
        answers[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embedder"),
        "{}",
        answers[2]
    );
    assert_eq!(t.export(&fresh).len(), 2);
}
