//! `memrl simulate`: the learning benchmark of [`memrl_bench::simulate`] (its module docs give the
//! world's generative model): a markdown table, a JSON file of every figure and the learning
//! curves as SVG and PNG.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::ingest::{read_jsonl, TaskRecord};
use memrl::{LearningConfig, RetrievalConfig};
use memrl_bench::simulate::{
    simulate, MeanStd, Report, SimConfig, Simulation, Variant, SWEPT_OPTIONS,
};

use super::plot::learning_curves;
use super::ModelArgs;

pub(crate) const SIMULATE_HELP: &str = "\
Run the learning benchmark: a simulated agent world where similarity is not utility.

No LLM runs. Tasks are real corpus lines (JSON Lines with `text` and `source`; by default the \
10,000 BIG-bench sentences shipped with memrl in data/corpus.jsonl), embedded by the real model. An attempt \
succeeds with probability logistic(base difficulty + the hidden effects of the injected \
memories): a memory helps its own task by its hidden quality, helps tasks of the same source by \
half of it, and harms tasks of other sources however alike they read. Every attempt writes a \
memory. Policies: No memory, RAG (lambda 0), MemP (the MemRL loop with alpha 0), MemRL (lambda \
0.5, alpha 0.3), an oracle re-ranker that knows the hidden effects, a lambda sweep, and the \
engine's learning options beside the paper's rule (MemRL+baseline, +Thompson, +UCB, +failure \
prior, their best combination MemRL+best, and MemRL+margin, the last two each with its own \
lambda sweep; --paper-only leaves them \
out); all see the same world and the same random draws. --variant picks a declared world variant. Delta is calibrated per world (the paper's top-20% \
pairwise similarity) unless --delta is given.

Writes <OUT>/results.md, <OUT>/results.json, <OUT>/learning-curves.svg and .png.";

#[derive(Args)]
pub(crate) struct SimulateArgs {
    /// Passes over the task set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    epochs: u64,
    /// Tasks per world, drawn from the corpus.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tasks: u64,
    /// Worlds to run (seeds FIRST_SEED, FIRST_SEED + 1, ...).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    seeds: u64,
    /// Seed of the first world.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    #[command(flatten)]
    shared: SimArgs,
    /// Output directory (created if missing).
    #[arg(long, default_value = "memrl-sim")]
    out: PathBuf,
}

/// What `simulate` and `demo` share: the corpus, the engine settings and the model.
#[derive(Args)]
pub(crate) struct SimArgs {
    /// Task corpus (JSON Lines with `text` and `source`). Default: the 10,000 BIG-bench
    /// sentences compiled into memrl (data/corpus.jsonl of its repository).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Phase A's similarity gate; default: calibrated on each world's tasks.
    #[arg(long)]
    delta: Option<f32>,
    /// Intent keys kept by Phase A.
    #[arg(long, default_value_t = 10)]
    k1: usize,
    /// Memories injected per attempt.
    #[arg(long, default_value_t = 5)]
    k2: usize,
    /// The world: `default` (today's), or a declared variant: `sparse` (higher base success,
    /// 30% of attempts write a memory, as in ALFWorld), `binary` (rewards 0 / 1), `k2-3` (k1 5,
    /// k2 3; overrides --k1 and --k2), `equal-quality` (reflections as good as scripts).
    #[arg(long, default_value = "default")]
    variant: String,
    /// Leave out the engine's learning options beside the paper's rule (baseline credit,
    /// Thompson, UCB, failure prior, their combination): the paper's policies only.
    #[arg(long)]
    paper_only: bool,
    #[command(flatten)]
    model: ModelArgs,
}

impl SimArgs {
    /// A config with these settings over `tasks`, `epochs` and `seeds`.
    pub(crate) fn config(&self, tasks: u64, epochs: u64, seeds: Vec<u64>) -> Result<SimConfig> {
        let variant = Variant::named(&self.variant)?;
        let mut config = SimConfig {
            tasks: tasks as usize,
            epochs: epochs as usize,
            seeds,
            retrieval: RetrievalConfig {
                k1: self.k1,
                k2: self.k2,
                ..RetrievalConfig::default()
            },
            learning: LearningConfig::default(),
            options: !self.paper_only,
            ..SimConfig::default()
        };
        if let Some(delta) = self.delta {
            config.retrieval.delta = delta;
            config.calibrate_delta = false;
        }
        variant.apply(&mut config);
        Ok(config)
    }

    /// Reads the corpus, loads the model and runs the simulation, printing progress to stderr.
    pub(crate) fn run(&self, config: &SimConfig) -> Result<Simulation> {
        let (corpus, name) = match &self.corpus {
            Some(path) => (
                read_jsonl::<TaskRecord>(path)?.collect::<memrl::Result<Vec<_>>>()?,
                path.display().to_string(),
            ),
            None => (memrl_bench::corpus()?, "the shipped corpus".to_string()),
        };
        if corpus.len() < config.tasks {
            bail!(
                "{name} has {} lines; {} tasks were asked for",
                corpus.len(),
                config.tasks
            );
        }
        let device = self.model.device()?;
        let embedder = self.model.embedder(None, &device)?;
        Ok(simulate(&corpus, &embedder, config, &mut |line| {
            eprintln!("{line}")
        })?)
    }
}

pub(crate) fn run(args: &SimulateArgs) -> Result<()> {
    let seeds = (0..args.seeds).map(|i| args.first_seed + i).collect();
    let config = args.shared.config(args.tasks, args.epochs, seeds)?;
    let simulation = args.shared.run(&config)?;
    let table = write_outputs(&simulation.report, &args.out)?;
    println!("{table}");
    print_locations(&args.out);
    Ok(())
}

/// Writes results.md, results.json and the pictures into `out`; returns the markdown.
pub(crate) fn write_outputs(report: &Report, out: &Path) -> Result<String> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create directory {}", out.display()))?;
    let table = markdown(report);
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write("results.md", table.as_bytes())?;
    write(
        "results.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    learning_curves(
        report,
        &out.join("learning-curves.svg"),
        &out.join("learning-curves.png"),
    )?;
    Ok(table)
}

pub(crate) fn print_locations(out: &Path) {
    println!(
        "figures: {0}/results.md, every number: {0}/results.json, picture: {0}/learning-curves.svg (and .png)",
        out.display()
    );
}

fn cell(m: MeanStd, seeds: usize) -> String {
    if seeds > 1 {
        format!("{:.3} ± {:.3}", m.mean, m.std)
    } else {
        format!("{:.3}", m.mean)
    }
}

/// The report as markdown: the settings, the policies, the sweep.
pub(crate) fn markdown(report: &Report) -> String {
    let config = &report.config;
    let n = config.seeds.len();
    let deltas: Vec<f32> = report.seeds.iter().map(|s| s.delta).collect();
    let (dmin, dmax) = deltas
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &d| (a.min(d), b.max(d)));
    let delta = if config.calibrate_delta {
        if n > 1 {
            format!("delta calibrated per world ({dmin:.3}-{dmax:.3})")
        } else {
            format!("delta calibrated ({dmin:.3})")
        }
    } else {
        format!("delta {:.3}", config.retrieval.delta)
    };
    let seeds = match (config.seeds.first(), config.seeds.last()) {
        (Some(a), Some(b)) if n > 1 => format!("{n} seeds ({a}-{b}), mean ± sd"),
        (Some(a), _) => format!("seed {a}"),
        _ => String::new(),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} tasks x {} epochs, {seeds}; model {}; k1 {}, k2 {}, {delta}; MemRL lambda {}, alpha {}, q_init {}; rewards +1 / {}; world {}; {:.0} s\n",
        config.tasks,
        config.epochs,
        report.model,
        config.retrieval.k1,
        config.retrieval.k2,
        config.lambda,
        config.learning.alpha,
        config.learning.q_init,
        config.failure_reward,
        serde_json::to_string(&config.world).unwrap_or_default(),
        report.seconds
    );
    let _ = writeln!(
        s,
        "| policy | epoch 1 | last epoch | CSR | forgetting | all epochs | harmful injections, last epoch | corr(Q, quality) | corr(Q, task ease) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let swept: Vec<&str> = report.sweep.iter().map(|p| p.policy.as_str()).collect();
    for p in &report.policies {
        if (swept.contains(&p.policy.name.as_str()) && p.policy.name != "MemRL")
            || p.policy.name.contains(" lambda=")
        {
            continue;
        }
        let fit = |f: Option<MeanStd>| f.map_or("-".to_string(), |m| cell(m, n));
        let m = &p.summary;
        let harmful = p.harmful_share.last().copied().unwrap_or(0.0);
        let harmful = if p.policy.name == "No memory" {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * harmful)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {harmful} | {} | {} |",
            p.policy.name,
            cell(m.per_epoch[0], n),
            cell(m.last_epoch, n),
            cell(m.csr, n),
            cell(m.forgetting, n),
            cell(m.mean_success, n),
            fit(p.q_vs_quality),
            fit(p.q_vs_task_ease),
        );
    }
    let swept: Vec<&str> = SWEPT_OPTIONS
        .into_iter()
        .filter(|name| report.policy(name).is_some())
        .collect();
    let _ = writeln!(
        s,
        "\nMemRL lambda sweep (alpha {}){}:\n\n| lambda | epoch 1 | last epoch | CSR | forgetting |{}\n|---|---|---|---|---|{}",
        config.learning.alpha,
        if swept.is_empty() {
            String::new()
        } else {
            format!(", and the same sweep of {}", swept.join(" and "))
        },
        swept
            .iter()
            .map(|name| format!(" {name}: last epoch | forgetting |"))
            .collect::<String>(),
        "---|---|".repeat(swept.len()),
    );
    for point in &report.sweep {
        if let Some(p) = report.policy(&point.policy) {
            let m = &p.summary;
            let mut row = format!(
                "| {} | {} | {} | {} | {} |",
                point.lambda,
                cell(m.per_epoch[0], n),
                cell(m.last_epoch, n),
                cell(m.csr, n),
                cell(m.forgetting, n)
            );
            for name in &swept {
                let option = if point.lambda == config.lambda {
                    report.policy(name)
                } else {
                    report.policy(&format!("{name} lambda={}", point.lambda))
                };
                if let Some(o) = option {
                    let _ = write!(
                        row,
                        " {} | {} |",
                        cell(o.summary.last_epoch, n),
                        cell(o.summary.forgetting, n)
                    );
                }
            }
            let _ = writeln!(s, "{row}");
        }
    }
    s
}
