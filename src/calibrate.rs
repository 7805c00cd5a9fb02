//! The paper's calibration (spec, "Defaults"): delta is the top-20% quantile of the pairwise
//! cosine similarities between a data set's intents, and the `fixed` zsim statistics are the
//! mean and std of that same distribution.
//!
//! All pairs are used up to `max_pairs`; above that, `max_pairs` pairs of distinct intents are
//! drawn uniformly with a seeded generator, so a calibration is reproducible.
//!
//! ```
//! let rows = [1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8];
//! let c = memrl::calibrate(&rows, 2, 1_000_000, 0)?;
//! assert_eq!(c.pairs, 3);
//! # Ok::<(), memrl::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::store::normalise_rows;

/// Pairs used by default before sampling starts (a million dot products: well under a second).
pub const DEFAULT_MAX_PAIRS: usize = 1_000_000;

/// What [`calibrate`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The similarity gate: 20% of the pairs are at or above it.
    pub delta: f32,
    /// Mean of the pairwise similarities (for `ZSim::Fixed`).
    pub mean: f32,
    /// Population standard deviation of the pairwise similarities (for `ZSim::Fixed`).
    pub std: f32,
    /// Intents the pairs were drawn from.
    pub intents: usize,
    /// Pairs measured.
    pub pairs: usize,
    /// Whether the pairs were a sample rather than all of them.
    pub sampled: bool,
}

/// Calibrates from `rows` (`n x dim`, row-major; normalised here, so any non-zero vectors do).
pub fn calibrate(rows: &[f32], dim: usize, max_pairs: usize, seed: u64) -> Result<Calibration> {
    let unit = normalise_rows("intent embedding", rows, dim)?;
    let n = unit.len() / dim.max(1);
    if n < 2 {
        return Err(Error::value(
            "intents",
            format!("calibration needs at least two intents, got {n}"),
        ));
    }
    if max_pairs == 0 {
        return Err(Error::value("max_pairs", "must be at least 1"));
    }
    let row = |i: usize| &unit[i * dim..(i + 1) * dim];
    let dot = |i: usize, j: usize| -> f32 { row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum() };
    let all = n * (n - 1) / 2;
    let mut sims = Vec::with_capacity(all.min(max_pairs));
    let sampled = all > max_pairs;
    if sampled {
        let mut rng = SplitMix64::new(seed);
        while sims.len() < max_pairs {
            let i = rng.below(n as u64) as usize;
            let j = rng.below(n as u64) as usize;
            if i != j {
                sims.push(dot(i, j));
            }
        }
    } else {
        for i in 0..n {
            for j in i + 1..n {
                sims.push(dot(i, j));
            }
        }
    }
    let m = sims.len();
    let mean = sims.iter().map(|&s| s as f64).sum::<f64>() / m as f64;
    let var = sims.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / m as f64;
    sims.sort_by(f32::total_cmp);
    // Nearest rank of the 80th percentile: at least 20% of the pairs are >= delta.
    let rank = ((0.8 * m as f64).ceil() as usize).clamp(1, m);
    Ok(Calibration {
        delta: sims[rank - 1],
        mean: mean as f32,
        std: var.sqrt() as f32,
        intents: n,
        pairs: m,
        sampled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pairs_give_the_exact_quantile_mean_and_std() {
        // Five unit vectors at angles 0, 30, 60, 90, 120 degrees: ten pairs.
        let rows: Vec<f32> = [0.0f32, 30.0, 60.0, 90.0, 120.0]
            .iter()
            .flat_map(|d| [d.to_radians().cos(), d.to_radians().sin()])
            .collect();
        let c = calibrate(&rows, 2, 100, 0).unwrap();
        let mut sims: Vec<f64> = Vec::new();
        for i in 0..5 {
            for j in i + 1..5 {
                sims.push(((j - i) as f64 * 30f64).to_radians().cos());
            }
        }
        sims.sort_by(f64::total_cmp);
        assert_eq!((c.pairs, c.sampled, c.intents), (10, false, 5));
        assert!((c.delta as f64 - sims[7]).abs() < 1e-6, "{c:?}");
        let mean = sims.iter().sum::<f64>() / 10.0;
        let std = (sims.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / 10.0).sqrt();
        assert!((c.mean as f64 - mean).abs() < 1e-6 && (c.std as f64 - std).abs() < 1e-6);
    }

    #[test]
    fn large_sets_are_sampled_reproducibly_and_close_to_the_full_answer() {
        let mut rng = SplitMix64::new(3);
        let rows: Vec<f32> = (0..400 * 8).map(|_| rng.next_f64() as f32 - 0.3).collect();
        let full = calibrate(&rows, 8, usize::MAX, 0).unwrap();
        let a = calibrate(&rows, 8, 20_000, 9).unwrap();
        let b = calibrate(&rows, 8, 20_000, 9).unwrap();
        assert_eq!(a, b);
        assert!(a.sampled && a.pairs == 20_000 && !full.sampled);
        assert!((a.delta - full.delta).abs() < 0.02, "{a:?} vs {full:?}");
        assert!((a.mean - full.mean).abs() < 0.02);
    }

    #[test]
    fn too_few_or_bad_intents_are_errors() {
        assert!(calibrate(&[1.0, 0.0], 2, 10, 0).is_err());
        assert!(calibrate(&[1.0, 0.0, 0.0, 0.0], 2, 10, 0).is_err());
        assert!(calibrate(&[1.0, 0.0, 0.0, 1.0], 2, 0, 0).is_err());
    }
}
