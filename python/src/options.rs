//! Keyword options: the retrieval and learning configs (a call's options override the bank's
//! stored config field by field), how a bank is opened, and the batching queue. Every option is
//! checked: an unknown name is a `TypeError`, a value of the wrong type a `TypeError` naming the
//! option, a value out of range an `InvalidInputError` (a `ValueError`) naming the field, as the
//! library words it.

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use memrl::{
    BatchConfig, CheckpointPolicy, LearningConfig, Limits, OutOfRange, Retention, RetrievalConfig,
    RewardRange, SyncPolicy, ZSim,
};

use crate::convert::type_name;
use crate::errors::{invalid, invalid_config};

/// The names `Bank.retrieve` and `Bank.set_retrieval_config` accept.
pub(crate) const RETRIEVAL: &[&str] = &[
    "k1",
    "k2",
    "delta",
    "lambda_",
    "zsim",
    "z_clip",
    "clip_zsim",
    "q_min",
    "epsilon",
    "seed",
    "thompson",
    "ucb",
    "sim_margin",
];
/// The names `Bank.set_learning_config` accepts.
pub(crate) const LEARNING: &[&str] = &[
    "alpha",
    "q_init",
    "reward_range",
    "out_of_range",
    "baseline_rate",
    "q_init_failure",
];

fn unknown(call: &str, name: &str, known: &[&str]) -> PyErr {
    let hint = match name {
        "lambda" => " (Python spells it `lambda_`)".to_string(),
        _ => String::new(),
    };
    PyTypeError::new_err(format!(
        "{call}() got an unexpected keyword argument '{name}'{hint}; its options are {}",
        known.join(", ")
    ))
}

fn wrong_type(name: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{name}: expected {expected}, got {} ({})",
        type_name(value),
        value.repr().map(|r| r.to_string()).unwrap_or_default()
    ))
}

/// A float option (an int is accepted too; a bool is not).
pub(crate) fn float(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(wrong_type(name, "a number", value));
    }
    value
        .extract::<f64>()
        .map_err(|_| wrong_type(name, "a number", value))
}

/// A bool option (only `True` or `False`: an int is not one).
pub(crate) fn boolean(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(wrong_type(name, "a bool", value));
    }
    value.extract::<bool>()
}

/// An int option (a bool is not one).
pub(crate) fn int(name: &str, value: &Bound<'_, PyAny>) -> PyResult<i128> {
    if value.is_instance_of::<pyo3::types::PyBool>()
        || !value.is_instance_of::<pyo3::types::PyInt>()
    {
        return Err(wrong_type(name, "an int", value));
    }
    value
        .extract::<i128>()
        .map_err(|_| invalid(name, format!("{value} is out of range")))
}

/// A count option (an int >= `min`).
pub(crate) fn count(
    name: &'static str,
    value: &Bound<'_, PyAny>,
    min: usize,
    reason: &'static str,
) -> PyResult<usize> {
    let v = int(name, value)?;
    if v < min as i128 || v > usize::MAX as i128 {
        return Err(invalid_config(name, v, reason));
    }
    Ok(v as usize)
}

/// A u64 option (ids, seeds).
pub(crate) fn uint(name: &'static str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    let v = int(name, value)?;
    u64::try_from(v).map_err(|_| invalid_config(name, v, "must be an integer in [0, 2**64)"))
}

fn string<'py>(name: &str, value: &Bound<'py, PyAny>) -> PyResult<String> {
    value
        .cast::<PyString>()
        .map_err(|_| wrong_type(name, "a str", value))?
        .to_str()
        .map(str::to_owned)
}

/// A pair of numbers.
fn pair(name: &str, value: &Bound<'_, PyAny>) -> PyResult<(f64, f64)> {
    let items: Vec<Bound<'_, PyAny>> = value
        .extract()
        .map_err(|_| wrong_type(name, "a pair of numbers", value))?;
    match items.as_slice() {
        [a, b] => Ok((float(name, a)?, float(name, b)?)),
        _ => Err(wrong_type(name, "a pair of numbers", value)),
    }
}

/// A stored f32 as the Python float that prints the same (0.9, not 0.8999999761581421).
pub(crate) fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Changes to a retrieval config, as given by keyword options.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetrievalPatch {
    k1: Option<usize>,
    k2: Option<usize>,
    delta: Option<f32>,
    lambda: Option<f32>,
    zsim: Option<ZSim>,
    z_clip: Option<f32>,
    clip_zsim: Option<bool>,
    q_min: Option<Option<f32>>,
    epsilon: Option<f32>,
    seed: Option<u64>,
    thompson: Option<f32>,
    ucb: Option<f32>,
    sim_margin: Option<Option<f32>>,
}

impl RetrievalPatch {
    /// Reads the options of `call` (`None`: no options).
    pub(crate) fn parse(call: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut patch = Self::default();
        let Some(options) = options else {
            return Ok(patch);
        };
        for (key, value) in options.iter() {
            let name: String = key.extract()?;
            match name.as_str() {
                "k1" => patch.k1 = Some(count("k1", &value, 1, "must be at least 1")?),
                "k2" => patch.k2 = Some(count("k2", &value, 1, "must be at least 1")?),
                "delta" => patch.delta = Some(float("delta", &value)? as f32),
                "lambda_" => patch.lambda = Some(float("lambda_", &value)? as f32),
                "zsim" => {
                    patch.zsim = Some(if let Ok(s) = value.cast::<PyString>() {
                        match s.to_str()? {
                            "pool" => ZSim::Pool,
                            other => {
                                return Err(invalid_config(
                                    "zsim",
                                    format!("{other:?}"),
                                    "must be \"pool\" or a (mean, std) pair",
                                ))
                            }
                        }
                    } else {
                        let (mean, std) = pair("zsim", &value)?;
                        ZSim::Fixed {
                            mean: mean as f32,
                            std: std as f32,
                        }
                    })
                }
                "z_clip" => patch.z_clip = Some(float("z_clip", &value)? as f32),
                "clip_zsim" => patch.clip_zsim = Some(boolean("clip_zsim", &value)?),
                "q_min" => {
                    patch.q_min = Some(if value.is_none() {
                        None
                    } else {
                        Some(float("q_min", &value)? as f32)
                    })
                }
                "epsilon" => patch.epsilon = Some(float("epsilon", &value)? as f32),
                "seed" => patch.seed = Some(uint("seed", &value)?),
                "thompson" => patch.thompson = Some(float("thompson", &value)? as f32),
                "ucb" => patch.ucb = Some(float("ucb", &value)? as f32),
                "sim_margin" => {
                    patch.sim_margin = Some(if value.is_none() {
                        None
                    } else {
                        Some(float("sim_margin", &value)? as f32)
                    })
                }
                other => return Err(unknown(call, other, RETRIEVAL)),
            }
        }
        Ok(patch)
    }

    /// Whether no option was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.k1.is_none()
            && self.k2.is_none()
            && self.delta.is_none()
            && self.lambda.is_none()
            && self.zsim.is_none()
            && self.z_clip.is_none()
            && self.clip_zsim.is_none()
            && self.q_min.is_none()
            && self.epsilon.is_none()
            && self.seed.is_none()
            && self.thompson.is_none()
            && self.ucb.is_none()
            && self.sim_margin.is_none()
    }

    /// The given options as the JSON fields of a `memrl serve` request (the retrieval config's
    /// own names: `lambda`, `zsim` as `{"mode": ...}`); for `memrl.Client`.
    pub(crate) fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut out = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| {
            out.insert(name.to_string(), value);
        };
        if let Some(v) = self.k1 {
            put("k1", json!(v));
        }
        if let Some(v) = self.k2 {
            put("k2", json!(v));
        }
        if let Some(v) = self.delta {
            put("delta", json!(v));
        }
        if let Some(v) = self.lambda {
            put("lambda", json!(v));
        }
        if let Some(v) = self.zsim {
            put("zsim", json!(v));
        }
        if let Some(v) = self.z_clip {
            put("z_clip", json!(v));
        }
        if let Some(v) = self.clip_zsim {
            put("clip_zsim", json!(v));
        }
        if let Some(v) = self.q_min {
            put("q_min", json!(v));
        }
        if let Some(v) = self.epsilon {
            put("epsilon", json!(v));
        }
        if let Some(v) = self.seed {
            put("seed", json!(v));
        }
        if let Some(v) = self.thompson {
            put("thompson", json!(v));
        }
        if let Some(v) = self.ucb {
            put("ucb", json!(v));
        }
        if let Some(v) = self.sim_margin {
            put("sim_margin", json!(v));
        }
        out
    }

    /// `base` with the given options applied, validated.
    pub(crate) fn apply(&self, mut base: RetrievalConfig) -> memrl::Result<RetrievalConfig> {
        macro_rules! given {
            ($($field:ident => $target:ident),*) => {
                $(if let Some(v) = self.$field { base.$target = v; })*
            };
        }
        given!(k1 => k1, k2 => k2, delta => delta, lambda => lambda, zsim => zsim,
               z_clip => z_clip, clip_zsim => clip_zsim, q_min => q_min, epsilon => epsilon, seed => seed,
               thompson => thompson, ucb => ucb, sim_margin => sim_margin);
        base.validate()?;
        Ok(base)
    }
}

/// A retrieval config as the dict of options that would set it.
pub(crate) fn retrieval_dict<'py>(
    py: Python<'py>,
    c: &RetrievalConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("k1", c.k1)?;
    dict.set_item("k2", c.k2)?;
    dict.set_item("delta", shortest(c.delta))?;
    dict.set_item("lambda_", shortest(c.lambda))?;
    match c.zsim {
        ZSim::Pool => dict.set_item("zsim", "pool")?,
        ZSim::Fixed { mean, std } => dict.set_item("zsim", (shortest(mean), shortest(std)))?,
    }
    dict.set_item("z_clip", shortest(c.z_clip))?;
    dict.set_item("clip_zsim", c.clip_zsim)?;
    dict.set_item("q_min", c.q_min.map(shortest))?;
    dict.set_item("epsilon", shortest(c.epsilon))?;
    dict.set_item("seed", c.seed)?;
    dict.set_item("thompson", shortest(c.thompson))?;
    dict.set_item("ucb", shortest(c.ucb))?;
    dict.set_item("sim_margin", c.sim_margin.map(shortest))?;
    Ok(dict)
}

/// Changes to a learning config, as given by keyword options.
#[derive(Debug, Clone, Default)]
pub(crate) struct LearningPatch {
    alpha: Option<f32>,
    q_init: Option<f32>,
    reward_range: Option<Option<(f32, f32)>>,
    out_of_range: Option<Option<OutOfRange>>,
    baseline_rate: Option<Option<f32>>,
    q_init_failure: Option<Option<f32>>,
}

impl LearningPatch {
    /// Reads the options of `call`.
    pub(crate) fn parse(call: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut patch = Self::default();
        let Some(options) = options else {
            return Ok(patch);
        };
        for (key, value) in options.iter() {
            let name: String = key.extract()?;
            match name.as_str() {
                "alpha" => patch.alpha = Some(float("alpha", &value)? as f32),
                "q_init" => patch.q_init = Some(float("q_init", &value)? as f32),
                "reward_range" => {
                    patch.reward_range = Some(if value.is_none() {
                        None
                    } else {
                        let (min, max) = pair("reward_range", &value)?;
                        Some((min as f32, max as f32))
                    })
                }
                "out_of_range" => {
                    patch.out_of_range = Some(if value.is_none() {
                        None
                    } else {
                        Some(match string("out_of_range", &value)?.as_str() {
                            "clamp" => OutOfRange::Clamp,
                            "reject" => OutOfRange::Reject,
                            other => {
                                return Err(invalid_config(
                                    "out_of_range",
                                    format!("{other:?}"),
                                    "must be \"clamp\" or \"reject\"",
                                ))
                            }
                        })
                    })
                }
                "baseline_rate" => {
                    patch.baseline_rate = Some(if value.is_none() {
                        None
                    } else {
                        Some(float("baseline_rate", &value)? as f32)
                    })
                }
                "q_init_failure" => {
                    patch.q_init_failure = Some(if value.is_none() {
                        None
                    } else {
                        Some(float("q_init_failure", &value)? as f32)
                    })
                }
                other => return Err(unknown(call, other, LEARNING)),
            }
        }
        Ok(patch)
    }

    /// `base` with the given options applied, validated.
    pub(crate) fn apply(&self, mut base: LearningConfig) -> memrl::Result<LearningConfig> {
        if let Some(v) = self.alpha {
            base.alpha = v;
        }
        if let Some(v) = self.q_init {
            base.q_init = v;
        }
        if let Some(v) = self.baseline_rate {
            base.baseline_rate = v;
        }
        if let Some(v) = self.q_init_failure {
            base.q_init_failure = v;
        }
        let policy = match self.out_of_range {
            Some(p) => p,
            None => base.reward_range.map(|r| r.out_of_range),
        };
        let range = match self.reward_range {
            Some(r) => r,
            None => base.reward_range.map(|r| (r.min, r.max)),
        };
        base.reward_range = match (range, policy) {
            (Some((min, max)), policy) => Some(RewardRange {
                min,
                max,
                // Rejecting changes nothing behind the caller's back; clamping must be asked for.
                out_of_range: policy.unwrap_or(OutOfRange::Reject),
            }),
            (None, Some(_)) if self.out_of_range.is_some() => {
                return Err(memrl::Error::InvalidConfig {
                    field: "out_of_range",
                    value: "set".into(),
                    reason: "applies to a reward_range: give one",
                })
            }
            (None, _) => None,
        };
        base.validate()?;
        Ok(base)
    }
}

/// A learning config as the dict of options that would set it.
pub(crate) fn learning_dict<'py>(
    py: Python<'py>,
    c: &LearningConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("alpha", shortest(c.alpha))?;
    dict.set_item("q_init", shortest(c.q_init))?;
    match c.reward_range {
        Some(r) => {
            dict.set_item("reward_range", (shortest(r.min), shortest(r.max)))?;
            dict.set_item(
                "out_of_range",
                match r.out_of_range {
                    OutOfRange::Clamp => "clamp",
                    OutOfRange::Reject => "reject",
                },
            )?;
        }
        None => {
            dict.set_item("reward_range", py.None())?;
            dict.set_item("out_of_range", py.None())?;
        }
    }
    dict.set_item("baseline_rate", c.baseline_rate.map(shortest))?;
    dict.set_item("q_init_failure", c.q_init_failure.map(shortest))?;
    Ok(dict)
}

/// `sync=`: "every_batch" (default), "never", or an interval in seconds.
pub(crate) fn sync_policy(value: Option<&Bound<'_, PyAny>>) -> PyResult<SyncPolicy> {
    let Some(value) = value else {
        return Ok(SyncPolicy::default());
    };
    if let Ok(s) = value.cast::<PyString>() {
        return match s.to_str()? {
            "every_batch" => Ok(SyncPolicy::EveryBatch),
            "never" => Ok(SyncPolicy::Never),
            other => Err(invalid_config(
                "sync",
                format!("{other:?}"),
                "must be \"every_batch\", \"never\" or an interval in seconds",
            )),
        };
    }
    let seconds = float("sync", value)?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(invalid_config(
            "sync",
            seconds,
            "an interval must be a finite number of seconds > 0",
        ));
    }
    Ok(SyncPolicy::Interval(Duration::from_secs_f64(seconds)))
}

/// `checkpoint=`: "log_outgrows_snapshot" (default), "manual", or a log size in bytes.
pub(crate) fn checkpoint_policy(value: Option<&Bound<'_, PyAny>>) -> PyResult<CheckpointPolicy> {
    let Some(value) = value else {
        return Ok(CheckpointPolicy::default());
    };
    if let Ok(s) = value.cast::<PyString>() {
        return match s.to_str()? {
            "log_outgrows_snapshot" => Ok(CheckpointPolicy::LogOutgrowsSnapshot),
            "manual" => Ok(CheckpointPolicy::Manual),
            other => Err(invalid_config(
                "checkpoint",
                format!("{other:?}"),
                "must be \"log_outgrows_snapshot\", \"manual\" or a log size in bytes",
            )),
        };
    }
    Ok(CheckpointPolicy::LogBytes(uint("checkpoint", value)?))
}

/// Iterates a dict option's items, refusing names not in `known`.
fn dict_items<'py>(
    option: &str,
    value: &Bound<'py, PyAny>,
    known: &[&str],
) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| wrong_type(option, "a dict", value))?;
    let mut items = Vec::new();
    for (key, item) in dict.iter() {
        let name: String = key.extract()?;
        if !known.contains(&name.as_str()) {
            return Err(PyTypeError::new_err(format!(
                "{option}: unknown key '{name}'; its keys are {}",
                known.join(", ")
            )));
        }
        items.push((name, item));
    }
    Ok(items)
}

/// `retention={"capacity": n, "ttl": seconds}`: the retrievals remembered for feedback.
pub(crate) fn retention(value: Option<&Bound<'_, PyAny>>) -> PyResult<Retention> {
    let mut retention = Retention::default();
    let Some(value) = value else {
        return Ok(retention);
    };
    for (name, item) in dict_items("retention", value, &["capacity", "ttl"])? {
        match name.as_str() {
            "capacity" => {
                retention.capacity = count("retention.capacity", &item, 0, "must be >= 0")?
            }
            _ => {
                let ttl = float("retention.ttl", &item)?;
                if !(ttl.is_finite() && ttl >= 0.0) {
                    return Err(invalid_config(
                        "retention.ttl",
                        ttl,
                        "must be a finite number of seconds >= 0",
                    ));
                }
                retention.ttl = Duration::from_secs_f64(ttl);
            }
        }
    }
    Ok(retention)
}

/// `limits={"max_text_bytes": .., "max_batch": .., "max_memories": ..}` (the library checks them).
pub(crate) fn limits(value: Option<&Bound<'_, PyAny>>) -> PyResult<Limits> {
    let mut limits = Limits::default();
    let Some(value) = value else {
        return Ok(limits);
    };
    for (name, item) in dict_items(
        "limits",
        value,
        &["max_text_bytes", "max_batch", "max_memories"],
    )? {
        match name.as_str() {
            "max_text_bytes" => {
                limits.max_text_bytes = count("limits.max_text_bytes", &item, 0, "must be >= 0")?
            }
            "max_batch" => limits.max_batch = count("limits.max_batch", &item, 0, "must be >= 0")?,
            _ => limits.max_memories = count("limits.max_memories", &item, 0, "must be >= 0")?,
        }
    }
    Ok(limits)
}

/// `batching={"max_batch": .., "max_batch_tokens": .., "capacity": ..}`: the queue that
/// coalesces concurrent single calls.
pub(crate) fn batching(value: Option<&Bound<'_, PyAny>>) -> PyResult<BatchConfig> {
    let mut config = BatchConfig::default();
    let Some(value) = value else {
        return Ok(config);
    };
    for (name, item) in dict_items(
        "batching",
        value,
        &["max_batch", "max_batch_tokens", "capacity"],
    )? {
        match name.as_str() {
            "max_batch" => {
                config.max_batch = count("batching.max_batch", &item, 1, "must be at least 1")?
            }
            "max_batch_tokens" => {
                config.max_batch_tokens =
                    count("batching.max_batch_tokens", &item, 1, "must be at least 1")?
            }
            _ => config.capacity = count("batching.capacity", &item, 1, "must be at least 1")?,
        }
    }
    Ok(config)
}
