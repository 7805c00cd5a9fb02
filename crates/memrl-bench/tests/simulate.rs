//! The learning benchmark (`memrl_bench::simulate`) on the tiny model: a seeded run is reproducible,
//! policies that must pick the same memories do, and the loop does what the spec says. The
//! metric definitions are tested on hand-made histories beside their code.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::tiny_model::{self, TinyPooling};
use memrl::embed::Embedder;
use memrl::ingest::TaskRecord;
use memrl::{BankConfig, LearningConfig, RetrievalConfig};
use memrl_bench::simulate::{
    run_policy, simulate, EngineSetup, LearningOptions, Policy, Report, SimConfig, Variant, World,
    WorldParams, VARIANTS,
};

fn tiny() -> (tempfile::TempDir, Embedder) {
    let dir = tempfile::tempdir().unwrap();
    tiny_model::write(dir.path(), TinyPooling::Mean, Some(24), 42);
    let embedder = Embedder::from_dir(dir.path(), "tiny", &common::device()).unwrap();
    (dir, embedder)
}

fn small_config(seeds: Vec<u64>) -> SimConfig {
    SimConfig {
        tasks: 40,
        epochs: 4,
        seeds,
        ..SimConfig::default()
    }
}

fn run(corpus: &[TaskRecord], embedder: &Embedder, config: &SimConfig) -> Report {
    simulate(corpus, embedder, config, &mut |_| {})
        .unwrap()
        .report
}

/// The report as JSON, without the wall time.
fn figures(report: &Report) -> serde_json::Value {
    let mut json = serde_json::to_value(report).unwrap();
    json["seconds"] = serde_json::Value::Null;
    json
}

#[test]
fn a_seeded_run_is_reproducible() {
    let (_dir, embedder) = tiny();
    let corpus = common::task_corpus(6, 12, 1);
    let config = small_config(vec![3, 4]);
    let a = run(&corpus, &embedder, &config);
    let b = run(&corpus, &embedder, &config);
    assert_eq!(figures(&a), figures(&b));
    let c = run(&corpus, &embedder, &small_config(vec![5, 6]));
    assert_ne!(figures(&a)["seeds"], figures(&c)["seeds"]);
    // Every policy of the config is reported, per seed and over seeds.
    let names: Vec<String> = config.policies().into_iter().map(|p| p.name).collect();
    // The paper's 9, the 6 option policies, and the 4 other lambdas of the best combination
    // and of the margin.
    assert_eq!(names.len(), 23);
    let paper_only = SimConfig {
        options: false,
        ..config.clone()
    };
    assert_eq!(paper_only.policies().len(), 9);
    for seed in &a.seeds {
        let reported: Vec<&str> = seed.runs.iter().map(|r| r.policy.as_str()).collect();
        assert_eq!(
            reported,
            names.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
    assert_eq!(a.policies.len(), names.len());
    assert_eq!(a.sweep.len(), 5);
    assert_eq!(a.policy("MemRL").unwrap().summary.per_epoch.len(), 4);
}

#[test]
fn rag_memp_and_lambda_zero_pick_the_same_memories() {
    // RAG ranks by similarity; MemP's Q never leaves q_init, so zq = 0 and it ranks by
    // similarity too; MemRL at lambda 0 ignores the Q it learns. Same picks, same outcomes.
    let (_dir, embedder) = tiny();
    let corpus = common::task_corpus(6, 12, 2);
    let report = run(&corpus, &embedder, &small_config(vec![7, 8]));
    for seed in &report.seeds {
        let run = |name: &str| seed.runs.iter().find(|r| r.policy == name).unwrap();
        let rag = run("RAG");
        for other in ["MemP", "MemRL lambda=0"] {
            assert_eq!(
                run(other).metrics,
                rag.metrics,
                "{other}, seed {}",
                seed.seed
            );
            assert_eq!(run(other).injections, rag.injections, "{other}");
        }
        // The oracle never injects a harmful memory; no memory injects nothing.
        assert!(run("Oracle")
            .injections
            .iter()
            .all(|i| i.harmful_share == 0.0));
        assert!(run("No memory")
            .injections
            .iter()
            .all(|i| i.per_attempt == 0.0));
        assert!(rag.injections.iter().skip(1).all(|i| i.per_attempt > 0.0));
        // Q is learned only where alpha is set.
        assert!(run("MemRL").q_fit.is_some() && rag.q_fit.is_none());
    }
}

#[test]
fn the_loop_follows_the_spec() {
    let (_dir, embedder) = tiny();
    let corpus = common::task_corpus(4, 8, 3);
    let texts: Vec<&str> = corpus.iter().map(|r| r.text.as_str()).collect();
    let rows = embedder.embed(&texts).unwrap().to_rows().unwrap();
    let world = World::new(corpus.clone(), rows, WorldParams::default(), 3, 11).unwrap();
    let setup = EngineSetup {
        bank: BankConfig::new(embedder.dim(), embedder.name()),
        retrieval: RetrievalConfig {
            delta: -1.0,
            ..RetrievalConfig::default()
        },
        learning: LearningConfig::default(),
        failure_reward: -1.0,
    };
    let device = common::device();

    // Without memory, an attempt succeeds exactly when the shared draw is below the base odds.
    let none = run_policy(&world, &Policy::no_memory(), &setup, &device).unwrap();
    for (e, row) in none.history.iter().enumerate() {
        for (t, &success) in row.iter().enumerate() {
            let p = world.success_probability(t, &[]);
            assert_eq!(success, world.attempt_draw(e, t) < p, "epoch {e}, task {t}");
        }
    }
    assert!(none.bank.is_none());

    // MemRL writes one memory per attempt, and the Q of injected memories moves with rewards.
    let memrl = run_policy(&world, &Policy::memrl("MemRL", 0.5, 0.3), &setup, &device).unwrap();
    let bank = memrl.bank.unwrap();
    assert_eq!(bank.len(), 3 * corpus.len());
    bank.debug_check().unwrap();
    let memories = bank.memories();
    let visited: Vec<_> = memories.iter().filter(|m| m.visits > 0).collect();
    assert!(!visited.is_empty());
    assert!(visited
        .iter()
        .all(|m| m.q != 0.0 && m.last_reward.is_some()));
    // Each memory records its attempt's outcome.
    let successes = memrl.history.iter().flatten().filter(|&&s| s).count();
    assert_eq!(memories.iter().filter(|m| m.success).count(), successes);

    // Without learning (RAG), every Q stays at q_init.
    let rag = run_policy(&world, &Policy::rag(), &setup, &device).unwrap();
    assert!(rag.bank.unwrap().memories().iter().all(|m| m.q == 0.0));
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let (_dir, embedder) = tiny();
    let corpus = common::task_corpus(2, 5, 4);
    let mut config = small_config(vec![1]);
    config.tasks = corpus.len() + 1;
    assert!(simulate(&corpus, &embedder, &config, &mut |_| {}).is_err());
    for bad in [
        SimConfig {
            epochs: 0,
            ..small_config(vec![1])
        },
        SimConfig {
            seeds: vec![],
            ..small_config(vec![1])
        },
        SimConfig {
            sweep: vec![1.5],
            ..small_config(vec![1])
        },
    ] {
        let config = SimConfig { tasks: 5, ..bad };
        assert!(simulate(&corpus, &embedder, &config, &mut |_| {}).is_err());
    }
}

#[test]
fn the_options_run_seeded_and_do_what_their_fields_say() {
    let (_dir, embedder) = tiny();
    let corpus = common::task_corpus(4, 8, 5);
    let texts: Vec<&str> = corpus.iter().map(|r| r.text.as_str()).collect();
    let rows = embedder.embed(&texts).unwrap().to_rows().unwrap();
    let world = World::new(corpus.clone(), rows.clone(), WorldParams::default(), 3, 13).unwrap();
    let setup = EngineSetup {
        bank: BankConfig::new(embedder.dim(), embedder.name()),
        retrieval: RetrievalConfig {
            delta: -1.0,
            ..RetrievalConfig::default()
        },
        learning: LearningConfig::default(),
        failure_reward: -1.0,
    };
    let device = common::device();
    let options = LearningOptions {
        thompson: 1.0,
        ucb: 0.5,
        baseline_rate: Some(0.3),
        q_init_failure: Some(-0.6),
        sim_margin: Some(0.3),
    };
    let policy = Policy::memrl_with("all", 0.5, 0.3, options);
    let a = run_policy(&world, &policy, &setup, &device).unwrap();
    let b = run_policy(&world, &policy, &setup, &device).unwrap();
    // Thompson's draws are seeded by the world and the attempt: the same run twice.
    assert_eq!(a.history, b.history);
    let bank = a.bank.unwrap();
    bank.debug_check().unwrap();
    let memories = bank.memories();
    let learned = |ms: &[memrl::Memory]| -> Vec<(u64, u32, u64, Option<u32>)> {
        ms.iter()
            .map(|m| (m.id, m.q.to_bits(), m.visits, m.baseline.map(f32::to_bits)))
            .collect()
    };
    assert_eq!(learned(&memories), learned(&b.bank.unwrap().memories()));
    // A never-updated memory of a failure starts at the prior, one of a success at q_init.
    for m in memories.iter().filter(|m| m.visits == 0) {
        assert_eq!(m.q, if m.success { 0.0 } else { -0.6 }, "{m:?}");
    }
    // Baseline credit keeps one baseline per key, in every memory under it that has one.
    assert!(memories.iter().any(|m| m.baseline.is_some()));
    assert!(memories
        .iter()
        .all(|m| m.baseline.is_none_or(|b| (-1.0..=1.0).contains(&b))));
    for m in memories.iter().filter(|m| m.baseline.is_some()) {
        let key = bank.intent_key(m.id).unwrap();
        for other in memories.iter().filter(|o| o.baseline.is_some()) {
            if bank.intent_key(other.id).unwrap() == key {
                assert_eq!(m.baseline, other.baseline);
            }
        }
    }

    // The paper's MemRL is the same policy with every option off.
    assert!(Policy::memrl("MemRL", 0.5, 0.3).options.is_paper());

    // Variants: each named one exists and changes its world; an unknown name is an error.
    let base = SimConfig::default();
    for v in VARIANTS {
        let mut c = base.clone();
        Variant::named(v.name).unwrap().apply(&mut c);
        assert_eq!(c == base, v.name == "default", "{}", v.name);
    }
    assert!(Variant::named("alfworld").is_err());

    // With write_share below 1, only some attempts write a memory (the same ones for every
    // policy: the draw is the world's).
    let sparse = WorldParams {
        write_share: 0.3,
        ..WorldParams::default()
    };
    let world = World::new(corpus.clone(), rows, sparse, 3, 13).unwrap();
    let writes = (0..3)
        .flat_map(|e| (0..corpus.len()).map(move |t| (e, t)))
        .filter(|&(e, t)| world.writes(e, t))
        .count();
    let run = run_policy(&world, &Policy::rag(), &setup, &device).unwrap();
    assert_eq!(run.bank.unwrap().len(), writes);
    assert!(writes < 3 * corpus.len());
}
