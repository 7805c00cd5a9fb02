//! Hermetic embedder tests on a tiny BERT the tests build themselves (see common/tiny_model.rs).
//!
//! The reference is candle-transformers' own `BertModel`, run the textbook way: a padded batch
//! with an attention mask, then masked mean (or CLS) pooling and L2 normalisation. Our packed
//! encoder, with its fused CPU kernels and with the portable path CUDA and Metal run, must agree
//! with it on every text.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::tiny_model::{self, TinyPooling};
use memrl::embed::ComputePath;
use memrl::embed::Embedder;
use memrl::models::{resolve, Pooling, ResolveOptions};
use memrl::Error;

fn texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "",
        " ",
        "a",
        "Hello, world!",
        "parse the date of the file",
        "naïve café",
        "東京",
        "🙂 emoji",
        "what is the error in the agent task? fix it fast.",
        "repeat repeat repeat repeat repeat repeat repeat repeat repeat repeat repeat repeat",
        "the memory of the agent is read and written to a file, and the test runs slow or fast",
        "UPPER case Testing",
        "tab\tand\nnewline",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Long texts that get truncated, of several lengths.
    for n in [20, 40, 70] {
        t.push(vec!["word"; n].join(" "));
    }
    t
}

/// The textbook computation with candle-transformers' BertModel.
fn reference(dir: &Path, texts: &[String], max_len: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    use candle_transformers::models::bert::{BertModel, Config};
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let model = BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .unwrap();
    let mut out = Vec::new();
    for text in texts {
        // One text at a time: padding-free, so the reference cannot share a bug with batching.
        let enc = tokenizer.encode(text.as_str(), true).unwrap();
        let n = enc.get_ids().len();
        let ids = Tensor::new(enc.get_ids(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let types = Tensor::new(enc.get_type_ids(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
        let states = model
            .forward(&ids, &types, Some(&mask))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let pooled = match pooling {
            Pooling::Mean => (states.sum(0).unwrap() / n as f64).unwrap(),
            Pooling::Cls => states.get(0).unwrap(),
        };
        let v: Vec<f32> = pooled.to_vec1().unwrap();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.push(v.iter().map(|x| x / norm).collect());
    }
    out
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tiny(pooling: TinyPooling, max_seq: Option<usize>) -> (tempfile::TempDir, Embedder) {
    let dir = tempfile::tempdir().unwrap();
    tiny_model::write(dir.path(), pooling, max_seq, 42);
    let embedder = Embedder::from_dir(dir.path(), "tiny", &common::device()).unwrap();
    (dir, embedder)
}

fn assert_matches_reference(pooling: TinyPooling, expected: Pooling) {
    let (dir, mut embedder) = tiny(pooling, Some(24));
    assert_eq!(embedder.pooling(), expected);
    assert_eq!(embedder.dim(), tiny_model::HIDDEN);
    let texts = texts();
    let want = reference(dir.path(), &texts, 24, expected);
    for path in [ComputePath::Auto, ComputePath::Portable] {
        embedder.set_compute_path(path);
        let got = embedder.embed(&texts).unwrap().to_rows().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let diff = max_abs(g, w);
            assert!(
                diff <= 1e-5,
                "{path:?} {:?}: differs from the reference by {diff}",
                texts[i]
            );
        }
    }
}

#[test]
fn mean_pooling_matches_candle_transformers_bert() {
    assert_matches_reference(TinyPooling::Mean, Pooling::Mean);
}

#[test]
fn cls_pooling_matches_candle_transformers_bert() {
    assert_matches_reference(TinyPooling::Cls, Pooling::Cls);
}

#[test]
fn results_do_not_depend_on_batching_order_or_budget() {
    let (_dir, mut embedder) = tiny(TinyPooling::Mean, Some(24));
    let texts = texts();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            embedder
                .embed(&[t.as_str()])
                .unwrap()
                .to_rows()
                .unwrap()
                .remove(0)
        })
        .collect();
    for budget in [24, 50, 1000] {
        embedder.set_batch_tokens(budget).unwrap();
        // Reversed input order: the output must follow it.
        let reversed: Vec<&str> = texts.iter().rev().map(String::as_str).collect();
        let out = embedder.embed(&reversed).unwrap().to_rows().unwrap();
        for (i, row) in out.iter().enumerate() {
            let diff = max_abs(row, &alone[texts.len() - 1 - i]);
            assert!(diff <= 1e-5, "budget {budget}, text {i}: {diff}");
        }
    }
    assert!(
        embedder.set_batch_tokens(23).is_err(),
        "a budget below max_seq_length must be refused"
    );
}

#[test]
fn rows_are_unit_vectors_and_truncation_is_counted() {
    let (_dir, embedder) = tiny(TinyPooling::Mean, Some(24));
    let texts = texts();
    let out = embedder.embed(&texts).unwrap();
    assert_eq!(out.vectors.dims(), &[texts.len(), tiny_model::HIDDEN]);
    for row in out.to_rows().unwrap() {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // Exactly the texts longer than 24 tokens untruncated, counted by the tokenizer itself.
    let tokenizer = tokenizers::Tokenizer::from_file(_dir.path().join("tokenizer.json")).unwrap();
    let long: Vec<usize> = (0..texts.len())
        .filter(|&i| {
            tokenizer
                .encode(texts[i].as_str(), true)
                .unwrap()
                .get_ids()
                .len()
                > 24
        })
        .collect();
    assert!(
        long.len() >= 3,
        "the fixture should have long texts: {long:?}"
    );
    assert_eq!(out.truncated, long);
    assert_eq!(embedder.max_tokens(), 24);
    let empty = embedder.embed::<&str>(&[]).unwrap();
    assert_eq!(empty.vectors.dims(), &[0, tiny_model::HIDDEN]);
}

#[test]
fn without_sentence_bert_config_the_limit_is_the_model_positions() {
    let (_dir, embedder) = tiny(TinyPooling::Mean, None);
    assert_eq!(embedder.max_tokens(), tiny_model::POSITIONS);
    let out = embedder.embed(&[vec!["word"; 200].join(" ")]).unwrap();
    assert_eq!(out.truncated, vec![0]);
    assert_eq!(out.tokens, tiny_model::POSITIONS);
}

fn load_err(dir: &Path) -> String {
    match Embedder::from_dir(dir, "tiny", &Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_model_folders_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);

    std::fs::write(
        dir.path().join("config.json"),
        "{\n \"hidden_size\": 32,\n oops }",
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("line 3"),
        "{err}"
    );
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);

    let pool = dir.path().join("1_Pooling/config.json");
    std::fs::write(&pool, r#"{"pooling_mode_max_tokens": true}"#).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("1_Pooling") && err.contains("pooling_mode_max_tokens"),
        "{err}"
    );
    std::fs::write(
        &pool,
        r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    assert!(load_err(dir.path()).contains("exactly one"));
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);

    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    assert!(load_err(dir.path()).contains("tokenizer.json"));
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(load_err(dir.path()).contains("tokenizer.json: missing"));
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);

    // Weights for a different shape: the tensor name is in the message.
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"intermediate_size\":64", "\"intermediate_size\":65");
    std::fs::write(&config, text).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("intermediate"),
        "{err}"
    );
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);

    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    assert!(load_err(dir.path()).contains("model.safetensors"));
}

#[test]
fn a_registry_name_with_a_local_folder_of_other_files_is_a_checksum_error() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 1);
    let options = ResolveOptions {
        local_dir: Some(dir.path().to_path_buf()),
        ..ResolveOptions::default()
    };
    let err = resolve("all-MiniLM-L6-v2", &options, &mut |_| {}).unwrap_err();
    let Error::Checksum {
        path,
        expected,
        found,
    } = &err
    else {
        panic!("expected a checksum error, got {err}");
    };
    assert!(path.starts_with(dir.path()));
    assert_ne!(expected, found);
    let text = err.to_string();
    assert!(
        text.contains(expected.as_str()) && text.contains(found.as_str()),
        "{text}"
    );
}

#[test]
fn a_folder_outside_the_registry_resolves_unverified() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model::write(dir.path(), TinyPooling::Cls, Some(24), 3);
    let path = dir.path().to_str().unwrap();
    let model = resolve(path, &ResolveOptions::default(), &mut |_| {}).unwrap();
    assert!(!model.verified && model.spec.is_none());
    let embedder = Embedder::load(&model, &Device::Cpu).unwrap();
    assert_eq!(embedder.pooling(), Pooling::Cls);
    assert_eq!(embedder.name(), path);
}

#[test]
fn a_bank_with_an_embedder_works_at_the_text_level() {
    let (_dir, embedder) = tiny(TinyPooling::Mean, Some(24));
    let bank = memrl::Bank::options()
        .embedder(embedder)
        .device(common::device())
        .in_memory()
        .unwrap();
    let intents = ["parse the date", "fix the bug in the test", "hello world"];
    let memories = intents
        .iter()
        .map(|intent| memrl::NewMemory::new(*intent, format!("how to {intent}")))
        .collect();
    let ids = bank.add_many(memories).unwrap();
    let r = bank.retrieve("fix the bug in the test").unwrap().remove(0);
    assert_eq!(r.hits[0].experience, "how to fix the bug in the test");
    // Text and vector queries agree: the bank's embedder made the keys.
    let vector = bank
        .embed_rows(&["fix the bug in the test"], "a test query")
        .unwrap();
    let by_vector = bank.retrieve(memrl::Queries::Rows(&vector)).unwrap();
    assert_eq!(by_vector[0].hits, r.hits);
    bank.feedback(r.id, 1.0).unwrap();
    assert!(bank.get(ids[1]).unwrap().q > 0.0);
    // A bank of another model refuses this embedder.
    let (_dir2, other) = tiny(TinyPooling::Cls, Some(24));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    memrl::Bank::options()
        .dim(other.dim())
        .model_id("another-model")
        .open(&path)
        .unwrap();
    let e = memrl::Bank::options()
        .embedder(other)
        .open(&path)
        .unwrap_err();
    assert!(matches!(e, memrl::Error::ModelMismatch { .. }), "{e}");
}
