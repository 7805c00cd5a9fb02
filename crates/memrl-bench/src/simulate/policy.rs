//! The policies compared, and the agent loop that runs one of them through a world.

use std::collections::HashMap;

use serde::Serialize;

use memrl::{Bank, BankConfig, Device, LearningConfig, NewMemory, Outcome, RetrievalConfig};

use super::world::{MemoryTruth, World};
use crate::{Error, Result};

/// The engine settings every policy shares; each policy overrides lambda and alpha.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSetup {
    /// Key dimension, model id and intent sharing of every policy's bank.
    pub bank: BankConfig,
    /// k1, k2, delta and the z-score settings.
    pub retrieval: RetrievalConfig,
    /// `q_init` (and reward range) of every bank; alpha comes from the policy.
    pub learning: LearningConfig,
    /// Reward of a failed attempt (a success earns 1): -1 as in the authors' code, or 0.
    pub failure_reward: f32,
}

/// How a policy picks the memories injected into an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// No memory at all (and none written).
    None,
    /// The engine's two-phase retrieval with this lambda (0 = similarity only).
    Engine {
        /// Weight of Q in Phase B.
        lambda: f32,
    },
    /// Phase A's pool, then the up to k2 members with the largest positive hidden effect: the
    /// ceiling of what re-ranking the same recall could achieve.
    Oracle,
}

/// One policy of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Name in tables, pictures and JSON.
    pub name: String,
    /// How memories are picked.
    pub selection: Selection,
    /// Learning rate of the Q update after every attempt; `None` keeps every Q at `q_init`.
    pub alpha: Option<f32>,
    /// The engine's learning options beyond the paper's rule (all off for the paper's policies).
    pub options: LearningOptions,
}

/// The engine's options beside the paper's rule, as one policy uses them: each is a field of
/// the engine's retrieval or learning config (see there), and all off is the paper's MemRL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LearningOptions {
    /// [`RetrievalConfig::thompson`]: Thompson sampling in Phase B (0 = off).
    pub thompson: f32,
    /// [`RetrievalConfig::ucb`]: an upper-confidence bonus in Phase B (0 = off).
    pub ucb: f32,
    /// [`LearningConfig::baseline_rate`]: baseline-corrected credit (`None` = off).
    pub baseline_rate: Option<f32>,
    /// [`LearningConfig::q_init_failure`]: Q of a memory written by a failed attempt.
    pub q_init_failure: Option<f32>,
    /// [`RetrievalConfig::sim_margin`]: Phase B ranks only the members within this of the
    /// pool's best similarity (`None` = off).
    pub sim_margin: Option<f32>,
}

impl LearningOptions {
    /// Whether every option is off (the paper's rule).
    pub fn is_paper(&self) -> bool {
        *self == LearningOptions::default()
    }
}

impl Policy {
    /// No memory: every attempt runs on the task's base odds.
    pub fn no_memory() -> Policy {
        Self::new("No memory", Selection::None, None)
    }

    /// RAG: similarity only (lambda 0), no learning.
    pub fn rag() -> Policy {
        Self::new("RAG", Selection::Engine { lambda: 0.0 }, None)
    }

    /// MemP as the spec defines it: the MemRL loop with alpha 0 (Q stays at `q_init`).
    pub fn memp(lambda: f32) -> Policy {
        Self::new("MemP", Selection::Engine { lambda }, None)
    }

    /// MemRL: two-phase retrieval with `lambda`, Q learned with `alpha`.
    pub fn memrl(name: impl Into<String>, lambda: f32, alpha: f32) -> Policy {
        Self::new(name, Selection::Engine { lambda }, Some(alpha))
    }

    /// The oracle re-ranker (see [`Selection::Oracle`]).
    pub fn oracle() -> Policy {
        Self::new("Oracle", Selection::Oracle, None)
    }

    /// MemRL with some of the engine's options beside the paper's rule.
    pub fn memrl_with(
        name: impl Into<String>,
        lambda: f32,
        alpha: f32,
        options: LearningOptions,
    ) -> Policy {
        Policy {
            options,
            ..Self::memrl(name, lambda, alpha)
        }
    }

    fn new(name: impl Into<String>, selection: Selection, alpha: Option<f32>) -> Policy {
        Policy {
            name: name.into(),
            selection,
            alpha,
            options: LearningOptions::default(),
        }
    }
}

/// Per-epoch figures that explain a policy's success rate: what it injected.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Injections {
    /// Mean number of memories injected per attempt.
    pub per_attempt: f64,
    /// Share of injected memories whose hidden effect on the task was negative.
    pub harmful_share: f64,
    /// Share of injected memories written for the same task.
    pub own_task_share: f64,
    /// Share of injected memories written for a task of another source (skill).
    pub other_source_share: f64,
    /// Mean total hidden effect (log-odds) of an attempt's injected memories.
    pub mean_gain: f64,
}

/// One policy's run through one world.
pub struct PolicyRun {
    /// `history[epoch][task]`: whether the attempt succeeded.
    pub history: Vec<Vec<bool>>,
    /// What was injected, per epoch.
    pub injections: Vec<Injections>,
    /// What the learned Q tracks at the end (`None` for a policy that does not learn).
    pub q_fit: Option<QFit>,
    /// The bank at the end of the run (`None` for a policy without memory).
    pub bank: Option<Bank>,
}

/// Pearson correlations of the learned Q, over every memory injected at least once, with the
/// memory's hidden quality and with its task's base log-odds: does Q learn what a memory is worth,
/// or how easy its task is?
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QFit {
    /// Memories injected at least once.
    pub memories: usize,
    /// Correlation of Q with the hidden quality.
    pub quality: f64,
    /// Correlation of Q with the base log-odds of the task the memory was written for.
    pub task_ease: f64,
}

fn pearson(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    if vx <= 0.0 || vy <= 0.0 {
        return 0.0;
    }
    cov / (vx * vy).sqrt()
}

fn q_fit(world: &World, bank: &Bank, truths: &HashMap<u64, MemoryTruth>) -> Result<QFit> {
    let (mut q, mut quality, mut ease) = (Vec::new(), Vec::new(), Vec::new());
    for memory in bank.memories().iter().filter(|m| m.visits > 0) {
        let truth = truth_of(truths, memory.id)?;
        q.push(f64::from(memory.q));
        quality.push(f64::from(truth.quality));
        ease.push(f64::from(world.tasks()[truth.task].base_logit));
    }
    Ok(QFit {
        memories: q.len(),
        quality: pearson(&q, &quality),
        task_ease: pearson(&q, &ease),
    })
}

/// Runs the paper's loop for `policy` over every epoch of `world`: retrieve -> attempt -> reward
/// (+1 / -1) -> update the Q of every injected memory -> write a memory for the attempt with
/// `q_init`. The banks live on `device`.
pub fn run_policy(
    world: &World,
    policy: &Policy,
    setup: &EngineSetup,
    device: &Device,
) -> Result<PolicyRun> {
    let tasks = world.tasks();
    let learning = policy.alpha.map(|alpha| LearningConfig {
        alpha,
        baseline_rate: policy.options.baseline_rate,
        q_init_failure: policy.options.q_init_failure,
        ..setup.learning.clone()
    });
    let bank = match policy.selection {
        Selection::None => None,
        _ => {
            let bank = Bank::options()
                .bank_config(setup.bank.clone())
                .device(device.clone())
                .in_memory()?;
            bank.set_learning_config(learning.clone().unwrap_or_else(|| setup.learning.clone()))?;
            Some(bank)
        }
    };
    let mut truths: HashMap<u64, MemoryTruth> = HashMap::new();
    let mut history = vec![vec![false; tasks.len()]; world.epochs()];
    let mut injections = Vec::with_capacity(world.epochs());
    for (epoch, row) in history.iter_mut().enumerate() {
        let (mut injected_total, mut harmful, mut gain) = (0usize, 0usize, 0.0f64);
        let (mut own, mut other_source) = (0usize, 0usize);
        for &task in world.order(epoch) {
            let ids = match &bank {
                Some(bank) => {
                    let episode = (epoch * tasks.len() + task) as u64;
                    select(
                        world,
                        bank,
                        &truths,
                        policy,
                        &setup.retrieval,
                        task,
                        episode,
                    )?
                }
                None => Vec::new(),
            };
            let injected = truths_of(&truths, &ids)?;
            let effects = injected.iter().map(|m| world.effect(m, task));
            for effect in effects {
                harmful += usize::from(effect < 0.0);
                gain += f64::from(effect);
            }
            for m in &injected {
                own += usize::from(m.task == task);
                other_source += usize::from(tasks[m.task].source != tasks[task].source);
            }
            injected_total += ids.len();
            let success =
                world.attempt_draw(epoch, task) < world.success_probability(task, &injected);
            row[task] = success;
            let Some(bank) = bank.as_ref() else {
                continue;
            };
            if learning.is_some() && !ids.is_empty() {
                let outcome = Outcome {
                    memory_ids: ids,
                    reward: if success { 1.0 } else { setup.failure_reward },
                };
                bank.apply_outcomes(&[outcome])?;
            }
            if !world.writes(epoch, task) {
                continue;
            }
            let experience = if success {
                "what worked: "
            } else {
                "reflection on a failure: "
            };
            let id = bank.add(
                NewMemory::new(
                    tasks[task].text.clone(),
                    format!("{experience}{}", tasks[task].text),
                )
                .embedding(tasks[task].embedding.clone())
                .success(success),
            )?;
            truths.insert(id, world.memory_truth(epoch, task, success));
        }
        let attempts = tasks.len() as f64;
        let share = |count: usize| count as f64 / injected_total.max(1) as f64;
        injections.push(Injections {
            per_attempt: injected_total as f64 / attempts,
            harmful_share: share(harmful),
            own_task_share: share(own),
            other_source_share: share(other_source),
            mean_gain: gain / attempts,
        });
    }
    let q_fit = match (&bank, policy.alpha) {
        (Some(bank), Some(_)) => Some(q_fit(world, bank, &truths)?),
        _ => None,
    };
    Ok(PolicyRun {
        history,
        injections,
        q_fit,
        bank,
    })
}

/// The memory ids the policy injects into an attempt at `task`, the world's `episode`-th (which
/// seeds Thompson sampling: fresh draws every attempt, the same in every run of the world).
fn select(
    world: &World,
    bank: &Bank,
    truths: &HashMap<u64, MemoryTruth>,
    policy: &Policy,
    retrieval: &RetrievalConfig,
    task: usize,
    episode: u64,
) -> Result<Vec<u64>> {
    let query = std::slice::from_ref(&world.tasks()[task].embedding);
    match policy.selection {
        Selection::None => Ok(Vec::new()),
        Selection::Engine { lambda } => {
            let mut cfg = RetrievalConfig {
                lambda,
                ..retrieval.clone()
            };
            if !policy.options.is_paper() {
                cfg.thompson = policy.options.thompson;
                cfg.ucb = policy.options.ucb;
                cfg.sim_margin = policy.options.sim_margin;
                cfg.seed = world.seed().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ episode;
            }
            let hits = bank.retrieve_with(query, &cfg)?;
            Ok(hits
                .into_iter()
                .flat_map(|r| r.hits)
                .map(|h| h.id)
                .collect())
        }
        Selection::Oracle => {
            // The whole Phase A pool: a k2 as large as the bank returns every member.
            let cfg = RetrievalConfig {
                lambda: 0.0,
                k2: bank.len().max(1),
                ..retrieval.clone()
            };
            let hits = bank.retrieve_with(query, &cfg)?;
            let mut helpful: Vec<(f32, u64)> = hits
                .into_iter()
                .flat_map(|r| r.hits)
                .map(|h| Ok((world.effect(&truth_of(truths, h.id)?, task), h.id)))
                .filter(|r| !matches!(r, Ok((effect, _)) if *effect <= 0.0))
                .collect::<Result<_>>()?;
            helpful.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            Ok(helpful
                .into_iter()
                .take(retrieval.k2)
                .map(|(_, id)| id)
                .collect())
        }
    }
}

/// The world's truth about a memory the bank returned. Every memory in a simulation bank was
/// written by the loop, so a miss is a bug, reported rather than panicking.
fn truth_of(truths: &HashMap<u64, MemoryTruth>, id: u64) -> Result<MemoryTruth> {
    truths
        .get(&id)
        .copied()
        .ok_or_else(|| Error::Internal(format!("memory {id} was not written by the loop")))
}

fn truths_of(truths: &HashMap<u64, MemoryTruth>, ids: &[u64]) -> Result<Vec<MemoryTruth>> {
    ids.iter().map(|&id| truth_of(truths, id)).collect()
}
