//! The simulated world: real task texts, hidden difficulties, and the hidden effect of every
//! memory. The generative model is written out in the [module docs](super).

use serde::{Deserialize, Serialize};

use memrl::ingest::TaskRecord;
use memrl::internal::SplitMix64;

use crate::{Error, Result};

/// The world's hidden parameters (see the [module docs](super) for the model they drive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldParams {
    /// Mean of a task's base logit (its success log-odds without memory).
    pub base_logit_mean: f32,
    /// Standard deviation of the base logits across tasks.
    pub base_logit_sd: f32,
    /// Mean hidden quality of a memory written after a success (a script of what worked).
    pub success_quality_mean: f32,
    /// Mean hidden quality of a memory written after a failure (a reflection on what went wrong).
    pub failure_quality_mean: f32,
    /// Standard deviation of the hidden quality around those means.
    pub quality_sd: f32,
    /// Share of a memory's quality that carries to another task of the same source (skill).
    pub skill_transfer: f32,
    /// Scale of the harm a memory does to a task of another source: `scale * |N(0, 1)|`.
    pub cross_source_harm: f32,
    /// Share of attempts that write a memory (1: every attempt, the default), decided per
    /// (epoch, task) by a draw every policy shares.
    pub write_share: f32,
}

impl Default for WorldParams {
    fn default() -> Self {
        Self {
            base_logit_mean: -0.5,
            base_logit_sd: 1.0,
            success_quality_mean: 0.6,
            failure_quality_mean: 0.2,
            quality_sd: 0.6,
            skill_transfer: 0.5,
            cross_source_harm: 0.3,
            write_share: 1.0,
        }
    }
}

impl WorldParams {
    /// Checks that every parameter is finite and every scale non-negative.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("base_logit_mean", self.base_logit_mean, false),
            ("base_logit_sd", self.base_logit_sd, true),
            ("success_quality_mean", self.success_quality_mean, false),
            ("failure_quality_mean", self.failure_quality_mean, false),
            ("quality_sd", self.quality_sd, true),
            ("skill_transfer", self.skill_transfer, true),
            ("cross_source_harm", self.cross_source_harm, true),
        ];
        for (field, value, scale) in fields {
            if !value.is_finite() {
                return Err(Error::config(field, value, "must be a finite number"));
            }
            if scale && value < 0.0 {
                return Err(Error::config(field, value, "must be >= 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.write_share) {
            return Err(Error::config(
                "write_share",
                self.write_share,
                "must be in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// The hidden truth about one memory, known to the world (and the oracle), never to the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryTruth {
    /// Index of the task whose attempt wrote the memory.
    pub task: usize,
    /// Whether that attempt succeeded.
    pub success: bool,
    /// Effect on its own task's log-odds; `skill_transfer` times this on same-source tasks.
    pub quality: f32,
    /// Harm (>= 0) to the log-odds of a task from another source.
    pub harm: f32,
}

/// One task of the world.
#[derive(Debug, Clone)]
pub struct Task {
    /// The task text (a corpus line), embedded as the query and as the intent of its memories.
    pub text: String,
    /// Index of the task's source in [`World::sources`].
    pub source: usize,
    /// The text's embedding (a unit vector).
    pub embedding: Vec<f32>,
    /// Success log-odds without memory.
    pub base_logit: f32,
}

/// Streams of the world's random draws, one per purpose, so that adding a draw of one kind never
/// shifts another.
#[derive(Clone, Copy)]
enum Stream {
    Sample = 1,
    BaseLogit,
    Order,
    Attempt,
    Quality,
    Harm,
    Write,
}

/// A seeded world: the tasks, their hidden difficulty, the order of every epoch and every draw.
///
/// Everything random is a pure function of the seed and of (epoch, task), so every policy run on
/// the same world faces the same tasks in the same order with the same draws (common random
/// numbers): differences between policies are the policies'.
#[derive(Debug, Clone)]
pub struct World {
    seed: u64,
    params: WorldParams,
    tasks: Vec<Task>,
    sources: Vec<String>,
    orders: Vec<Vec<usize>>,
}

/// `n` distinct line indices out of `lines`, drawn uniformly with the world's seed.
pub fn sample_tasks(lines: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    if n == 0 || n > lines {
        return Err(Error::config(
            "tasks",
            n,
            "must be at least 1 and at most the number of corpus lines",
        ));
    }
    // A partial Fisher-Yates shuffle of 0..lines, then the chosen lines in file order.
    let mut rng = stream(seed, Stream::Sample, 0);
    let mut all: Vec<usize> = (0..lines).collect();
    for i in 0..n {
        let j = i + rng.below((lines - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut chosen = all[..n].to_vec();
    chosen.sort_unstable();
    Ok(chosen)
}

fn stream(seed: u64, purpose: Stream, item: u64) -> SplitMix64 {
    SplitMix64::for_item(
        seed ^ (purpose as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        item,
    )
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl World {
    /// A world over `records` (the sampled task lines) with their `embeddings`, run for `epochs`.
    pub fn new(
        records: Vec<TaskRecord>,
        embeddings: Vec<Vec<f32>>,
        params: WorldParams,
        epochs: usize,
        seed: u64,
    ) -> Result<World> {
        params.validate()?;
        if records.is_empty() || records.len() != embeddings.len() {
            return Err(Error::config(
                "tasks",
                format!("{} texts, {} embeddings", records.len(), embeddings.len()),
                "needs at least one task and one embedding per task",
            ));
        }
        if epochs == 0 {
            return Err(Error::config("epochs", epochs, "must be at least 1"));
        }
        let mut sources: Vec<String> = Vec::new();
        let mut tasks = Vec::with_capacity(records.len());
        for (t, (record, embedding)) in records.into_iter().zip(embeddings).enumerate() {
            let source = match sources.iter().position(|s| *s == record.source) {
                Some(i) => i,
                None => {
                    sources.push(record.source);
                    sources.len() - 1
                }
            };
            let z = stream(seed, Stream::BaseLogit, t as u64).gaussian();
            tasks.push(Task {
                text: record.text,
                source,
                embedding,
                base_logit: params.base_logit_mean + params.base_logit_sd * z,
            });
        }
        let n = tasks.len();
        let orders = (0..epochs)
            .map(|e| {
                let mut rng = stream(seed, Stream::Order, e as u64);
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                order
            })
            .collect();
        Ok(World {
            seed,
            params,
            tasks,
            sources,
            orders,
        })
    }

    /// The seed everything was drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The hidden parameters.
    pub fn params(&self) -> &WorldParams {
        &self.params
    }

    /// The tasks, indexed as in the histories.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The distinct source names, indexed by [`Task::source`].
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Number of epochs.
    pub fn epochs(&self) -> usize {
        self.orders.len()
    }

    /// The order in which epoch `epoch` visits the tasks (a permutation of the task indices).
    pub fn order(&self, epoch: usize) -> &[usize] {
        &self.orders[epoch]
    }

    fn item(&self, epoch: usize, task: usize) -> u64 {
        (epoch * self.tasks.len() + task) as u64
    }

    /// The uniform draw that decides the attempt at `task` in `epoch`: success iff it is below
    /// the success probability.
    pub fn attempt_draw(&self, epoch: usize, task: usize) -> f64 {
        stream(self.seed, Stream::Attempt, self.item(epoch, task)).next_f64()
    }

    /// Whether the attempt at `task` in `epoch` writes a memory: always with the default
    /// `write_share` of 1 (no draw is made), else with that probability.
    pub fn writes(&self, epoch: usize, task: usize) -> bool {
        self.params.write_share >= 1.0
            || stream(self.seed, Stream::Write, self.item(epoch, task)).next_f64()
                < f64::from(self.params.write_share)
    }

    /// The hidden truth of the memory written after the attempt at `task` in `epoch`. The normal
    /// draws are shared by every policy; only the outcome (which sets the mean) is the policy's.
    pub fn memory_truth(&self, epoch: usize, task: usize, success: bool) -> MemoryTruth {
        let item = self.item(epoch, task);
        let p = &self.params;
        let mean = if success {
            p.success_quality_mean
        } else {
            p.failure_quality_mean
        };
        MemoryTruth {
            task,
            success,
            quality: mean + p.quality_sd * stream(self.seed, Stream::Quality, item).gaussian(),
            harm: p.cross_source_harm * stream(self.seed, Stream::Harm, item).gaussian().abs(),
        }
    }

    /// The change a memory makes to the log-odds of `task` when injected into its attempt.
    pub fn effect(&self, memory: &MemoryTruth, task: usize) -> f32 {
        if memory.task == task {
            memory.quality
        } else if self.tasks[memory.task].source == self.tasks[task].source {
            self.params.skill_transfer * memory.quality
        } else {
            -memory.harm
        }
    }

    /// The probability that an attempt at `task` with `injected` memories succeeds:
    /// `logistic(base_logit + sum of effects)`.
    pub fn success_probability(&self, task: usize, injected: &[MemoryTruth]) -> f64 {
        let gain: f32 = injected.iter().map(|m| self.effect(m, task)).sum();
        logistic(f64::from(self.tasks[task].base_logit + gain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str, source: &str) -> TaskRecord {
        TaskRecord {
            text: text.into(),
            source: source.into(),
        }
    }

    fn world(seed: u64) -> World {
        let records = vec![record("a", "s1"), record("b", "s1"), record("c", "s2")];
        let embeddings = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        World::new(records, embeddings, WorldParams::default(), 3, seed).unwrap()
    }

    #[test]
    fn sampling_is_seeded_distinct_and_in_file_order() {
        let a = sample_tasks(100, 30, 5).unwrap();
        assert_eq!(a, sample_tasks(100, 30, 5).unwrap());
        assert_ne!(a, sample_tasks(100, 30, 6).unwrap());
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[29] < 100);
        assert_eq!(sample_tasks(5, 5, 1).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(sample_tasks(5, 6, 1).is_err());
        assert!(sample_tasks(5, 0, 1).is_err());
    }

    #[test]
    fn effects_follow_task_and_source_not_similarity() {
        let w = world(1);
        let m = MemoryTruth {
            task: 0,
            success: true,
            quality: 0.8,
            harm: 0.25,
        };
        assert_eq!(w.effect(&m, 0), 0.8);
        assert_eq!(w.effect(&m, 1), 0.5 * 0.8);
        // Task 2 is closer to task 0 (cosine 0.6) than task 1 is (0.0), yet it is harmed.
        assert_eq!(w.effect(&m, 2), -0.25);
        let p0 = w.success_probability(2, &[]);
        assert!((p0 - logistic(f64::from(w.tasks()[2].base_logit))).abs() < 1e-12);
        assert!(w.success_probability(2, &[m]) < p0);
        assert!(w.success_probability(0, &[m]) > w.success_probability(0, &[]));
    }

    #[test]
    fn draws_are_common_to_policies_and_seeded() {
        let (a, b) = (world(3), world(3));
        for e in 0..3 {
            assert_eq!(a.order(e), b.order(e));
            let mut sorted = a.order(e).to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2]);
            for t in 0..3 {
                assert_eq!(a.attempt_draw(e, t), b.attempt_draw(e, t));
                // The outcome moves the quality's mean only: same normal draw either way.
                let (s, f) = (a.memory_truth(e, t, true), a.memory_truth(e, t, false));
                let p = WorldParams::default();
                let gap = p.success_quality_mean - p.failure_quality_mean;
                assert!((s.quality - f.quality - gap).abs() < 1e-6);
                assert_eq!(s.harm, f.harm);
                assert!(s.harm >= 0.0);
            }
        }
        assert_ne!(a.attempt_draw(0, 0), world(4).attempt_draw(0, 0));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let bad = WorldParams {
            quality_sd: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let nan = WorldParams {
            base_logit_mean: f32::NAN,
            ..Default::default()
        };
        assert!(nan.validate().is_err());
        assert!(World::new(vec![], vec![], WorldParams::default(), 1, 0).is_err());
        let one = || (vec![record("a", "s")], vec![vec![1.0]]);
        let (r, e) = one();
        assert!(World::new(r, e, WorldParams::default(), 0, 0).is_err());
    }
}
