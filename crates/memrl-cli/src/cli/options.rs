//! The retrieval and learning options every command that retrieves, learns or creates a bank
//! takes: one flag per field of `RetrievalConfig` and `LearningConfig`, each optional (unset
//! keeps the stored value), validated by the library.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use memrl::{LearningConfig, OutOfRange, RetrievalConfig, RewardRange, ZSim};

/// A number or `off` (`--q-min`, `--sim-margin`, `--baseline-rate`, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NumberOrOff(Option<f32>);

fn parse_number_or_off(text: &str) -> Result<NumberOrOff, String> {
    if text == "off" {
        return Ok(NumberOrOff(None));
    }
    text.parse::<f32>()
        .map(|v| NumberOrOff(Some(v)))
        .map_err(|_| format!("expected a number or `off`, got `{text}`"))
}

fn parse_zsim(text: &str) -> Result<ZSim, String> {
    if text == "pool" {
        return Ok(ZSim::Pool);
    }
    let bad = || format!("expected `pool` or `fixed:MEAN,STD` (e.g. fixed:0.1,0.05), got `{text}`");
    let Some(stats) = text.strip_prefix("fixed:") else {
        return Err(bad());
    };
    let Some((mean, std)) = stats.split_once(',') else {
        return Err(bad());
    };
    match (mean.trim().parse::<f32>(), std.trim().parse::<f32>()) {
        (Ok(mean), Ok(std)) => Ok(ZSim::Fixed { mean, std }),
        _ => Err(bad()),
    }
}

/// `--reward-range MIN,MAX` or `--reward-range off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RangeArg(Option<(f32, f32)>);

fn parse_range(text: &str) -> Result<RangeArg, String> {
    if text == "off" {
        return Ok(RangeArg(None));
    }
    let bad = || format!("expected MIN,MAX (e.g. -1,1) or `off`, got `{text}`");
    let (min, max) = text.split_once(',').ok_or_else(bad)?;
    match (min.trim().parse::<f32>(), max.trim().parse::<f32>()) {
        (Ok(min), Ok(max)) => Ok(RangeArg(Some((min, max)))),
        _ => Err(bad()),
    }
}

/// What happens to a reward outside the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutOfRangeArg {
    /// Clamp it into the range (and count it).
    Clamp,
    /// Reject the whole batch.
    Reject,
}

/// Every field of the retrieval config as a flag.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Retrieval options (unset: the bank's stored value)")]
pub(crate) struct RetrievalArgs {
    /// Intent keys kept by similarity in Phase A (at least 1; default 10).
    #[arg(long)]
    pub(crate) k1: Option<usize>,
    /// Memories returned per query by Phase B (at least 1; default 5).
    #[arg(long)]
    pub(crate) k2: Option<usize>,
    /// Similarity gate of Phase A: keys with cosine below it are never recalled.
    #[arg(long)]
    pub(crate) delta: Option<f32>,
    /// Weight of Q against similarity in the score, in [0, 1] (0 = similarity only; default
    /// 0.5).
    #[arg(long)]
    pub(crate) lambda: Option<f32>,
    /// How similarity is standardised: `pool` (z-score over each query's pool, the default) or
    /// `fixed:MEAN,STD` (data-set statistics; `memrl calibrate` measures them).
    #[arg(long, value_parser = parse_zsim, value_name = "pool|fixed:MEAN,STD")]
    pub(crate) zsim: Option<ZSim>,
    /// zq is clipped to [-Z_CLIP, Z_CLIP] (> 0; default 3).
    #[arg(long)]
    pub(crate) z_clip: Option<f32>,
    /// Clip zsim to [-Z_CLIP, Z_CLIP] as well (`--clip-zsim`, or `--clip-zsim=false`); off by
    /// default, as in the spec.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) clip_zsim: Option<bool>,
    /// Drop pool members whose Q is below this before ranking; `off` keeps every member (the
    /// default).
    #[arg(long, value_parser = parse_number_or_off, value_name = "Q|off")]
    pub(crate) q_min: Option<NumberOrOff>,
    /// Probability, per query, of returning k2 pool members drawn uniformly instead, in [0, 1]
    /// (default 0).
    #[arg(long)]
    pub(crate) epsilon: Option<f32>,
    /// Seed of the exploration draws.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Thompson sampling in Phase B: rank each member by Q + THOMPSON * N(0, 1) / sqrt(1 +
    /// visits), seeded by --seed, so memories few outcomes have measured get tried (>= 0;
    /// default 0, off).
    #[arg(long)]
    pub(crate) thompson: Option<f32>,
    /// An upper-confidence bonus in Phase B: rank each member by Q + UCB / sqrt(1 + visits)
    /// (>= 0; default 0, off).
    #[arg(long)]
    pub(crate) ucb: Option<f32>,
    /// Rank only the pool members whose similarity is within this of the most similar one, in
    /// [0, 2]; `off` ranks every member (the default).
    #[arg(long, value_parser = parse_number_or_off, value_name = "MARGIN|off")]
    pub(crate) sim_margin: Option<NumberOrOff>,
}

impl RetrievalArgs {
    /// The flags given, by name.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let flags: [(&'static str, bool); 13] = [
            ("--k1", self.k1.is_some()),
            ("--k2", self.k2.is_some()),
            ("--delta", self.delta.is_some()),
            ("--lambda", self.lambda.is_some()),
            ("--zsim", self.zsim.is_some()),
            ("--z-clip", self.z_clip.is_some()),
            ("--clip-zsim", self.clip_zsim.is_some()),
            ("--q-min", self.q_min.is_some()),
            ("--epsilon", self.epsilon.is_some()),
            ("--seed", self.seed.is_some()),
            ("--thompson", self.thompson.is_some()),
            ("--ucb", self.ucb.is_some()),
            ("--sim-margin", self.sim_margin.is_some()),
        ];
        for (name, set) in flags {
            if set {
                given.push(name);
            }
        }
        given
    }

    /// `base` with every given flag applied, validated.
    pub(crate) fn apply(&self, base: &RetrievalConfig) -> Result<RetrievalConfig> {
        let mut cfg = base.clone();
        cfg.k1 = self.k1.unwrap_or(cfg.k1);
        cfg.k2 = self.k2.unwrap_or(cfg.k2);
        cfg.delta = self.delta.unwrap_or(cfg.delta);
        cfg.lambda = self.lambda.unwrap_or(cfg.lambda);
        cfg.zsim = self.zsim.unwrap_or(cfg.zsim);
        cfg.z_clip = self.z_clip.unwrap_or(cfg.z_clip);
        cfg.clip_zsim = self.clip_zsim.unwrap_or(cfg.clip_zsim);
        if let Some(NumberOrOff(q_min)) = self.q_min {
            cfg.q_min = q_min;
        }
        cfg.epsilon = self.epsilon.unwrap_or(cfg.epsilon);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        cfg.thompson = self.thompson.unwrap_or(cfg.thompson);
        cfg.ucb = self.ucb.unwrap_or(cfg.ucb);
        if let Some(NumberOrOff(margin)) = self.sim_margin {
            cfg.sim_margin = margin;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The options of the update rule: what applying outcomes uses.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Learning options (unset: the bank's stored value)")]
pub(crate) struct UpdateArgs {
    /// Learning rate of Q <- Q + alpha (r - Q), in [0, 1]; 0 keeps every Q where it is (MemP)
    /// while visits and last rewards are still recorded (default 0.3).
    #[arg(long)]
    pub(crate) alpha: Option<f32>,
    /// Bounds on rewards, MIN,MAX, or `off` (the default: any finite reward).
    #[arg(long, value_parser = parse_range, value_name = "MIN,MAX|off", allow_hyphen_values = true)]
    pub(crate) reward_range: Option<RangeArg>,
    /// What a reward outside the range does: clamp (the default once a range is set) or reject
    /// the whole batch.
    #[arg(long, value_enum)]
    pub(crate) out_of_range: Option<OutOfRangeArg>,
    /// Baseline-corrected credit: each intent key learns what its episodes earn anyway at this
    /// rate, in (0, 1], and an injected memory is credited with the reward minus that baseline;
    /// `off` is the paper's rule (the default).
    #[arg(long, value_parser = parse_number_or_off, value_name = "RATE|off")]
    pub(crate) baseline_rate: Option<NumberOrOff>,
}

impl UpdateArgs {
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        for (name, set) in [
            ("--alpha", self.alpha.is_some()),
            ("--reward-range", self.reward_range.is_some()),
            ("--out-of-range", self.out_of_range.is_some()),
            ("--baseline-rate", self.baseline_rate.is_some()),
        ] {
            if set {
                given.push(name);
            }
        }
        given
    }

    /// `base` with every given flag applied, validated.
    pub(crate) fn apply(&self, base: &LearningConfig) -> Result<LearningConfig> {
        let mut cfg = base.clone();
        cfg.alpha = self.alpha.unwrap_or(cfg.alpha);
        if let Some(RangeArg(range)) = self.reward_range {
            cfg.reward_range = range.map(|(min, max)| RewardRange {
                min,
                max,
                out_of_range: cfg
                    .reward_range
                    .map_or(OutOfRange::Clamp, |r| r.out_of_range),
            });
        }
        if let Some(mode) = self.out_of_range {
            let Some(range) = cfg.reward_range.as_mut() else {
                bail!("--out-of-range needs a reward range: give --reward-range MIN,MAX");
            };
            range.out_of_range = match mode {
                OutOfRangeArg::Clamp => OutOfRange::Clamp,
                OutOfRangeArg::Reject => OutOfRange::Reject,
            };
        }
        if let Some(NumberOrOff(rate)) = self.baseline_rate {
            cfg.baseline_rate = rate;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Every field of the learning config as a flag.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct LearningArgs {
    #[command(flatten)]
    pub(crate) update: UpdateArgs,
    /// Q of a newly written memory that gives none, successes and failures alike (default 0).
    #[arg(
        long,
        help_heading = "Learning options (unset: the bank's stored value)"
    )]
    pub(crate) q_init: Option<f32>,
    /// Q of a new memory written by a failed episode when it gives none; `off` uses --q-init
    /// for failures too (the default, the paper's).
    #[arg(
        long,
        value_parser = parse_number_or_off,
        value_name = "Q|off",
        allow_hyphen_values = true,
        help_heading = "Learning options (unset: the bank's stored value)"
    )]
    pub(crate) q_init_failure: Option<NumberOrOff>,
}

impl LearningArgs {
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut given = self.update.given();
        if self.q_init.is_some() {
            given.push("--q-init");
        }
        if self.q_init_failure.is_some() {
            given.push("--q-init-failure");
        }
        given
    }

    /// `base` with every given flag applied, validated.
    pub(crate) fn apply(&self, base: &LearningConfig) -> Result<LearningConfig> {
        let mut cfg = self.update.apply(base)?;
        cfg.q_init = self.q_init.unwrap_or(cfg.q_init);
        if let Some(NumberOrOff(q)) = self.q_init_failure {
            cfg.q_init_failure = q;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_what_they_expect() {
        assert_eq!(parse_zsim("pool"), Ok(ZSim::Pool));
        assert_eq!(
            parse_zsim("fixed:-0.1, 0.05"),
            Ok(ZSim::Fixed {
                mean: -0.1,
                std: 0.05
            })
        );
        for bad in ["fixed", "fixed:1", "fixed:a,b", "Pool", ""] {
            assert!(
                parse_zsim(bad).unwrap_err().contains("fixed:MEAN,STD"),
                "{bad}"
            );
        }
        assert_eq!(parse_number_or_off("off"), Ok(NumberOrOff(None)));
        assert_eq!(parse_number_or_off("-0.8"), Ok(NumberOrOff(Some(-0.8))));
        assert!(parse_number_or_off("low").is_err());
        assert_eq!(parse_range("-1,1"), Ok(RangeArg(Some((-1.0, 1.0)))));
        assert_eq!(parse_range("off"), Ok(RangeArg(None)));
        assert!(parse_range("1").is_err());
    }

    #[test]
    fn flags_apply_over_the_stored_config_and_are_validated() {
        let args = RetrievalArgs {
            k2: Some(3),
            q_min: Some(NumberOrOff(Some(-0.5))),
            clip_zsim: Some(true),
            ..Default::default()
        };
        let cfg = args.apply(&RetrievalConfig::default()).unwrap();
        assert_eq!(
            (cfg.k2, cfg.q_min, cfg.clip_zsim, cfg.k1),
            (3, Some(-0.5), true, 10)
        );
        let off = RetrievalArgs {
            q_min: Some(NumberOrOff(None)),
            ..Default::default()
        };
        assert_eq!(off.apply(&cfg).unwrap().q_min, None);
        assert_eq!(args.given(), vec!["--k2", "--clip-zsim", "--q-min"]);
        let bad = RetrievalArgs {
            lambda: Some(f32::NAN),
            ..Default::default()
        };
        assert!(bad.apply(&cfg).unwrap_err().to_string().contains("lambda"));

        let explore = RetrievalArgs {
            thompson: Some(0.5),
            ucb: Some(1.0),
            ..Default::default()
        };
        let cfg = explore.apply(&cfg).unwrap();
        assert_eq!((cfg.thompson, cfg.ucb, cfg.k2), (0.5, 1.0, 3));
        assert_eq!(explore.given(), vec!["--thompson", "--ucb"]);
        let margin = RetrievalArgs {
            sim_margin: Some(NumberOrOff(Some(0.3))),
            ..Default::default()
        };
        let cfg = margin.apply(&cfg).unwrap();
        assert_eq!(cfg.sim_margin, Some(0.3));
        assert_eq!(margin.given(), vec!["--sim-margin"]);
        let off = RetrievalArgs {
            sim_margin: Some(NumberOrOff(None)),
            ..Default::default()
        };
        assert_eq!(off.apply(&cfg).unwrap().sim_margin, None);
        let wide = RetrievalArgs {
            sim_margin: Some(NumberOrOff(Some(3.0))),
            ..Default::default()
        };
        assert!(wide
            .apply(&cfg)
            .unwrap_err()
            .to_string()
            .contains("sim_margin"));
        let bad = RetrievalArgs {
            ucb: Some(-1.0),
            ..Default::default()
        };
        assert!(bad.apply(&cfg).unwrap_err().to_string().contains("ucb"));

        let update = UpdateArgs {
            alpha: Some(0.0),
            reward_range: Some(RangeArg(Some((-1.0, 1.0)))),
            out_of_range: Some(OutOfRangeArg::Reject),
            baseline_rate: Some(NumberOrOff(Some(0.25))),
        };
        let learning = LearningArgs {
            update,
            q_init: Some(0.25),
            q_init_failure: Some(NumberOrOff(Some(-0.5))),
        }
        .apply(&LearningConfig::default())
        .unwrap();
        assert_eq!((learning.alpha, learning.q_init), (0.0, 0.25));
        assert_eq!(
            (learning.baseline_rate, learning.q_init_failure),
            (Some(0.25), Some(-0.5))
        );
        let off = LearningArgs {
            update: UpdateArgs {
                baseline_rate: Some(NumberOrOff(None)),
                ..Default::default()
            },
            q_init_failure: Some(NumberOrOff(None)),
            ..Default::default()
        }
        .apply(&learning)
        .unwrap();
        assert_eq!((off.baseline_rate, off.q_init_failure), (None, None));
        let bad_rate = UpdateArgs {
            baseline_rate: Some(NumberOrOff(Some(0.0))),
            ..Default::default()
        };
        assert!(bad_rate
            .apply(&LearningConfig::default())
            .unwrap_err()
            .to_string()
            .contains("baseline_rate"));
        assert_eq!(
            learning.reward_range.unwrap().out_of_range,
            OutOfRange::Reject
        );
        let orphan = UpdateArgs {
            out_of_range: Some(OutOfRangeArg::Clamp),
            ..Default::default()
        };
        assert!(orphan.apply(&LearningConfig::default()).is_err());
        let inverted = UpdateArgs {
            reward_range: Some(RangeArg(Some((1.0, -1.0)))),
            ..Default::default()
        };
        assert!(inverted
            .apply(&LearningConfig::default())
            .unwrap_err()
            .to_string()
            .contains("reward_range"));
    }
}
