//! The `memrl` binary end to end, on the tiny model the tests build (no download): every command
//! this file covers, and its error paths (exit code, a message naming file, line and field, and
//! the bank on disk untouched).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::common::tiny_model::{self, TinyPooling};
use support::{common, failed, ok, s, Setup, MEMORIES};

#[test]
fn index_then_query_then_extend() {
    let t = Setup::new();
    let input = t.write("memories.jsonl", MEMORIES);
    let bank = t.path("bank.safetensors");
    let out = t.index(&input, &bank, true);
    assert!(
        out.contains("created") && out.contains("+3 memories"),
        "{out}"
    );

    // The query uses the bank's own model when --model is not given.
    let out = t.query(
        &bank,
        &["--text", "parse the date", "--json", "--delta", "-1"],
    );
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["query"], "parse the date");
    let hits = line["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["experience"], "use the iso format");
    for field in ["id", "experience", "q", "sim", "zsim", "zq", "score"] {
        assert!(hits[0].get(field).is_some(), "hit lacks {field}: {out}");
    }

    // Extending keeps what is there.
    let more = t.write(
        "more.jsonl",
        "{\"intent\": \"book a flight\", \"experience\": \"search by airport code\"}\n",
    );
    let out = t.index(&more, &bank, false);
    assert!(
        out.contains("extended") && out.contains("4 in all"),
        "{out}"
    );
    let out = t.query(
        &bank,
        &["--text", "hello world", "--k2", "4", "--delta", "-1"],
    );
    assert!(
        out.contains("query: hello world") && out.contains("experience"),
        "{out}"
    );
    for id in [
        "100",
        "print it",
        "search by airport code",
        "use the iso format",
    ] {
        assert!(out.contains(id), "{id} missing from\n{out}");
    }
}

#[test]
fn a_bad_line_names_file_line_and_field_and_writes_nothing() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    let bad = t.write(
        "bad.jsonl",
        "{\"intent\": \"a\", \"experience\": \"x\"}\n\n{\"intent\": \"b\"}\n",
    );
    // A new bank is not created.
    let err = failed(&t.run(&["index", "--input", s(&bad), "--bank", s(&bank)], true));
    assert!(
        err.contains("bad.jsonl:3: field `experience`: missing"),
        "{err}"
    );
    assert!(!bank.exists());

    // An existing bank is left byte for byte as it was.
    let good = t.write("good.jsonl", MEMORIES);
    t.index(&good, &bank, true);
    let before = std::fs::read(&bank).unwrap();
    let wrong_type = t.write(
        "wrong.jsonl",
        "{\"intent\": \"a\", \"experience\": \"x\", \"q\": \"high\"}\n",
    );
    let err = failed(&t.run(
        &["index", "--input", s(&wrong_type), "--bank", s(&bank)],
        false,
    ));
    assert!(
        err.contains("wrong.jsonl:1: field `q`: expected a number"),
        "{err}"
    );
    let utf8 = t.path("utf8.jsonl");
    std::fs::write(&utf8, b"{\"intent\": \"\xff\", \"experience\": \"x\"}\n").unwrap();
    let err = failed(&t.run(&["index", "--input", s(&utf8), "--bank", s(&bank)], false));
    assert!(err.contains("utf8.jsonl:1: not valid UTF-8"), "{err}");
    let missing = t.path("missing.jsonl");
    let err = failed(&t.run(
        &["index", "--input", s(&missing), "--bank", s(&bank)],
        false,
    ));
    assert!(err.contains("missing.jsonl"), "{err}");
    assert_eq!(std::fs::read(&bank).unwrap(), before);
}

#[test]
fn add_one_memory_and_refuse_another_model() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    let out = ok(&t.run(
        &[
            "add",
            "--bank",
            s(&bank),
            "--intent",
            "book a flight",
            "--experience",
            "search by airport code",
            "--success",
            "--q",
            "-0.25",
            "--id",
            "42",
        ],
        true,
    ));
    assert!(out.contains("added memory 42"), "{out}");
    let out = t.query(&bank, &["--text", "flight", "--json", "--delta", "-1"]);
    assert!(
        out.contains("\"id\":42") && out.contains("\"q\":-0.25"),
        "{out}"
    );

    // Further adds are log records; once the log outgrows the snapshot, the command
    // checkpoints: a new snapshot holding everything, and an empty log (its 32-byte header).
    let log = t.path("bank.safetensors.wal");
    let mut checkpointed = false;
    for i in 0..20 {
        let snapshot = std::fs::read(&bank).unwrap();
        let intent = format!("task number {i}");
        ok(&t.run(
            &[
                "add",
                "--bank",
                s(&bank),
                "--intent",
                &intent,
                "--experience",
                &"a long experience ".repeat(40),
            ],
            true,
        ));
        if std::fs::metadata(&log).unwrap().len() == 32 {
            assert_ne!(std::fs::read(&bank).unwrap(), snapshot);
            checkpointed = true;
            break;
        }
        assert_eq!(
            std::fs::read(&bank).unwrap(),
            snapshot,
            "add {i} rewrote the snapshot"
        );
    }
    assert!(checkpointed, "the log never outgrew the snapshot");
    let out = ok(&t.run(&["inspect", "--bank", s(&bank), "--json"], false));
    let memories = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["summary"]
        ["memories"]
        .as_u64()
        .unwrap();
    assert!(memories >= 3, "{memories}");

    // A bank of one model does not take keys from another.
    let other = t.path("other-model");
    tiny_model::write(&other, TinyPooling::Cls, Some(24), 7);
    let before = std::fs::read(&bank).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memrl"));
    cmd.args([
        "add",
        "--bank",
        s(&bank),
        "--intent",
        "a",
        "--experience",
        "b",
        "--model",
    ])
    .arg(&other);
    let err = failed(&cmd.output().unwrap());
    assert!(err.contains("holds keys of model"), "{err}");
    assert_eq!(std::fs::read(&bank).unwrap(), before);
}

#[test]
fn query_errors_are_clear() {
    let t = Setup::new();
    let bank = t.path("bank.safetensors");
    let err = failed(&t.run(&["query", "--bank", s(&bank), "--text", "x"], false));
    assert!(err.contains("no such bank"), "{err}");

    let input = t.write("memories.jsonl", MEMORIES);
    t.index(&input, &bank, true);
    let queries = t.write(
        "queries.jsonl",
        "{\"text\": \"parse\"}\n{\"txt\": \"oops\"}\n",
    );
    let err = failed(&t.run(
        &["query", "--bank", s(&bank), "--input", s(&queries)],
        false,
    ));
    assert!(
        err.contains("queries.jsonl:2: field `txt`: unknown field")
            && err.contains("did you mean `text`?"),
        "{err}"
    );
    let err = failed(&t.run(
        &["query", "--bank", s(&bank), "--text", "x", "--k2", "0"],
        false,
    ));
    assert!(err.contains("k2"), "{err}");

    // Many queries from a file, one JSON line each.
    let queries = t.write("ok.jsonl", "{\"text\": \"parse\"}\n{\"text\": \"bug\"}\n");
    let out = t.query(&bank, &["--input", s(&queries), "--json", "--delta", "-1"]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn embed_writes_rows_and_their_lines_or_nothing() {
    let t = Setup::new();
    let input = t.write(
        "corpus.jsonl",
        "{\"text\": \"parse the date\", \"source\": \"a\"}\n\n{\"text\": \"\", \"source\": \"b\"}\n{\"text\": \"hello world\"}\n",
    );
    let out = t.path("e.safetensors");
    let stdout = ok(&t.run(&["embed", "--input", s(&input), "--out", s(&out)], true));
    assert!(stdout.contains("embedded 3 texts"), "{stdout}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("embeddings").unwrap().shape(),
        &[3, tiny_model::HIDDEN]
    );
    let lines: Vec<u64> = st
        .tensor("lines")
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(lines, vec![1, 3, 4]);
    let rows = embedding_rows(&out);
    for row in rows.chunks(tiny_model::HIDDEN) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row norm {norm}");
    }

    // Another field, missing on line 2: an error naming it, and no output file.
    let out2 = t.path("e2.safetensors");
    let err = failed(&t.run(
        &[
            "embed",
            "--input",
            s(&input),
            "--field",
            "source",
            "--out",
            s(&out2),
        ],
        true,
    ));
    assert!(
        err.contains("corpus.jsonl:4: field `source`: missing"),
        "{err}"
    );
    assert!(!out2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
}

/// The `embeddings` tensor of a file `memrl embed` wrote, flat.
fn embedding_rows(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("embeddings")
        .unwrap()
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn embed_at_int8_is_close_to_f32_and_a_bad_precision_is_refused() {
    let t = Setup::new();
    let input = t.write(
        "corpus.jsonl",
        "{\"text\": \"parse the date\"}\n{\"text\": \"hello world, what is the error\"}\n",
    );
    let cache = t.path("cache");
    let embed = |precision: &str, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_memrl"))
            .args(["embed", "--input", s(&input), "--out", s(out), "--model"])
            .arg(&t.model)
            .args(["--precision", precision])
            // The int8 weight cache goes here, not into the user's cache.
            .env("MEMRL_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let (f32_out, int8_out) = (t.path("f32.safetensors"), t.path("int8.safetensors"));
    ok(&embed("f32", &f32_out));
    ok(&embed("int8", &int8_out));
    let (a, b) = (embedding_rows(&f32_out), embedding_rows(&int8_out));
    assert_eq!(a.len(), 2 * tiny_model::HIDDEN);
    for (x, y) in a
        .chunks(tiny_model::HIDDEN)
        .zip(b.chunks(tiny_model::HIDDEN))
    {
        let cos: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        assert!(cos > 0.999, "int8 row cosine to f32 {cos}");
    }
    let cached: Vec<_> = std::fs::read_dir(cache.join("int8/v1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let err = failed(&embed("int4", &t.path("bad.safetensors")));
    assert!(err.contains("`f32` or `int8`"), "{err}");
}

#[test]
fn feedback_moves_q_atomically_and_inspect_reports_it() {
    let t = Setup::new();
    let input = t.write("memories.jsonl", MEMORIES);
    let bank = t.path("bank.safetensors");
    t.index(&input, &bank, true);

    // Ids: 0 and 1 assigned in order, 100 given.
    let outcomes = t.write(
        "outcomes.jsonl",
        "{\"memory_ids\": [0, 100], \"reward\": 1}\n{\"memory_ids\": [1], \"reward\": -1}\n",
    );
    // The batch goes to the write-ahead log; the snapshot is not rewritten for it.
    let log = t.path("bank.safetensors.wal");
    let snapshot_before = std::fs::read(&bank).unwrap();
    let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let out = ok(&t.run(
        &["feedback", "--bank", s(&bank), "--input", s(&outcomes)],
        false,
    ));
    assert!(
        out.contains("2 outcomes, 3 Q updates over 3 memories"),
        "{out}"
    );
    assert_eq!(std::fs::read(&bank).unwrap(), snapshot_before);
    assert!(std::fs::metadata(&log).unwrap().len() > log_before);
    // A torn tail (a crash mid-append) is reported and dropped; the batch before it stays.
    let mut torn = std::fs::read(&log).unwrap();
    torn.extend_from_slice(&[200, 1, 0, 0, 7, 7]);
    std::fs::write(&log, &torn).unwrap();

    let inspected = t.run(&["inspect", "--bank", s(&bank), "--json"], false);
    let warning = String::from_utf8_lossy(&inspected.stderr).to_string();
    assert!(
        warning.contains("ignored the last 6 bytes of its log"),
        "{warning}"
    );
    let out = ok(&inspected);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let summary = &v["summary"];
    assert_eq!(summary["memories"], 3);
    assert_eq!(summary["q_signs"], serde_json::json!([2, 0, 1]));
    // alpha 0.3: 0.5 -> 0.65 (id 0), 0 -> 0.3 (id 100), 0 -> -0.3 (id 1).
    assert_eq!(summary["top"][0][0], 0);
    assert_eq!(summary["bottom"][0][0], 1);
    let q0 = summary["top"][0][1].as_f64().unwrap();
    assert!((q0 - 0.65).abs() < 1e-6, "{q0}");
    let text = ok(&t.run(&["inspect", "--bank", s(&bank)], false));
    for needle in [
        "memories    3",
        "median",
        "> 0: 66.67%",
        "highest Q:",
        "lowest Q:",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }

    // An unknown id rejects the whole file; the bank on disk is untouched (the writer has cut
    // the torn tail off first).
    ok(&t.run(&["inspect", "--bank", s(&bank)], false));
    let err = failed(&t.run(
        &[
            "feedback",
            "--bank",
            s(&bank),
            "--input",
            s(&t.write("bad0.jsonl", "{\"memory_ids\": [999], \"reward\": 1}\n")),
        ],
        false,
    ));
    assert!(err.contains("unknown memory id 999"), "{err}");
    assert_eq!(
        std::fs::metadata(&log).unwrap().len() + 6,
        torn.len() as u64
    );
    let before = (std::fs::read(&bank).unwrap(), std::fs::read(&log).unwrap());
    let bad = t.write(
        "bad.jsonl",
        "{\"memory_ids\": [0], \"reward\": 1}\n{\"memory_ids\": [999], \"reward\": 1}\n",
    );
    let err = failed(&t.run(&["feedback", "--bank", s(&bank), "--input", s(&bad)], false));
    assert!(err.contains("unknown memory id 999"), "{err}");
    let bad = t.write(
        "bad2.jsonl",
        "{\"memory_ids\": [0], \"reward\": \"good\"}\n",
    );
    let err = failed(&t.run(&["feedback", "--bank", s(&bank), "--input", s(&bad)], false));
    assert!(err.contains("bad2.jsonl:1: field `reward`"), "{err}");
    assert_eq!(
        (std::fs::read(&bank).unwrap(), std::fs::read(&log).unwrap()),
        before
    );
}

#[test]
fn calibrate_from_a_bank_or_a_file_and_write_it() {
    let t = Setup::new();
    let input = t.write("memories.jsonl", MEMORIES);
    let bank = t.path("bank.safetensors");
    t.index(&input, &bank, true);
    let out = ok(&t.run(&["calibrate", "--bank", s(&bank), "--json"], false));
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (c["intents"].as_u64(), c["pairs"].as_u64()),
        (Some(3), Some(3))
    );
    let delta = c["delta"].as_f64().unwrap();

    // The same intents from the file give the same figures.
    let out = ok(&t.run(&["calibrate", "--input", s(&input), "--json"], true));
    let from_file: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        (from_file["delta"].as_f64().unwrap() - delta).abs() < 1e-5,
        "{out}"
    );

    ok(&t.run(
        &["calibrate", "--bank", s(&bank), "--write", "--fixed-zsim"],
        false,
    ));
    let out = ok(&t.run(&["inspect", "--bank", s(&bank), "--json"], false));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        (v["retrieval"]["delta"].as_f64().unwrap() - delta).abs() < 1e-6,
        "{out}"
    );
    assert_eq!(v["retrieval"]["zsim"]["mode"], "fixed", "{out}");
    let mean = v["retrieval"]["zsim"]["mean"].as_f64().unwrap();
    assert!((mean - c["mean"].as_f64().unwrap()).abs() < 1e-6, "{out}");

    let err = failed(&t.run(&["calibrate", "--input", s(&input), "--write"], true));
    assert!(err.contains("--bank"), "{err}");
}

#[test]
fn model_list_and_inspect_errors() {
    let t = Setup::new();
    // A registry model pulled from a folder of other files: the checksum error names the file.
    let err = failed(&t.run(
        &[
            "model",
            "pull",
            "all-MiniLM-L6-v2",
            "--dir",
            s(&t.model),
            "--offline",
        ],
        false,
    ));
    assert!(
        err.contains("sha256") && err.contains("tiny-model"),
        "{err}"
    );
    let quiet = t.path("quiet.safetensors");
    let out = t.run(
        &[
            "add",
            "--bank",
            s(&quiet),
            "--intent",
            "a",
            "--experience",
            "b",
            "--quiet",
        ],
        true,
    );
    assert!(ok(&out).is_empty() && quiet.exists());
    let out = ok(&t.run(&["model", "list"], false));
    assert!(
        out.contains("all-MiniLM-L6-v2") && out.contains("bge-small-en-v1.5"),
        "{out}"
    );
    let missing = t.path("none.safetensors");
    let err = failed(&t.run(&["inspect", "--bank", s(&missing)], false));
    assert!(err.contains("no such bank"), "{err}");
    let not_a_bank = t.write("junk.safetensors", "not a snapshot");
    let err = failed(&t.run(&["inspect", "--bank", s(&not_a_bank)], false));
    assert!(err.contains("junk.safetensors"), "{err}");
    let err = failed(&t.run(&["query", "--bank", s(&missing)], false));
    assert!(err.contains("--text") || err.contains("--input"), "{err}");
}

/// A corpus file of `common::task_corpus` lines.
fn corpus_file(t: &Setup) -> PathBuf {
    let lines: Vec<String> = common::task_corpus(5, 10, 9)
        .into_iter()
        .map(|r| serde_json::json!({"text": r.text, "source": r.source}).to_string())
        .collect();
    t.write("corpus.jsonl", &(lines.join("\n") + "\n"))
}

#[test]
fn simulate_writes_the_table_the_json_and_the_pictures() {
    let t = Setup::new();
    let corpus = corpus_file(&t);
    let out_dir = t.path("sim");
    let args = [
        "simulate",
        "--corpus",
        s(&corpus),
        "--tasks",
        "30",
        "--epochs",
        "3",
        "--seeds",
        "2",
        "--out",
        s(&out_dir),
    ];
    let out = ok(&t.run(&args, true));
    for row in [
        "| No memory |",
        "| RAG |",
        "| MemP |",
        "| MemRL |",
        "| Oracle |",
        "| MemRL+baseline |",
        "| MemRL+Thompson |",
        "| MemRL+UCB |",
        "| MemRL+failure prior |",
        "| MemRL+best |",
        "| MemRL+margin |",
        "| 0.25 |",
    ] {
        assert!(out.contains(row), "{row} missing from:\n{out}");
    }
    assert!(out.contains("2 seeds (1-2)"), "{out}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["seeds"].as_array().unwrap().len(), 2);
    assert_eq!(json["policies"].as_array().unwrap().len(), 23);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("results.md")).unwrap(),
        out.split("figures:").next().unwrap().trim_end().to_string() + "\n"
    );
    let png = std::fs::read(out_dir.join("learning-curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(out_dir.join("learning-curves.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("MemRL"),
        "{svg:.200}"
    );
}

#[test]
fn simulate_runs_a_declared_variant_and_the_paper_only() {
    let t = Setup::new();
    let corpus = corpus_file(&t);
    let out_dir = t.path("sim");
    let base = [
        "simulate",
        "--corpus",
        s(&corpus),
        "--tasks",
        "20",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--out",
        s(&out_dir),
    ];
    let mut args = base.to_vec();
    args.extend(["--variant", "binary", "--paper-only"]);
    let out = ok(&t.run(&args, true));
    assert!(
        out.contains("rewards +1 / 0") && !out.contains("MemRL+best"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["policies"].as_array().unwrap().len(), 9);
    let mut args = base.to_vec();
    args.extend(["--variant", "k2-3"]);
    assert!(ok(&t.run(&args, true)).contains("k1 5, k2 3"));
    let mut args = base.to_vec();
    args.extend(["--variant", "alfworld"]);
    let err = failed(&t.run(&args, true));
    assert!(err.contains("variant") && err.contains("sparse"), "{err}");
}

#[test]
fn demo_runs_and_round_trips_the_learned_bank() {
    let t = Setup::new();
    let corpus = corpus_file(&t);
    let out_dir = t.path("demo");
    let args = [
        "demo",
        "--corpus",
        s(&corpus),
        "--tasks",
        "25",
        "--epochs",
        "2",
        "--out",
        s(&out_dir),
    ];
    let out = ok(&t.run(&args, true));
    assert!(
        out.contains("| MemRL |") && out.contains("loaded it back"),
        "{out}"
    );
    // 25 tasks x 2 epochs, one memory per attempt.
    assert!(out.contains("(50 memories"), "{out}");
    let bank = ok(&t.run(
        &["inspect", "--bank", s(&out_dir.join("bank.safetensors"))],
        false,
    ));
    assert!(bank.contains("50"), "{bank}");
}

#[test]
fn simulate_reports_a_bad_corpus_line_and_writes_nothing() {
    let t = Setup::new();
    let corpus = t.write(
        "corpus.jsonl",
        "{\"text\": \"a b\", \"source\": \"x\"}\n{\"text\": \"c d\"}\n",
    );
    let out_dir = t.path("sim");
    let args = [
        "simulate",
        "--corpus",
        s(&corpus),
        "--tasks",
        "1",
        "--out",
        s(&out_dir),
    ];
    let err = failed(&t.run(&args, true));
    assert!(
        err.contains("corpus.jsonl:2") && err.contains("field `source`: missing"),
        "{err}"
    );
    let short = t.write("short.jsonl", "{\"text\": \"a b\", \"source\": \"x\"}\n");
    let args = [
        "simulate",
        "--corpus",
        s(&short),
        "--tasks",
        "5",
        "--out",
        s(&out_dir),
    ];
    let err = failed(&t.run(&args, true));
    assert!(err.contains("short.jsonl has 1 lines; 5 tasks"), "{err}");
    let missing = t.path("nope.jsonl");
    let err = failed(&t.run(
        &["demo", "--corpus", s(&missing), "--out", s(&out_dir)],
        true,
    ));
    assert!(err.contains("nope.jsonl"), "{err}");
    assert!(!out_dir.exists());
}

#[test]
fn bench_prints_a_table_and_writes_json() {
    let t = Setup::new();
    let json = t.path("bench.json");
    let args = [
        "bench",
        "--quick",
        "--n",
        "2000",
        "--b",
        "1,16",
        "--k1",
        "10",
        "--callers",
        "4",
        "--json",
        s(&json),
    ];
    let out = ok(&t.run(&args, false));
    assert!(
        out.contains("ceilings:") && out.contains("roofline"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cases = report["retrieval"].as_array().unwrap();
    // Two dtypes x two batch sizes.
    assert_eq!(cases.len(), 4);
    for case in cases {
        assert!(case["timing"]["median_s"].as_f64().unwrap() > 0.0, "{case}");
        assert!(case["roofline_fraction"].as_f64().unwrap() > 0.0, "{case}");
    }
    assert!(report["recall"][0]["recall"].as_f64().unwrap() > 0.9);
    assert!(report["outcomes"]["updates_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["snapshot"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["batching"]["callers"], 4);
    let err = failed(&t.run(&["bench", "--dtype", "f64", "--n", "10"], false));
    assert!(err.contains("f64"), "{err}");
}
