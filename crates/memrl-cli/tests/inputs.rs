//! The `memrl` binary's inputs and options, as classes: every unknown field of every JSON Lines
//! input is named; every error of a streamed input names its file and line; embeddings in
//! lines are used; options that cannot apply are errors; every retrieval and learning option is
//! reachable; every value-taking flag of every bank command, at its extremes, gives a clear
//! error or works, never a panic.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::{failed, ok, s, Setup, MEMORIES};

/// The tiny model's dimension.
const DIM: usize = 32;

fn bank_with_memories(t: &Setup) -> std::path::PathBuf {
    let bank = t.path("bank.safetensors");
    t.index(&t.write("memories.jsonl", MEMORIES), &bank, true);
    bank
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An input of `lines` with the bad one at line `at` (1-based), good ones elsewhere, blank lines
/// among them so that lines and items differ.
fn input_with(
    t: &Setup,
    name: &str,
    good: impl Fn(usize) -> String,
    bad: &str,
    at: usize,
) -> std::path::PathBuf {
    let mut text = String::new();
    for line in 1..=at {
        if line == at {
            text.push_str(bad);
        } else if line % 7 == 3 {
            // a blank line
        } else {
            text.push_str(&good(line));
        }
        text.push('\n');
    }
    t.write(name, &text)
}

/// The commands that read a JSON Lines input, each with a good line and a way to run it.
struct Reader {
    name: &'static str,
    good: fn(usize) -> String,
    run: fn(&Setup, &Path, &Path, &[&str]) -> std::process::Output,
}

fn readers() -> Vec<Reader> {
    vec![
        Reader {
            name: "index",
            good: |i| format!(r#"{{"intent": "task {i}", "experience": "do {i}"}}"#),
            run: |t, bank, input, extra| {
                let mut args = vec!["index", "--bank", s(bank), "--input", s(input)];
                args.extend_from_slice(extra);
                t.run(&args, false)
            },
        },
        Reader {
            name: "add --input",
            good: |i| format!(r#"{{"intent": "task {i}", "experience": "do {i}"}}"#),
            run: |t, bank, input, extra| {
                let mut args = vec!["add", "--bank", s(bank), "--input", s(input)];
                args.extend_from_slice(extra);
                t.run(&args, false)
            },
        },
        Reader {
            name: "query --input",
            good: |i| format!(r#"{{"text": "task {i}"}}"#),
            run: |t, bank, input, extra| {
                let mut args = vec!["query", "--bank", s(bank), "--input", s(input), "--json"];
                args.extend_from_slice(extra);
                t.run(&args, false)
            },
        },
        Reader {
            name: "feedback",
            good: |_| r#"{"memory_ids": [0], "reward": 1}"#.to_string(),
            run: |t, bank, input, extra| {
                let mut args = vec!["feedback", "--bank", s(bank), "--input", s(input)];
                args.extend_from_slice(extra);
                t.run(&args, false)
            },
        },
    ]
}

#[test]
fn every_unknown_field_of_every_input_is_named_or_a_warning_on_request() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let misspelt: [(&str, &str, &str, &str); 4] = [
        (
            "index",
            r#"{"intent": "a", "experience": "x", "sucess": true}"#,
            "sucess",
            "success",
        ),
        (
            "add --input",
            r#"{"intent": "a", "experience": "x", "Q": 0.9}"#,
            "Q",
            "q",
        ),
        ("query --input", r#"{"text": "a", "idd": 3}"#, "idd", "id"),
        (
            "feedback",
            r#"{"memory_ids": [0], "reward": 1, "rewrd": 1}"#,
            "rewrd",
            "reward",
        ),
    ];
    for reader in readers() {
        let (_, bad, field, meant) = misspelt.iter().find(|m| m.0 == reader.name).unwrap();
        let input = input_with(&t, "in.jsonl", reader.good, bad, 5);
        let before = t.files(&bank);
        let err = failed(&(reader.run)(&t, &bank, &input, &[]));
        assert!(
            err.contains(&format!("in.jsonl:5: field `{field}`: unknown field"))
                && err.contains(&format!("did you mean `{meant}`?")),
            "{}: {err}",
            reader.name
        );
        assert_eq!(
            t.files(&bank),
            before,
            "{} wrote after an error",
            reader.name
        );
        // Relaxed to a warning, naming the same place; the command goes on.
        let out = (reader.run)(&t, &bank, &input, &["--unknown-fields", "warn"]);
        ok(&out);
        let warning = String::from_utf8_lossy(&out.stderr);
        assert!(
            warning.contains(&format!("warning: {}:5: field `{field}`", s(&input))),
            "{}: {warning}",
            reader.name
        );
    }
}

#[test]
fn every_error_of_a_streamed_input_names_its_file_and_line() {
    let t = Setup::new();
    let bank = bank_with_memories(&t); // ids 0, 1 and 100
    let big = "x".repeat(2 << 20);
    let huge_experience = format!(r#"{{"intent": "a", "experience": "{big}"}}"#);
    let memory_cases: Vec<(String, &str)> = vec![
        // Found by the reader.
        (
            r#"{"intent": "a", "experience": "x", "q": "high"}"#.into(),
            "field `q`: expected a number",
        ),
        (r#"{"intent": "a""#.into(), "not valid JSON"),
        (
            r#"{"intent": "a", "experience": "x", "embedding": [0, 0]}"#.into(),
            "field `embedding`: every component is 0",
        ),
        // Found before the batch goes in: the dimension.
        (
            r#"{"intent": "a", "experience": "x", "embedding": [1, 2]}"#.into(),
            "field `embedding`: 2 components; the bank's dimension is 32",
        ),
        // Found by the library in the batch, reported by index or id, mapped back to the line.
        (
            huge_experience,
            "field `experience`: 2097152 bytes, above the bank's limit of 1048576",
        ),
        (
            r#"{"intent": "a", "experience": "x", "id": 100}"#.into(),
            "field `id`: duplicate memory id 100: the bank already holds it",
        ),
        (
            r#"{"intent": "a", "experience": "x", "id": 7}"#.into(),
            "field `id`: duplicate memory id 7: line 2 has it too",
        ),
    ];
    for reader in readers()
        .iter()
        .filter(|r| r.name == "index" || r.name == "add --input")
    {
        for (bad, needle) in &memory_cases {
            // Line 2 gives id 7, so the last case's line 1300 repeats it. Line 1300 is item 275
            // of the second batch of 1024 that `index` adds: the line is what must be named.
            let good = |i: usize| {
                if i == 2 {
                    r#"{"intent": "seven", "experience": "x", "id": 7}"#.to_string()
                } else {
                    format!(r#"{{"intent": "task {i}", "experience": "do {i}"}}"#)
                }
            };
            let input = input_with(&t, "in.jsonl", good, bad, 1300);
            let before = t.files(&bank);
            let err = failed(&(reader.run)(&t, &bank, &input, &[]));
            assert!(
                err.contains(&format!("in.jsonl:1300: {needle}")),
                "{} with {}: {err}",
                reader.name,
                &bad[..bad.len().min(80)]
            );
            assert_eq!(
                t.files(&bank),
                before,
                "{} wrote after an error",
                reader.name
            );
        }
    }
    // Outcomes: unknown memory ids and rewards outside a rejecting range, by line.
    let feedback = |input: &Path, extra: &[&str]| {
        let mut args = vec!["feedback", "--bank", s(&bank), "--input", s(input)];
        args.extend_from_slice(extra);
        t.run(&args, false)
    };
    let good = |_: usize| r#"{"memory_ids": [0, 1], "reward": 1}"#.to_string();
    let before = t.files(&bank);
    let input = input_with(
        &t,
        "o.jsonl",
        good,
        r#"{"memory_ids": [1, 999], "reward": 1}"#,
        9,
    );
    let err = failed(&feedback(&input, &[]));
    assert!(
        err.contains("o.jsonl:9: field `memory_ids`: unknown memory id 999"),
        "{err}"
    );
    let input = input_with(
        &t,
        "o.jsonl",
        good,
        r#"{"memory_ids": [1], "reward": 3}"#,
        4,
    );
    let err = failed(&feedback(
        &input,
        &["--reward-range", "-1,1", "--out-of-range", "reject"],
    ));
    assert!(
        err.contains("o.jsonl:4: field `reward`: 3 is outside the configured reward range"),
        "{err}"
    );
    let input = input_with(
        &t,
        "o.jsonl",
        good,
        r#"{"memory_ids": [1], "reward": 1e39}"#,
        2,
    );
    let err = failed(&feedback(&input, &[]));
    assert!(err.contains("o.jsonl:2: field `reward`"), "{err}");
    assert_eq!(t.files(&bank), before);
    // Queries: a wrong dimension, by line.
    let good = |i: usize| format!(r#"{{"text": "task {i}"}}"#);
    let input = input_with(&t, "q.jsonl", good, r#"{"embedding": [1, 0, 0]}"#, 6);
    let err = failed(&t.run(&["query", "--bank", s(&bank), "--input", s(&input)], false));
    assert!(
        err.contains("q.jsonl:6: field `embedding`: 3 components"),
        "{err}"
    );
}

#[test]
fn a_byte_order_mark_at_the_start_of_an_input_is_skipped() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    let input = t.path("bom.jsonl");
    std::fs::write(
        &input,
        [b"\xef\xbb\xbf".as_slice(), MEMORIES.as_bytes()].concat(),
    )
    .unwrap();
    let out = t.index(&input, &bank, true);
    assert!(out.contains("+3 memories"), "{out}");
}

#[test]
fn embeddings_in_lines_are_the_intent_keys() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    let mut v = vec![0.0f32; DIM];
    v[3] = 2.0; // normalised on the way in
    let lines = format!(
        "{}\n{}\n",
        json!({"intent": "own vector", "experience": "e1", "id": 1, "embedding": v}),
        json!({"intent": "hello world", "experience": "e2", "id": 2})
    );
    t.index(&t.write("m.jsonl", &lines), &bank, true);
    let out = ok(&t.run(&["export", "--bank", s(&bank), "--embeddings"], false));
    let memories = json_lines(&out);
    let key: Vec<f64> = memories[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(key[3], 1.0);
    assert_eq!(key.iter().map(|x| x * x).sum::<f64>(), 1.0);
    // A query of the same direction finds it with similarity 1.
    let mut q = vec![0.0f32; DIM];
    q[3] = 0.5;
    let queries = t.write(
        "q.jsonl",
        &format!("{}\n", json!({"embedding": q, "id": "x"})),
    );
    let out = t.query(
        &bank,
        &[
            "--input",
            s(&queries),
            "--json",
            "--delta",
            "-1",
            "--k2",
            "1",
        ],
    );
    let line = &json_lines(&out)[0];
    assert_eq!(
        (line["id"].as_str(), line["hits"][0]["id"].as_u64()),
        (Some("x"), Some(1))
    );
    assert_eq!(line["hits"][0]["sim"], 1.0);

    // Vectors of another model: no model at all, every line brings its embedding.
    let foreign = t.path("foreign.safetensors");
    let lines = format!(
        "{}\n{}\n",
        json!({"intent": "a", "experience": "x", "embedding": [1.0, 0.0, 0.0]}),
        json!({"intent": "b", "experience": "y", "embedding": [0.0, 1.0, 0.0]})
    );
    let input = t.write("f.jsonl", &lines);
    let err = failed(&t.run(
        &[
            "index",
            "--bank",
            s(&foreign),
            "--input",
            s(&input),
            "--no-model",
        ],
        false,
    ));
    assert!(err.contains("--dim and --model-id"), "{err}");
    ok(&t.run(
        &[
            "index",
            "--bank",
            s(&foreign),
            "--input",
            s(&input),
            "--no-model",
            "--dim",
            "3",
            "--model-id",
            "other-model",
        ],
        false,
    ));
    let out = ok(&t.run(&["inspect", "--bank", s(&foreign), "--json"], false));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["model"].as_str(), v["dim"].as_u64()),
        (Some("other-model"), Some(3))
    );
    let no_vector = t.write("nv.jsonl", "{\"intent\": \"c\", \"experience\": \"z\"}\n");
    let err = failed(&t.run(
        &[
            "add",
            "--bank",
            s(&foreign),
            "--input",
            s(&no_vector),
            "--no-model",
        ],
        false,
    ));
    assert!(
        err.contains("nv.jsonl:1: field `embedding`: missing, and there is no model"),
        "{err}"
    );
    let err = failed(&t.run(
        &["query", "--bank", s(&foreign), "--text", "a", "--no-model"],
        false,
    ));
    assert!(err.contains("needs a model"), "{err}");
    let queries = t.write("fq.jsonl", "{\"embedding\": [0.9, 0.1, 0], \"id\": 5}\n");
    let out = t.query(
        &foreign,
        &[
            "--input",
            s(&queries),
            "--json",
            "--no-model",
            "--delta",
            "-1",
        ],
    );
    assert_eq!(json_lines(&out)[0]["hits"][0]["intent"], "a");
}

#[test]
fn options_that_cannot_apply_to_an_existing_bank_are_errors() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let more = t.write("more.jsonl", "{\"intent\": \"b\", \"experience\": \"y\"}\n");
    let before = t.files(&bank);
    for (extra, needle) in [
        (vec!["--dedup-sim", "0.5"], "dedup_sim"),
        (vec!["--dtype", "f16"], "dtype"),
        (
            vec!["--delta", "0.3"],
            "--delta set a new bank's configuration",
        ),
        (
            vec!["--alpha", "0.1", "--k2", "3"],
            "--k2, --alpha set a new bank's configuration",
        ),
        (vec!["--q-init", "0.5"], "memrl config --bank"),
    ] {
        for command in ["index", "add"] {
            let mut args = vec![command, "--bank", s(&bank), "--input", s(&more)];
            args.extend(extra.iter().copied());
            let err = failed(&t.run(&args, false));
            assert!(err.contains(needle), "{command} {extra:?}: {err}");
            assert_eq!(t.files(&bank), before);
        }
    }
    // The stored shape given again is no change: accepted.
    ok(&t.run(
        &[
            "add",
            "--bank",
            s(&bank),
            "--input",
            s(&more),
            "--dtype",
            "f32",
            "--dedup-sim",
            "0.9",
        ],
        false,
    ));
}

#[test]
fn a_new_bank_calibrates_its_delta_unless_told() {
    let t = Setup::new();
    let input = t.write("memories.jsonl", MEMORIES);
    let bank = t.path("bank.safetensors");
    let out = t.run(&["index", "--input", s(&input), "--bank", s(&bank)], true);
    let note = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(note.contains("calibrated from its 3 intents"), "{note}");
    let calibrated: Value = serde_json::from_str(
        ok(&t.run(&["calibrate", "--bank", s(&bank), "--json"], false)).trim(),
    )
    .unwrap();
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", s(&bank), "--json"], false)).trim())
            .unwrap();
    assert_eq!(config["retrieval"]["delta"], calibrated["delta"]);

    let chosen = t.path("chosen.safetensors");
    let out = t.run(
        &[
            "index",
            "--input",
            s(&input),
            "--bank",
            s(&chosen),
            "--delta",
            "0.25",
            "--k1",
            "3",
            "--alpha",
            "0",
        ],
        true,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("delta 0.25 (--delta)"));
    ok(&out);
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", s(&chosen), "--json"], false)).trim())
            .unwrap();
    assert_eq!(
        (
            config["retrieval"]["delta"].as_f64(),
            config["retrieval"]["k1"].as_u64()
        ),
        (Some(0.25), Some(3))
    );
    assert_eq!(config["learning"]["alpha"], 0.0);
}

#[test]
fn add_input_appends_one_log_record_and_leaves_the_snapshot() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let snapshot = std::fs::read(&bank).unwrap();
    let lines: String = (0..5)
        .map(|i| json!({"intent": format!("more {i}"), "experience": "x"}).to_string() + "\n")
        .collect();
    let out = ok(&t.run(
        &[
            "add",
            "--bank",
            s(&bank),
            "--input",
            s(&t.write("five.jsonl", &lines)),
        ],
        true,
    ));
    assert!(
        out.contains("added 5 memories") && out.contains("8 in all"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&bank).unwrap(),
        snapshot,
        "the snapshot was rewritten"
    );
    assert!(t.files(&bank).1.len() > 32, "nothing in the log");
    assert_eq!(t.export(&bank).len(), 8);
}

#[test]
fn queries_pass_ids_and_lines_through_and_hits_carry_the_memory() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let queries = t.write(
        "q.jsonl",
        "{\"text\": \"hello world\", \"id\": {\"task\": 9}}\n\n{\"text\": \"parse the date\"}\n",
    );
    let out = t.query(&bank, &["--input", s(&queries), "--json", "--delta", "-1"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (&lines[0]["id"], &lines[0]["line"]),
        (&json!({"task": 9}), &json!(1))
    );
    assert_eq!((lines[1].get("id"), &lines[1]["line"]), (None, &json!(3)));
    let hit = lines[0]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == 100)
        .unwrap();
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
        assert!(hit.get(field).is_some(), "hit lacks {field}: {hit}");
    }
    assert_eq!(
        (&hit["intent"], &hit["metadata"]),
        (&json!("hello world"), &json!({"source": "tests"}))
    );
}

#[test]
fn every_retrieval_and_learning_option_is_reachable() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let q = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["--text", "parse the date", "--json", "--delta", "-1"];
        args.extend_from_slice(extra);
        json_lines(&t.query(&bank, &args))[0]["hits"]
            .as_array()
            .unwrap()
            .clone()
    };
    // q_min drops members below it; off keeps them.
    assert!(q(&["--q-min", "0.4"])
        .iter()
        .all(|h| h["q"].as_f64().unwrap() >= 0.4));
    assert_eq!(q(&["--q-min", "off"]).len(), 3);
    // A margin of 0 keeps only the members as similar as the best; off keeps them all.
    let nearest = q(&["--sim-margin", "0"]);
    let best = q(&["--sim-margin", "off"])
        .iter()
        .map(|h| h["sim"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(!nearest.is_empty() && nearest.iter().all(|h| h["sim"].as_f64().unwrap() == best));
    assert_eq!(q(&["--sim-margin", "off"]).len(), 3);
    // z-clip bounds zq; --clip-zsim bounds zsim too.
    for h in q(&["--z-clip", "0.5", "--clip-zsim"]) {
        assert!(
            h["zq"].as_f64().unwrap().abs() <= 0.5 && h["zsim"].as_f64().unwrap().abs() <= 0.5,
            "{h}"
        );
    }
    // Fixed zsim statistics.
    let fixed = q(&["--zsim", "fixed:0,0.5", "--k2", "1"]);
    let h = &fixed[0];
    assert!(
        (h["zsim"].as_f64().unwrap() - h["sim"].as_f64().unwrap() / 0.5).abs() < 1e-5,
        "{h}"
    );
    // Exploration is seeded: the same seed, the same picks.
    let explore = |seed: &str| -> Vec<Value> {
        q(&["--epsilon", "1", "--seed", seed, "--k2", "2"])
            .iter()
            .map(|h| h["id"].clone())
            .collect()
    };
    assert_eq!(explore("7"), explore("7"));
    // --write stores the options given.
    ok(&t.run(
        &[
            "query",
            "--bank",
            s(&bank),
            "--text",
            "x",
            "--k2",
            "2",
            "--lambda",
            "0.25",
            "--write",
        ],
        false,
    ));
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", s(&bank), "--json"], false)).trim())
            .unwrap();
    assert_eq!(
        (
            config["retrieval"]["k2"].as_u64(),
            config["retrieval"]["lambda"].as_f64()
        ),
        (Some(2), Some(0.25))
    );
    let err = failed(&t.run(
        &["query", "--bank", s(&bank), "--text", "x", "--write"],
        false,
    ));
    assert!(err.contains("none was"), "{err}");

    // Learning: a reward range clamps a reward of 3 (Q 0.3, not 0.9), alpha for one batch,
    // alpha 0 (MemP) stored with memrl config keeps Q while counting visits.
    let outcome = t.write("o.jsonl", "{\"memory_ids\": [1], \"reward\": 3}\n");
    let out = ok(&t.run(
        &[
            "feedback",
            "--bank",
            s(&bank),
            "--input",
            s(&outcome),
            "--reward-range",
            "-1,1",
        ],
        false,
    ));
    assert!(out.contains("1 rewards clamped"), "{out}");
    let q_of = |id: u64| -> (f64, u64) {
        let m = t.export(&bank).into_iter().find(|m| m["id"] == id).unwrap();
        (m["q"].as_f64().unwrap(), m["visits"].as_u64().unwrap())
    };
    assert!((q_of(1).0 - 0.3).abs() < 1e-6);
    let minus = t.write("m.jsonl", "{\"memory_ids\": [1], \"reward\": -1}\n");
    ok(&t.run(
        &[
            "feedback",
            "--bank",
            s(&bank),
            "--input",
            s(&minus),
            "--alpha",
            "0.5",
        ],
        false,
    ));
    assert!((q_of(1).0 - (0.3 + 0.5 * (-1.0 - 0.3))).abs() < 1e-6);
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", s(&bank), "--json"], false)).trim())
            .unwrap();
    let alpha = config["learning"]["alpha"].as_f64().unwrap();
    assert!((alpha - 0.3).abs() < 1e-6, "one batch only: {alpha}");
    ok(&t.run(
        &[
            "config",
            "--bank",
            s(&bank),
            "--alpha",
            "0",
            "--q-init",
            "0.125",
        ],
        false,
    ));
    let (before, visits) = q_of(1);
    ok(&t.run(
        &["feedback", "--bank", s(&bank), "--input", s(&outcome)],
        false,
    ));
    assert_eq!(q_of(1), (before, visits + 1));
    let out = ok(&t.run(
        &[
            "add",
            "--bank",
            s(&bank),
            "--intent",
            "new",
            "--experience",
            "e",
        ],
        true,
    ));
    let id: u64 = out.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(q_of(id).0, 0.125);
    // feedback --write stores its options.
    ok(&t.run(
        &[
            "feedback",
            "--bank",
            s(&bank),
            "--input",
            s(&minus),
            "--reward-range",
            "-2,2",
            "--out-of-range",
            "reject",
            "--write",
        ],
        false,
    ));
    let config: Value =
        serde_json::from_str(ok(&t.run(&["config", "--bank", s(&bank), "--json"], false)).trim())
            .unwrap();
    assert_eq!(
        config["learning"]["reward_range"],
        json!({"min": -2.0, "max": 2.0, "out_of_range": "reject"})
    );
    let err = failed(&t.run(
        &["feedback", "--bank", s(&bank), "--input", s(&outcome)],
        false,
    ));
    assert!(err.contains("outside the configured reward range"), "{err}");
}

#[test]
fn export_writes_every_memory_and_never_over_a_file() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let memories = t.export(&bank);
    assert_eq!(
        memories
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 100]
    );
    for field in [
        "id",
        "intent",
        "experience",
        "q",
        "visits",
        "last_reward",
        "success",
        "created_ms",
        "updated_ms",
        "metadata",
    ] {
        assert!(
            memories[0].get(field).is_some(),
            "{field} missing: {}",
            memories[0]
        );
    }
    let out = t.path("out.jsonl");
    ok(&t.run(&["export", "--bank", s(&bank), "--out", s(&out)], false));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    let err = failed(&t.run(&["export", "--bank", s(&bank), "--out", s(&out)], false));
    assert!(err.contains("exists"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

/// The value-taking flags of `memrl COMMAND`, from its `--help` (the manual lists them all).
fn value_flags(t: &Setup, command: &str) -> Vec<String> {
    let help = ok(&t.run(&[command, "--help"], false));
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            let flag = line.strip_prefix("--")?;
            let (name, rest) = flag.split_once(' ').unwrap_or((flag, ""));
            let takes_value = rest.starts_with('<') || rest.starts_with("[<");
            takes_value.then(|| format!("--{name}"))
        })
        .collect()
}

#[test]
fn every_value_flag_of_every_bank_command_at_its_extremes_is_a_clear_error_or_works() {
    let t = Setup::new();
    let bank = bank_with_memories(&t);
    let memories = t.write("m.jsonl", "{\"intent\": \"a\", \"experience\": \"x\"}\n");
    let outcomes = t.write("o.jsonl", "{\"memory_ids\": [0], \"reward\": 1}\n");
    let queries = t.write("q.jsonl", "{\"text\": \"a\"}\n");
    let fresh = |name: &str| s(&t.path(name)).to_string();
    // Each command with the arguments it needs; a flag under test replaces its own.
    let commands: Vec<(&str, Vec<String>)> = vec![
        (
            "index",
            vec![
                "--input".into(),
                s(&memories).into(),
                "--bank".into(),
                fresh("index.safetensors"),
            ],
        ),
        (
            "add",
            vec![
                "--bank".into(),
                s(&bank).into(),
                "--intent".into(),
                "a".into(),
                "--experience".into(),
                "b".into(),
            ],
        ),
        (
            "query",
            vec![
                "--bank".into(),
                s(&bank).into(),
                "--text".into(),
                "a".into(),
            ],
        ),
        (
            "feedback",
            vec![
                "--bank".into(),
                s(&bank).into(),
                "--input".into(),
                s(&outcomes).into(),
            ],
        ),
        ("inspect", vec!["--bank".into(), s(&bank).into()]),
        ("calibrate", vec!["--bank".into(), s(&bank).into()]),
        ("export", vec!["--bank".into(), s(&bank).into()]),
        ("config", vec!["--bank".into(), s(&bank).into()]),
        ("pipe", vec!["--bank".into(), s(&bank).into()]),
        (
            "embed",
            vec![
                "--input".into(),
                s(&queries).into(),
                "--out".into(),
                fresh("e.safetensors"),
            ],
        ),
    ];
    // Paths and texts: extreme numbers there are file names or texts, not the class under test.
    let skip = [
        "--input",
        "--bank",
        "--out",
        "--model",
        "--text",
        "--intent",
        "--experience",
        "--field",
        "--model-id",
    ];
    let extremes = [
        "-1",
        "0",
        "18446744073709551615",
        "18446744073709551616",
        "-1e40",
        "NaN",
        "abc",
        "",
    ];
    let mut tried = 0;
    for (command, base) in &commands {
        let flags = value_flags(&t, command);
        assert!(!flags.is_empty(), "{command}: no flags found in --help");
        for flag in flags.iter().filter(|f| !skip.contains(&f.as_str())) {
            for value in extremes {
                let mut args: Vec<String> = vec![command.to_string()];
                args.extend(base.iter().cloned());
                args.push(format!("{flag}={value}"));
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                // A new bank and `embed` need the model named; the rest use the bank's own.
                let out = t.run(&argv, matches!(*command, "index" | "embed"));
                tried += 1;
                let stderr = String::from_utf8_lossy(&out.stderr);
                let code = out.status.code();
                assert!(
                    matches!(code, Some(0..=2)),
                    "{argv:?}: exit {:?} (a panic or an abort)\n{stderr}",
                    out.status
                );
                assert!(!stderr.contains("panicked"), "{argv:?}: {stderr}");
                if code != Some(0) {
                    // One clear line that says what is wrong with which value.
                    let first = stderr.lines().next().unwrap_or("");
                    assert!(first.starts_with("error:"), "{argv:?}: {stderr}");
                }
            }
        }
    }
    assert!(tried > 300, "only {tried} runs");
    // Nothing above changed the bank's memories beyond what the commands that write did.
    assert!(t.export(&bank).len() >= 3);
}
