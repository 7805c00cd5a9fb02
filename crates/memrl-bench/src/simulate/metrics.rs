//! The spec's learning metrics, computed from a success history, and their mean and standard
//! deviation over seeds.
//!
//! A history is one policy's outcome for every (epoch, task): `history[e][t]` is whether task `t`
//! (by its index in the task set, not its position in the epoch's order) succeeded in epoch `e`.
//! An epoch is one pass over the whole task set, so every row has the same length.

use serde::Serialize;

use crate::{Error, Result};

/// The spec's metrics of one history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Share of tasks solved in each epoch.
    pub per_epoch: Vec<f64>,
    /// Success rate of the last epoch.
    pub last_epoch: f64,
    /// Cumulative success rate: share of tasks solved at least once over all epochs.
    pub csr: f64,
    /// Forgetting rate: over each pair of consecutive epochs, the share of all tasks that went from
    /// success to failure; the mean over the pairs (0 with a single epoch).
    pub forgetting: f64,
    /// Success rate over every attempt of every epoch.
    pub mean_success: f64,
}

impl Metrics {
    /// The metrics of `history` (`epochs x tasks`). An empty history, a history without tasks or
    /// rows of different lengths are errors.
    ///
    /// ```
    /// use memrl_bench::simulate::Metrics;
    /// // Two tasks, two epochs: task 0 fails then succeeds, task 1 succeeds then fails.
    /// let m = Metrics::from_history(&[vec![false, true], vec![true, false]]).unwrap();
    /// assert_eq!(m.per_epoch, vec![0.5, 0.5]);
    /// assert_eq!((m.csr, m.forgetting), (1.0, 0.5));
    /// ```
    pub fn from_history(history: &[Vec<bool>]) -> Result<Metrics> {
        let tasks = history.first().map_or(0, Vec::len);
        if tasks == 0 {
            return Err(Error::config(
                "history",
                history.len(),
                "needs at least one epoch of at least one task",
            ));
        }
        if let Some(bad) = history.iter().position(|row| row.len() != tasks) {
            return Err(Error::config(
                "history",
                format!(
                    "epoch {bad} has {} tasks, epoch 0 has {tasks}",
                    history[bad].len()
                ),
                "every epoch must cover the same tasks",
            ));
        }
        let share = |count: usize| count as f64 / tasks as f64;
        let solved = |row: &Vec<bool>| row.iter().filter(|&&s| s).count();
        let per_epoch: Vec<f64> = history.iter().map(|row| share(solved(row))).collect();
        let ever = (0..tasks)
            .filter(|&t| history.iter().any(|row| row[t]))
            .count();
        let flips: Vec<f64> = history
            .windows(2)
            .map(|w| share((0..tasks).filter(|&t| w[0][t] && !w[1][t]).count()))
            .collect();
        Ok(Metrics {
            last_epoch: per_epoch[per_epoch.len() - 1],
            mean_success: per_epoch.iter().sum::<f64>() / per_epoch.len() as f64,
            per_epoch,
            csr: share(ever),
            forgetting: if flips.is_empty() {
                0.0
            } else {
                flips.iter().sum::<f64>() / flips.len() as f64
            },
        })
    }
}

/// Mean and sample standard deviation (n - 1; 0 for a single value) of one figure over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub std: f64,
}

impl MeanStd {
    /// Mean and sample standard deviation of `values` (NaN mean for none).
    pub fn of(values: &[f64]) -> MeanStd {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = if values.len() < 2 {
            0.0
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        MeanStd { mean, std }
    }
}

/// [`Metrics`] over several seeds: each figure's mean and standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Per-epoch success rate.
    pub per_epoch: Vec<MeanStd>,
    /// Last-epoch success rate.
    pub last_epoch: MeanStd,
    /// Cumulative success rate.
    pub csr: MeanStd,
    /// Forgetting rate.
    pub forgetting: MeanStd,
    /// Success over all attempts.
    pub mean_success: MeanStd,
}

impl Summary {
    /// Summarises one policy's metrics from several seeds; all must have the same epoch count.
    pub fn of(runs: &[&Metrics]) -> Result<Summary> {
        let epochs = runs.first().map_or(0, |m| m.per_epoch.len());
        if epochs == 0 || runs.iter().any(|m| m.per_epoch.len() != epochs) {
            return Err(Error::config(
                "runs",
                runs.len(),
                "needs at least one run, all with the same number of epochs",
            ));
        }
        let over = |f: &dyn Fn(&Metrics) -> f64| {
            MeanStd::of(&runs.iter().map(|m| f(m)).collect::<Vec<_>>())
        };
        Ok(Summary {
            per_epoch: (0..epochs).map(|e| over(&|m| m.per_epoch[e])).collect(),
            last_epoch: over(&|m| m.last_epoch),
            csr: over(&|m| m.csr),
            forgetting: over(&|m| m.forgetting),
            mean_success: over(&|m| m.mean_success),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(rows: &[&str]) -> Vec<Vec<bool>> {
        rows.iter()
            .map(|r| r.chars().map(|c| c == '1').collect())
            .collect()
    }

    #[test]
    fn metrics_of_a_hand_made_history() {
        // Four tasks over three epochs.
        //   task 0: 0 1 1   solved, never forgotten
        //   task 1: 1 0 1   forgotten once (epoch 1 -> 2)
        //   task 2: 0 0 0   never solved
        //   task 3: 1 1 0   forgotten once (epoch 2 -> 3)
        let m = Metrics::from_history(&history(&["0101", "1001", "1100"])).unwrap();
        assert_eq!(m.per_epoch, vec![0.5, 0.5, 0.5]);
        assert_eq!(m.last_epoch, 0.5);
        assert_eq!(m.csr, 0.75);
        // Pair (1, 2): task 1 flips, 1 of 4; pair (2, 3): task 3 flips, 1 of 4.
        assert_eq!(m.forgetting, 0.25);
        assert_eq!(m.mean_success, 0.5);
    }

    #[test]
    fn forgetting_counts_only_success_to_failure() {
        // Failure -> success is learning, not forgetting.
        let m = Metrics::from_history(&history(&["000", "111"])).unwrap();
        assert_eq!((m.forgetting, m.csr, m.last_epoch), (0.0, 1.0, 1.0));
        let m = Metrics::from_history(&history(&["111", "000", "111"])).unwrap();
        assert_eq!(m.forgetting, 0.5);
        assert_eq!(m.per_epoch, vec![1.0, 0.0, 1.0]);
    }

    #[test]
    fn a_single_epoch_has_no_forgetting() {
        let m = Metrics::from_history(&history(&["10"])).unwrap();
        assert_eq!((m.forgetting, m.csr, m.last_epoch), (0.0, 0.5, 0.5));
    }

    #[test]
    fn malformed_histories_are_errors() {
        assert!(Metrics::from_history(&[]).is_err());
        assert!(Metrics::from_history(&[vec![]]).is_err());
        let err = Metrics::from_history(&history(&["10", "1"])).unwrap_err();
        assert!(err.to_string().contains("epoch 1"), "{err}");
    }

    #[test]
    fn summary_over_seeds() {
        let a = Metrics::from_history(&history(&["10", "11"])).unwrap();
        let b = Metrics::from_history(&history(&["00", "01"])).unwrap();
        let s = Summary::of(&[&a, &b]).unwrap();
        assert_eq!(s.last_epoch.mean, 0.75);
        // Sample std of {1.0, 0.5}: |1.0 - 0.5| / sqrt(2).
        assert!((s.last_epoch.std - 0.5 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.per_epoch[0].mean, 0.25);
        assert_eq!(s.csr.mean, 0.75);
        assert_eq!(MeanStd::of(&[0.3]).std, 0.0);
        let one_epoch = Metrics::from_history(&history(&["1"])).unwrap();
        assert!(Summary::of(&[&a, &one_epoch]).is_err());
        assert!(Summary::of(&[]).is_err());
    }
}
