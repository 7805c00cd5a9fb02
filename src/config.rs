//! Retrieval, learning and bank configuration, validated before use.
//!
//! Defaults are the paper's (v2, Table 8) as listed in the spec: alpha 0.3, lambda 0.5, k1 10,
//! k2 5, delta 0.5, q_init 0, dedup_sim 0.90, pool z-scores, z-clip 3 (on zq), epsilon 0, q_min
//! off. Every config is a plain struct with public fields; `validate()` is called by every
//! operation that takes one, so an invalid value is an error at the call, never a wrong result.
//!
//! Retrieval and learning configs are stored as JSON in snapshots and log records. Every field
//! added later has a serde default (`#[serde(default)]` on the struct: a missing field takes its
//! `Default` value), so the files of older versions still load.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the similarity term of the Phase B score is standardised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ZSim {
    /// z-score over the candidate pool of each query (the paper's wording). The default.
    #[default]
    Pool,
    /// z-score with data-set-wide statistics of pairwise intent similarity (the authors' code);
    /// `memrl calibrate` computes them.
    Fixed {
        /// Mean pairwise intent similarity.
        mean: f32,
        /// Standard deviation of pairwise intent similarity; must be > 0.
        std: f32,
    },
}

/// Parameters of two-phase retrieval.
///
/// ```
/// let cfg = memrl::RetrievalConfig { k2: 3, ..Default::default() };
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrievalConfig {
    /// Phase A: how many intent keys to keep per query (by similarity). Must be >= 1.
    pub k1: usize,
    /// Phase B: how many memories to return per query. Must be >= 1.
    pub k2: usize,
    /// Phase A similarity gate: keys with cosine below it are never recalled.
    pub delta: f32,
    /// Weight of utility against similarity in the Phase B score, in [0, 1]. 0 = similarity only.
    pub lambda: f32,
    /// How similarity is standardised.
    pub zsim: ZSim,
    /// zq is clipped to [-z_clip, z_clip] (and zsim too with `clip_zsim`). Must be > 0.
    pub z_clip: f32,
    /// Also clip zsim to [-z_clip, z_clip]. Off by default: the spec and the authors' code clip
    /// only zq. Banks written before this field existed clipped both, and read as off. A pool of
    /// more than 10 members (intent sharing, or a k1 above 10) can hold a |zsim| above 3, where
    /// the two differ.
    pub clip_zsim: bool,
    /// Drop pool members whose Q is below this before ranking. `None` = keep all.
    pub q_min: Option<f32>,
    /// Probability, per query, of returning k2 pool members drawn uniformly instead. In [0, 1].
    pub epsilon: f32,
    /// Seed of the exploration draws. Draws depend on (seed, position of the query in the batch),
    /// so the same call gives the same result; vary the seed (e.g. with the episode number) to get
    /// fresh draws on every call.
    pub seed: u64,
    /// Thompson sampling in Phase B (0 = off, the paper's selection): each member's Q is replaced,
    /// for ranking only, by a draw from a Gaussian posterior around it,
    /// `Q + thompson * N(0, 1) / sqrt(1 + visits)`, so a memory that few outcomes have measured
    /// gets tried, and one measured often is ranked by its Q. The draw of a member depends on
    /// (seed, position of the query in the batch, memory id) only, so it is reproducible and does
    /// not depend on which other memories share the pool. At least 0, at most 1e6.
    pub thompson: f32,
    /// An upper-confidence bonus in Phase B (0 = off): each member is ranked with
    /// `Q + ucb / sqrt(1 + visits)` in place of Q. Deterministic. At least 0, at most 1e6.
    pub ucb: f32,
    /// Phase B ranks only the pool members whose similarity is within this of the pool's most
    /// similar member (`None` = off, the paper's selection). A memory's Q measures how it did
    /// on the queries it was injected for, which resemble its own intent; one much less similar
    /// than the best candidate would be ranked on utility earned elsewhere, and with lambda above
    /// 0.5 such memories (of easier tasks, higher Q) take the slots. In [0, 2] (2 keeps every
    /// member of a cosine pool).
    pub sim_margin: Option<f32>,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            k1: 10,
            k2: 5,
            delta: 0.5,
            lambda: 0.5,
            zsim: ZSim::Pool,
            z_clip: 3.0,
            clip_zsim: false,
            q_min: None,
            epsilon: 0.0,
            seed: 0,
            thompson: 0.0,
            ucb: 0.0,
            sim_margin: None,
        }
    }
}

/// Largest k1 and k2 a retrieval accepts: 2^20. Phase A keeps up to k1 keys per query and
/// Phase B returns up to k2 hits, and both size buffers per query, so an unchecked value (a
/// `--k1` of 2^64 - 1) would reach an allocator; a million keys or hits per query is already far
/// beyond any agent's context, and a bank's keys are a bound below it anyway.
pub const MAX_K: usize = 1 << 20;

/// Largest `z_clip`: a clip at a million standard deviations clips nothing a z-score over a
/// pool can reach, and keeps every mixed score finite.
pub const MAX_Z_CLIP: f32 = 1e6;

/// Largest `thompson` and `ucb` scale: with Q finite and at most 1e6 added, every ranked value
/// stays finite in f64.
pub const MAX_EXPLORATION: f32 = 1e6;

impl RetrievalConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_K).contains(&self.k1) {
            return Err(Error::config(
                "k1",
                self.k1,
                "must be between 1 and 1048576 (2^20)",
            ));
        }
        if !(1..=MAX_K).contains(&self.k2) {
            return Err(Error::config(
                "k2",
                self.k2,
                "must be between 1 and 1048576 (2^20)",
            ));
        }
        if !self.delta.is_finite() {
            return Err(Error::config(
                "delta",
                self.delta,
                "must be a finite number",
            ));
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(Error::config("lambda", self.lambda, "must be in [0, 1]"));
        }
        if let ZSim::Fixed { mean, std } = self.zsim {
            // A mean of cosine similarities: with it in [-1, 1] and std a normal number, every
            // standardised similarity is finite.
            if !(-1.0..=1.0).contains(&mean) {
                return Err(Error::config(
                    "zsim.mean",
                    mean,
                    "must be in [-1, 1] (a mean of cosine similarities)",
                ));
            }
            // Below the smallest normal f32, 1 / std overflows and a similarity equal to the
            // mean would score NaN.
            if !(std.is_finite() && std >= f32::MIN_POSITIVE) {
                return Err(Error::config(
                    "zsim.std",
                    std,
                    "must be a finite number > 0 (at least 1.2e-38)",
                ));
            }
        }
        if !(self.z_clip > 0.0 && self.z_clip <= MAX_Z_CLIP) {
            return Err(Error::config(
                "z_clip",
                self.z_clip,
                "must be a number > 0 and at most 1e6",
            ));
        }
        if let Some(q_min) = self.q_min {
            if q_min.is_nan() {
                return Err(Error::config("q_min", q_min, "must be a number"));
            }
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return Err(Error::config("epsilon", self.epsilon, "must be in [0, 1]"));
        }
        if let Some(margin) = self.sim_margin {
            if !(0.0..=2.0).contains(&margin) {
                return Err(Error::config(
                    "sim_margin",
                    margin,
                    "must be a number in [0, 2] (similarities lie in [-1, 1]), or off",
                ));
            }
        }
        for (field, value) in [("thompson", self.thompson), ("ucb", self.ucb)] {
            if !(0.0..=MAX_EXPLORATION).contains(&value) {
                return Err(Error::config(
                    field,
                    value,
                    "must be a number >= 0 and at most 1e6 (0 = off)",
                ));
            }
        }
        Ok(())
    }
}

/// What to do with a reward outside [`RewardRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// Clamp the reward into the range.
    Clamp,
    /// Reject the whole batch.
    Reject,
}

/// An optional bound on rewards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardRange {
    /// Smallest accepted reward.
    pub min: f32,
    /// Largest accepted reward.
    pub max: f32,
    /// Clamp or reject rewards outside [min, max].
    pub out_of_range: OutOfRange,
}

/// Parameters of the runtime utility update `Q <- Q + alpha (r - Q)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearningConfig {
    /// Learning rate, in [0, 1]. 0 means Q never moves (MemP, the paper's baseline that
    /// retrieves with lambda but does not learn): outcomes are still applied, so visits and the
    /// last reward are recorded, and every Q stays exactly where it was.
    pub alpha: f32,
    /// Q of a newly written memory, successes and failures alike.
    pub q_init: f32,
    /// Optional reward bounds; NaN and infinite rewards are always rejected.
    pub reward_range: Option<RewardRange>,
    /// Baseline-corrected credit (`None` = the paper's rule, the default). With a rate `b` in
    /// (0, 1], every intent key learns a baseline: what the episodes that used the key's memories
    /// earn anyway, `B <- B + b (r - B)` per outcome that injected any memory filed under it
    /// (the first such outcome sets `B = r`). An injected memory is then credited with the
    /// advantage, `Q <- Q + alpha ((r - B) - Q)` with B as it was before the outcome, so Q says
    /// whether the memory helps beyond its task's ease and is comparable across tasks. The
    /// baseline is kept in every memory of the key (the same value in each), so it travels with
    /// the memories in snapshots and log records.
    pub baseline_rate: Option<f32>,
    /// Q of a new memory written by a failed episode (`success: false`) when the memory gives no
    /// Q of its own (`None` = `q_init`, successes and failures alike, as in the paper). The
    /// writing episode's outcome is the first reward that concerns a memory; a finite number.
    pub q_init_failure: Option<f32>,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            alpha: 0.3,
            q_init: 0.0,
            reward_range: None,
            baseline_rate: None,
            q_init_failure: None,
        }
    }
}

impl LearningConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::config("alpha", self.alpha, "must be in [0, 1]"));
        }
        if !self.q_init.is_finite() {
            return Err(Error::config(
                "q_init",
                self.q_init,
                "must be a finite number",
            ));
        }
        if let Some(range) = self.reward_range {
            if !(range.min.is_finite() && range.max.is_finite() && range.min <= range.max) {
                return Err(Error::config(
                    "reward_range",
                    format!("[{}, {}]", range.min, range.max),
                    "must be finite with min <= max",
                ));
            }
        }
        if let Some(rate) = self.baseline_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(Error::config(
                    "baseline_rate",
                    rate,
                    "must be in (0, 1] (or null: the paper's shared credit)",
                ));
            }
        }
        if let Some(q) = self.q_init_failure {
            if !q.is_finite() {
                return Err(Error::config(
                    "q_init_failure",
                    q,
                    "must be a finite number (or null: q_init)",
                ));
            }
        }
        Ok(())
    }
}

/// Storage precision of the intent-key matrix. Similarities are accumulated in f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyDType {
    /// 4 bytes per component. The default.
    #[default]
    F32,
    /// 2 bytes per component: half the memory traffic of a scan.
    F16,
    /// 2 bytes per component, wider exponent, fewer mantissa bits than f16.
    Bf16,
}

impl KeyDType {
    pub(crate) fn candle(self) -> candle_core::DType {
        match self {
            KeyDType::F32 => candle_core::DType::F32,
            KeyDType::F16 => candle_core::DType::F16,
            KeyDType::Bf16 => candle_core::DType::BF16,
        }
    }

    /// Bytes per key element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            KeyDType::F32 => 4,
            KeyDType::F16 | KeyDType::Bf16 => 2,
        }
    }

    /// The name used in snapshots and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyDType::F32 => "f32",
            KeyDType::F16 => "f16",
            KeyDType::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for KeyDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(KeyDType::F32),
            "f16" => Ok(KeyDType::F16),
            "bf16" => Ok(KeyDType::Bf16),
            _ => Err(Error::config("dtype", s, "must be one of f32, f16, bf16")),
        }
    }
}

/// Largest embedding dimension a bank accepts (the largest common models use 4096).
pub const MAX_DIM: usize = 1 << 16;

/// Shape of a bank: fixed when it is created, stored in its snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankConfig {
    /// Embedding dimension (384 for all-MiniLM-L6-v2).
    pub dim: usize,
    /// Storage precision of intent keys.
    pub dtype: KeyDType,
    /// A new memory whose intent has cosine >= this with an existing key is filed under that key.
    /// At least 0; 1.0 or more turns sharing off (one key per memory).
    pub dedup_sim: f32,
    /// Identifier of the embedding model that produced the keys; snapshots of another model are
    /// refused on load.
    pub model_id: String,
}

impl BankConfig {
    /// A bank for `dim`-dimensional embeddings from `model_id`, with the default f32 keys and
    /// intent sharing at 0.90.
    pub fn new(dim: usize, model_id: impl Into<String>) -> Self {
        Self {
            dim,
            dtype: KeyDType::F32,
            dedup_sim: 0.90,
            model_id: model_id.into(),
        }
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(Error::config(
                "dim",
                self.dim,
                "must be between 1 and 65536",
            ));
        }
        // Sharing files two intents under one key when they mean the same task: a cosine of 0
        // is already unrelated text, and a negative one would put opposite intents (and, at -1
        // or below, every intent) under one key. At 1 or above (cosines stop at 1) only
        // identical intents could share, which is what "off" means; values above 1 stay valid,
        // as they always were, so banks made with them still open.
        if self.dedup_sim.is_nan() || self.dedup_sim < 0.0 {
            return Err(Error::config(
                "dedup_sim",
                self.dedup_sim,
                "must be a number >= 0 (cosine; 1 or more turns sharing off)",
            ));
        }
        Ok(())
    }

    /// Whether intent sharing is on.
    pub fn shares_intents(&self) -> bool {
        self.dedup_sim < 1.0
    }
}

/// Operational limits of a bank: not part of its state (never saved), set by whoever opens it.
///
/// They bound what one call or one bank may cost, so a runaway caller or a bad input file gets a
/// clear [`Error::LimitExceeded`] instead of exhausting memory. The defaults admit anything a
/// sane workload sends; the bank size's default is the hard ceiling (memories are addressed by
/// 32-bit slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest intent, experience or metadata (as JSON) of one memory, in bytes.
    pub max_text_bytes: usize,
    /// Most items in one call: memories added, outcomes applied, queries retrieved.
    pub max_batch: usize,
    /// Most memories a bank may hold.
    pub max_memories: usize,
}

/// The most memories any bank can hold: slots are 32-bit.
pub const MAX_MEMORIES: usize = u32::MAX as usize;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 1 << 20,
            max_batch: 1 << 20,
            max_memories: MAX_MEMORIES,
        }
    }
}

impl Limits {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.max_text_bytes == 0 {
            return Err(Error::config("max_text_bytes", 0, "must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(Error::config("max_batch", 0, "must be at least 1"));
        }
        if self.max_memories == 0 || self.max_memories > MAX_MEMORIES {
            return Err(Error::config(
                "max_memories",
                self.max_memories,
                "must be between 1 and 4294967295 (memories are addressed by 32-bit slots)",
            ));
        }
        Ok(())
    }

    /// An error unless `got <= limit`.
    pub(crate) fn check(what: &'static str, limit: usize, got: usize) -> Result<()> {
        if got > limit {
            return Err(Error::LimitExceeded { what, limit, got });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let r = RetrievalConfig::default();
        r.validate().unwrap();
        assert_eq!(
            (r.k1, r.k2, r.delta, r.lambda, r.z_clip, r.epsilon),
            (10, 5, 0.5, 0.5, 3.0, 0.0)
        );
        assert_eq!(r.q_min, None);
        assert_eq!(r.zsim, ZSim::Pool);
        let l = LearningConfig::default();
        l.validate().unwrap();
        assert_eq!((l.alpha, l.q_init), (0.3, 0.0));
        assert_eq!(BankConfig::new(384, "m").dedup_sim, 0.90);
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let field = |e: Error| match e {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("unexpected {other}"),
        };
        let bad = |f: fn(&mut RetrievalConfig)| {
            let mut c = RetrievalConfig::default();
            f(&mut c);
            field(c.validate().unwrap_err())
        };
        assert_eq!(bad(|c| c.k1 = 0), "k1");
        assert_eq!(bad(|c| c.k2 = 0), "k2");
        assert_eq!(bad(|c| c.lambda = 1.5), "lambda");
        assert_eq!(bad(|c| c.lambda = -0.1), "lambda");
        assert_eq!(bad(|c| c.lambda = f32::NAN), "lambda");
        assert_eq!(bad(|c| c.delta = f32::NAN), "delta");
        assert_eq!(bad(|c| c.epsilon = 2.0), "epsilon");
        assert_eq!(bad(|c| c.z_clip = 0.0), "z_clip");
        assert_eq!(bad(|c| c.z_clip = f32::NAN), "z_clip");
        assert_eq!(bad(|c| c.z_clip = 1e7), "z_clip");
        assert_eq!(bad(|c| c.k1 = MAX_K + 1), "k1");
        assert_eq!(bad(|c| c.k2 = usize::MAX), "k2");
        assert_eq!(bad(|c| c.thompson = -0.5), "thompson");
        assert_eq!(bad(|c| c.thompson = f32::NAN), "thompson");
        assert_eq!(bad(|c| c.ucb = f32::INFINITY), "ucb");
        assert_eq!(bad(|c| c.ucb = 2e6), "ucb");
        assert_eq!(bad(|c| c.sim_margin = Some(-0.1)), "sim_margin");
        assert_eq!(bad(|c| c.sim_margin = Some(2.5)), "sim_margin");
        assert_eq!(bad(|c| c.sim_margin = Some(f32::NAN)), "sim_margin");
        assert!(RetrievalConfig {
            k1: MAX_K,
            k2: MAX_K,
            ..Default::default()
        }
        .validate()
        .is_ok());
        assert_eq!(
            bad(|c| c.zsim = ZSim::Fixed {
                mean: 0.1,
                std: 0.0
            }),
            "zsim.std"
        );
        let bad_alpha = |a: f32| {
            field(
                LearningConfig {
                    alpha: a,
                    ..Default::default()
                }
                .validate()
                .unwrap_err(),
            )
        };
        assert_eq!(bad_alpha(-0.1), "alpha");
        assert_eq!(bad_alpha(1.01), "alpha");
        assert_eq!(bad_alpha(f32::NAN), "alpha");
        let bad_learning = |f: fn(&mut LearningConfig)| {
            let mut c = LearningConfig::default();
            f(&mut c);
            field(c.validate().unwrap_err())
        };
        assert_eq!(
            bad_learning(|c| c.baseline_rate = Some(0.0)),
            "baseline_rate"
        );
        assert_eq!(
            bad_learning(|c| c.baseline_rate = Some(1.5)),
            "baseline_rate"
        );
        assert_eq!(
            bad_learning(|c| c.baseline_rate = Some(f32::NAN)),
            "baseline_rate"
        );
        assert_eq!(
            bad_learning(|c| c.q_init_failure = Some(f32::INFINITY)),
            "q_init_failure"
        );
        for alpha in [0.0, 1.0] {
            assert!(LearningConfig {
                alpha,
                ..Default::default()
            }
            .validate()
            .is_ok());
        }
    }

    #[test]
    fn configs_stored_by_older_versions_still_parse() {
        // A retrieval config as the first release wrote it into snapshots and log records:
        // no clip_zsim (it clipped zsim then; unclipped is the spec).
        let old = r#"{"k1":10,"k2":5,"delta":0.25,"lambda":0.5,"zsim":{"mode":"pool"},"z_clip":3.0,"q_min":null,"epsilon":0.0,"seed":0}"#;
        let r: RetrievalConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            r,
            RetrievalConfig {
                delta: 0.25,
                ..RetrievalConfig::default()
            }
        );
        assert!(!r.clip_zsim);
        let old = r#"{"alpha":0.3,"q_init":0.0,"reward_range":{"min":-1.0,"max":1.0,"out_of_range":"clamp"}}"#;
        let l: LearningConfig = serde_json::from_str(old).unwrap();
        assert_eq!(l.alpha, 0.3);
        assert_eq!((l.baseline_rate, l.q_init_failure), (None, None));
        // The options added beside the paper's rule: older files lack them and read as off
        // (above); set, they round-trip.
        let on = LearningConfig {
            baseline_rate: Some(0.25),
            q_init_failure: Some(-0.5),
            ..LearningConfig::default()
        };
        let json = serde_json::to_string(&on).unwrap();
        assert_eq!(serde_json::from_str::<LearningConfig>(&json).unwrap(), on);
        // What is written now reads back the same.
        let now = RetrievalConfig {
            clip_zsim: true,
            thompson: 0.5,
            ucb: 1.0,
            ..RetrievalConfig::default()
        };
        let json = serde_json::to_string(&now).unwrap();
        assert_eq!(serde_json::from_str::<RetrievalConfig>(&json).unwrap(), now);
    }
}
