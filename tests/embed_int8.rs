//! The int8 encoder on the tiny BERT the tests build (hermetic): it tracks the f32 encoder,
//! depends on nothing but each text, and its weight cache is written once, read back, and never
//! used when damaged. The bound on the real model is in `embed_minilm.rs`.

mod common;

use std::path::{Path, PathBuf};

use common::tiny_model::{self, TinyPooling};
use memrl::embed::{ComputePath, Embedder, EmbedderOptions, Int8Cache, Precision};
use memrl::models::{ModelSpec, Pooling, ResolvedModel, Source};
use memrl::Device;

fn texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "a",
        "Hello, world!",
        "parse the date of the file",
        "what is the error in the agent task? fix it fast.",
        "the memory of the agent is read and written to a file, and the test runs slow or fast",
        "UPPER case Testing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push(vec!["word"; 40].join(" "));
    t
}

fn int8(cache_dir: Option<&Path>) -> EmbedderOptions {
    EmbedderOptions {
        precision: Precision::Int8,
        cache_dir: cache_dir.map(Path::to_path_buf),
    }
}

fn rows(embedder: &Embedder, texts: &[String]) -> Vec<Vec<f32>> {
    embedder.embed(texts).unwrap().to_rows().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    // Both are unit vectors already.
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// A model folder, plus a cache folder beside it.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    tiny_model::write(&model, TinyPooling::Mean, Some(24), 42);
    let cache = root.path().join("cache");
    (root, model, cache)
}

#[test]
fn int8_tracks_the_f32_encoder() {
    let (_root, model, cache) = setup();
    let f32 = Embedder::from_dir(&model, "tiny", &Device::Cpu).unwrap();
    let q = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    assert_eq!(
        (f32.precision(), q.precision()),
        (Precision::F32, Precision::Int8)
    );
    assert_eq!(f32.int8_cache(), None);
    let texts = texts();
    let (want, got) = (rows(&f32, &texts), rows(&q, &texts));
    let mut worst = 1f64;
    for (w, g) in want.iter().zip(&got) {
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        worst = worst.min(cosine(w, g));
    }
    eprintln!("tiny model: worst cosine int8 vs f32 {worst:.6}");
    // 0.9998 measured; a wrong zero point, scale or rotation gives cosines far below this.
    assert!(worst > 0.999, "worst cosine {worst}");
}

#[test]
fn an_int8_vector_depends_only_on_its_text() {
    let (_root, model, cache) = setup();
    let mut q = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    let texts = texts();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| rows(&q, std::slice::from_ref(t)).remove(0))
        .collect();
    for budget in [24, 1000] {
        q.set_batch_tokens(budget).unwrap();
        let reversed: Vec<String> = texts.iter().rev().cloned().collect();
        for (i, row) in rows(&q, &reversed).iter().enumerate() {
            // Activations are quantized per token, so a neighbour cannot change a text's scale.
            assert_eq!(
                row,
                &alone[texts.len() - 1 - i],
                "budget {budget}, text {i}"
            );
        }
    }
}

#[test]
fn the_cache_is_written_once_then_read_and_gives_the_same_vectors() {
    let (_root, model, cache) = setup();
    let texts = texts();
    let first = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    let Some(Int8Cache::Written(path)) = first.int8_cache().cloned() else {
        panic!("first load: {:?}", first.int8_cache());
    };
    assert!(
        path.starts_with(&cache) && path.is_file(),
        "{}",
        path.display()
    );
    let second =
        Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    assert_eq!(second.int8_cache(), Some(&Int8Cache::Loaded(path.clone())));
    assert_eq!(rows(&first, &texts), rows(&second, &texts));
    let uncached = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(None)).unwrap();
    assert_eq!(uncached.int8_cache(), Some(&Int8Cache::Disabled));
    assert_eq!(rows(&first, &texts), rows(&uncached, &texts));
}

/// Every kind of damage is detected, reported, and repaired; the vectors are never those of a
/// damaged file.
#[test]
fn a_damaged_cache_is_detected_rebuilt_and_never_used() {
    let (_root, model, cache) = setup();
    let texts = texts();
    let good = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    let want = rows(&good, &texts);
    let Some(Int8Cache::Written(path)) = good.int8_cache().cloned() else {
        panic!("{:?}", good.int8_cache());
    };
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len();
    let flip = |at: usize| {
        let mut b = pristine.clone();
        b[at] ^= 0x10;
        b
    };
    let damages: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a data byte flipped", flip(len - 200), "checksum"),
        ("the last byte flipped", flip(len - 1), "checksum"),
        ("the header cut", pristine[..40].to_vec(), "safetensors"),
        ("the data cut", pristine[..len - 7].to_vec(), "safetensors"),
        ("emptied", Vec::new(), "safetensors"),
    ];
    for (what, bytes, reason) in damages {
        std::fs::write(&path, &bytes).unwrap();
        let q = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
        match q.int8_cache() {
            Some(Int8Cache::Rebuilt { path: p, problem }) => {
                assert_eq!(p, &path);
                assert!(problem.contains(reason), "{what}: {problem}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(rows(&q, &texts), want, "{what}");
        // The file was rewritten whole: the next load reads it.
        let next =
            Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
        assert_eq!(
            next.int8_cache(),
            Some(&Int8Cache::Loaded(path.clone())),
            "{what}"
        );
    }
}

#[test]
fn a_cache_of_other_weights_is_refused() {
    let (root, model, cache) = setup();
    let other = root.path().join("other");
    tiny_model::write(&other, TinyPooling::Mean, Some(24), 7);
    let a = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    let b = Embedder::from_dir_with(&other, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    let (Some(Int8Cache::Written(pa)), Some(Int8Cache::Written(pb))) =
        (a.int8_cache().cloned(), b.int8_cache().cloned())
    else {
        panic!("{:?} {:?}", a.int8_cache(), b.int8_cache());
    };
    assert_ne!(pa, pb, "two checkpoints share one cache file");
    // Put one model's cache where the other's belongs: its source hash gives it away.
    std::fs::copy(&pa, &pb).unwrap();
    let again = Embedder::from_dir_with(&other, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    match again.int8_cache() {
        Some(Int8Cache::Rebuilt { problem, .. }) => {
            assert!(problem.contains("checkpoint"), "{problem}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rows(&again, &texts()), rows(&b, &texts()));
}

#[test]
fn an_unwritable_cache_is_reported_and_the_load_still_works() {
    let (root, model, _) = setup();
    // A file where the cache directory should be: nothing can be created under it.
    let blocked = root.path().join("blocked");
    std::fs::write(&blocked, b"a file").unwrap();
    let q = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&blocked))).unwrap();
    match q.int8_cache() {
        Some(Int8Cache::NotWritten { path, .. }) => assert!(path.starts_with(&blocked)),
        other => panic!("{other:?}"),
    }
    let uncached = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(None)).unwrap();
    assert_eq!(rows(&q, &texts()), rows(&uncached, &texts()));
}

#[test]
fn int8_refuses_what_it_cannot_do() {
    let (_root, model, cache) = setup();
    let mut q = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(Some(&cache))).unwrap();
    q.set_compute_path(ComputePath::Portable);
    let err = q.embed(&["a"]).unwrap_err().to_string();
    assert!(err.contains("int8") && err.contains("portable"), "{err}");

    // A registry entry that does not list int8 for its model.
    let spec = ModelSpec {
        name: "tiny".into(),
        repo: "memrl-test/tiny".into(),
        revision: "0".repeat(40),
        pooling: Pooling::Mean,
        dim: tiny_model::HIDDEN,
        max_seq_length: 24,
        files: Default::default(),
        mirror: None,
        precisions: vec![Precision::F32],
    };
    let resolved = ResolvedModel {
        name: "tiny".into(),
        spec: Some(spec),
        dir: model.clone(),
        source: Source::LocalDir,
        verified: false,
    };
    let err = match Embedder::load_with(&resolved, &Device::Cpu, &int8(Some(&cache))) {
        Ok(_) => panic!("int8 loaded for a model the registry lists only f32 for"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("registry") && err.contains("f32"), "{err}");
    assert!(Embedder::load(&resolved, &Device::Cpu).is_ok());

    // On a GPU run of the suite: int8 is a CPU path and says so.
    let device = common::device();
    if !device.is_cpu() {
        let err = match Embedder::from_dir_with(&model, "tiny", &device, &int8(Some(&cache))) {
            Ok(_) => panic!("int8 loaded on {device:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("CPU only"), "{err}");
    }
}

#[test]
fn a_bank_opened_with_int8_embeds_with_int8() {
    let (_root, model, cache) = setup();
    // The bank's embedder keeps its int8 weights in memrl's cache directory; point it here (no
    // other test in this binary reads the variable: they pass their cache folder explicitly).
    std::env::set_var("MEMRL_CACHE_DIR", &cache);
    let bank = memrl::Bank::options()
        .model(model.to_str().unwrap())
        .precision(Precision::Int8)
        .dedup_sim(1.0) // no intent sharing: every text keeps its own key
        .in_memory()
        .unwrap();
    let embedder = bank
        .embedder()
        .expect("the bank loaded its embedder")
        .clone();
    assert_eq!(embedder.precision(), Precision::Int8);
    match embedder.int8_cache() {
        Some(Int8Cache::Written(path)) => assert!(path.starts_with(&cache), "{path:?}"),
        other => panic!("int8 cache {other:?}"),
    }
    // The bank's keys are the int8 vectors: a text finds its own memory at similarity 1.
    let texts = texts();
    let alone = Embedder::from_dir_with(&model, "tiny", &Device::Cpu, &int8(None)).unwrap();
    for t in &texts {
        bank.add(memrl::NewMemory::new(t.as_str(), "e")).unwrap();
    }
    let want = rows(&alone, &texts);
    for (t, w) in texts.iter().zip(&want) {
        let r = bank.retrieve(t.as_str()).unwrap().remove(0);
        let top = &r.hits[0];
        assert_eq!(bank.get(top.id).unwrap().intent, *t);
        assert!((top.sim - 1.0).abs() < 1e-5, "{t}: sim {}", top.sim);
        let got = rows(&embedder, std::slice::from_ref(t)).remove(0);
        assert_eq!(&got, w, "{t}: the bank's embedder is not the int8 one");
    }

    // A precision without a model to load is refused, not ignored.
    let f32 = Embedder::from_dir(&model, "tiny", &Device::Cpu).unwrap();
    let err = memrl::Bank::options()
        .embedder(f32)
        .precision(Precision::Int8)
        .in_memory()
        .unwrap_err()
        .to_string();
    assert!(err.contains("precision"), "{err}");
}
