//! Predicted-label drift: each producer's distribution of `Inferred` in its latest window against
//! its reference, either its own first period (`--reference 1d`: the windows that start within a
//! day of its first) or a fixed distribution read from a file.
//!
//! The view keeps counts, which stay exact under retractions; the statistics (a chi-square test
//! of homogeneity and the Hellinger distance) are computed from them when they are read.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use timely::progress::Timestamp;

use crate::consolidate::sum_by_hash;
use crate::record::Observation;

/// Label counts, by label.
pub type Distribution = BTreeMap<String, u64>;

/// What a producer's latest window is compared with.
#[derive(Clone, Debug, PartialEq)]
pub enum Reference {
    /// The producer's own windows that start less than this many ms after its first.
    FirstPeriod { length_ms: i64 },
    /// Fixed distributions: per producer, and under `None` the one for every other producer.
    Fixed(Arc<BTreeMap<Option<String>, Distribution>>),
}

impl Reference {
    /// Whether a producer's records of `window` can change its drift, when `first` and `latest`
    /// are the first and latest windows of its records in one worker's share of a load without
    /// retractions: its first window, those of its own first period and its latest. A window
    /// outside these in a share is outside them over all shares too, whose first window is no
    /// later and whose latest is no earlier.
    pub fn may_count(&self, window: i64, first: i64, latest: i64) -> bool {
        let in_first_period =
            matches!(self, Reference::FirstPeriod { length_ms } if window < first.saturating_add(*length_ms));
        window == first || window == latest || in_first_period
    }
}

/// One producer's drift inputs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelDrift {
    /// `[start, end)` of the reference period in ms; `None` for a fixed reference.
    pub reference_period: Option<(i64, i64)>,
    pub reference: Distribution,
    /// The start of the producer's latest window.
    pub window_start: i64,
    /// The labels of that window; empty while the window is still in the reference period.
    pub window: Distribution,
}

/// The comparison of a window with its reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DriftStatistics {
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    /// The chance of a difference at least this large if both came from one distribution.
    pub p_value: f64,
    /// Between the two label distributions: 0 when equal, 1 when disjoint.
    pub hellinger: f64,
}

/// `(producer, drift)` for every producer with a window of inferred records. A producer with
/// no reference (a fixed one without its row, or no default) has none.
pub fn label_drift<'scope, T>(
    observations: VecCollection<'scope, T, Observation, isize>,
    reference: Reference,
) -> VecCollection<'scope, T, (String, LabelDrift), isize>
where
    T: Timestamp + Lattice + Ord,
{
    label_drift_of(observations.flat_map(window_label), reference)
}

/// What the view reads of an observation: `(producer, (window start, label))`, for an inferred
/// record in a window.
pub fn window_label(observation: Observation) -> Option<(String, (i64, String))> {
    let Observation { producer_id, inferred, window, .. } = observation;
    Some((producer_id, (window?, inferred?)))
}

/// The drift from `(producer, (window start, label))` pairs.
pub fn label_drift_of<'scope, T>(
    labels: VecCollection<'scope, T, (String, (i64, String)), isize>,
    reference: Reference,
) -> VecCollection<'scope, T, (String, LabelDrift), isize>
where
    T: Timestamp + Lattice + Ord,
{
    sum_by_hash(labels).reduce_named("LabelDrift", move |producer, labels, drift| {
        // `labels` holds each `(window, label)` once with its count, sorted by window.
        let counted = labels.iter().filter(|(_, n)| *n > 0).map(|((window, label), n)| (*window, label, *n as u64));
        if let Some(found) = drift_of(producer, counted, &reference) {
            drift.push((found, 1));
        }
    })
}

fn drift_of<'a>(
    producer: &str,
    labels: impl Iterator<Item = (i64, &'a String, u64)> + Clone,
    reference: &Reference,
) -> Option<LabelDrift> {
    let first = labels.clone().next()?.0;
    let latest = labels.clone().last()?.0;
    let distribution = |keep: &dyn Fn(i64) -> bool| {
        let mut counts = Distribution::new();
        for (_, label, n) in labels.clone().filter(|(window, _, _)| keep(*window)) {
            *counts.entry(label.clone()).or_default() += n;
        }
        counts
    };
    let (reference_period, reference_counts) = match reference {
        Reference::FirstPeriod { length_ms } => {
            let end = first.saturating_add(*length_ms);
            (Some((first, end)), distribution(&|window| window < end))
        }
        Reference::Fixed(fixed) => {
            let counts = fixed.get(&Some(producer.to_owned())).or_else(|| fixed.get(&None))?;
            (None, counts.clone())
        }
    };
    let in_reference = reference_period.is_some_and(|(_, end)| latest < end);
    let window = if in_reference { Distribution::new() } else { distribution(&|window| window == latest) };
    Some(LabelDrift { reference_period, reference: reference_counts, window_start: latest, window })
}

impl LabelDrift {
    /// The comparison, once both the reference and the window have labels.
    pub fn statistics(&self) -> Option<DriftStatistics> {
        let (n_reference, n_window) = (total(&self.reference), total(&self.window));
        if n_reference == 0 || n_window == 0 {
            return None;
        }
        let labels: std::collections::BTreeSet<&String> = self.reference.keys().chain(self.window.keys()).collect();
        let count = |distribution: &Distribution, label: &String| distribution.get(label).copied().unwrap_or(0) as f64;
        let grand = (n_reference + n_window) as f64;
        let (mut chi_square, mut bhattacharyya) = (0.0, 0.0);
        for label in &labels {
            let (observed_reference, observed_window) = (count(&self.reference, label), count(&self.window, label));
            let both = observed_reference + observed_window;
            for (observed, n) in [(observed_reference, n_reference), (observed_window, n_window)] {
                let expected = n as f64 * both / grand;
                chi_square += (observed - expected).powi(2) / expected;
            }
            bhattacharyya += (observed_reference / n_reference as f64 * observed_window / n_window as f64).sqrt();
        }
        let degrees_of_freedom = labels.len() as u64 - 1;
        let p_value = match degrees_of_freedom {
            0 => 1.0,
            dof => ChiSquared::new(dof as f64).map_or(f64::NAN, |chi| chi.sf(chi_square)),
        };
        let hellinger = (1.0 - bhattacharyya).max(0.0).sqrt();
        Some(DriftStatistics { chi_square, degrees_of_freedom, p_value, hellinger })
    }
}

fn total(distribution: &Distribution) -> u64 {
    distribution.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testing::{after_each_round, rows};

    const HOUR: i64 = 3_600_000;

    fn labelled(producer: &str, label: &str, window: i64, n: isize) -> (Observation, isize) {
        (Observation::new(producer, "cat", Some(label)).in_window(window), n)
    }

    fn counts(pairs: &[(&str, u64)]) -> Distribution {
        pairs.iter().map(|(label, n)| (label.to_string(), *n)).collect()
    }

    fn first_day(
        observations: VecCollection<'_, u64, Observation, isize>,
    ) -> VecCollection<'_, u64, (String, LabelDrift), isize> {
        label_drift(observations, Reference::FirstPeriod { length_ms: 2 * HOUR })
    }

    #[test]
    fn the_latest_window_against_the_first_period_under_retractions() {
        let rounds = vec![
            // Reference: windows 0h and 1h. Still in it: no window to compare.
            vec![labelled("a", "cat", 0, 6), labelled("a", "dog", HOUR, 2), (Observation::new("a", "cat", None), 9)],
            // A window after the reference.
            vec![labelled("a", "dog", 5 * HOUR, 3), labelled("a", "cat", 5 * HOUR, 1)],
            // Its records are relabelled (retracted and re-added as cat); a later window opens.
            vec![
                labelled("a", "dog", 5 * HOUR, -3),
                labelled("a", "cat", 5 * HOUR, 3),
                labelled("a", "bird", 7 * HOUR, 1),
            ],
            // The later window is deleted again: window 5h is the latest once more.
            vec![labelled("a", "bird", 7 * HOUR, -1)],
        ];
        let reference = counts(&[("cat", 6), ("dog", 2)]);
        let drift = |window_start, window: &[(&str, u64)]| {
            (
                "a".to_owned(),
                LabelDrift {
                    reference_period: Some((0, 2 * HOUR)),
                    reference: reference.clone(),
                    window_start,
                    window: counts(window),
                },
            )
        };
        let snapshots = after_each_round(first_day, rounds);
        assert_eq!(rows(&snapshots[0]), [drift(HOUR, &[])]);
        assert_eq!(rows(&snapshots[1]), [drift(5 * HOUR, &[("cat", 1), ("dog", 3)])]);
        assert_eq!(rows(&snapshots[2]), [drift(7 * HOUR, &[("bird", 1)])]);
        assert_eq!(rows(&snapshots[3]), [drift(5 * HOUR, &[("cat", 4)])]);
        assert_eq!(snapshots[0].keys().next().unwrap().1.statistics(), None);
    }

    fn fixed(rows: &[(Option<&str>, Distribution)]) -> Reference {
        Reference::Fixed(Arc::new(
            rows.iter().map(|(producer, counts)| (producer.map(str::to_owned), counts.clone())).collect(),
        ))
    }

    fn against_a_file(
        observations: VecCollection<'_, u64, Observation, isize>,
    ) -> VecCollection<'_, u64, (String, LabelDrift), isize> {
        label_drift(observations, fixed(&[(Some("a"), counts(&[("dog", 5)])), (None, counts(&[("cat", 5)]))]))
    }

    fn against_a_file_without_default(
        observations: VecCollection<'_, u64, Observation, isize>,
    ) -> VecCollection<'_, u64, (String, LabelDrift), isize> {
        label_drift(observations, fixed(&[(Some("a"), counts(&[("dog", 5)]))]))
    }

    #[test]
    fn a_fixed_reference_applies_per_producer_or_by_default() {
        let round = vec![labelled("a", "cat", 0, 1), labelled("b", "cat", HOUR, 2)];
        let snapshots = after_each_round(against_a_file, vec![round.clone()]);
        let drifts: Vec<_> = rows(&snapshots[0]).into_iter().map(|(p, d)| (p, d.reference, d.window)).collect();
        assert_eq!(
            drifts,
            [
                ("a".to_owned(), counts(&[("dog", 5)]), counts(&[("cat", 1)])),
                ("b".to_owned(), counts(&[("cat", 5)]), counts(&[("cat", 2)]))
            ]
        );
        let snapshots = after_each_round(against_a_file_without_default, vec![round]);
        let producers: Vec<_> = rows(&snapshots[0]).into_iter().map(|(p, _)| p).collect();
        assert_eq!(producers, ["a"], "a producer with no reference has no drift row");
    }

    #[test]
    fn statistics_match_a_hand_computed_chi_square_and_hellinger() {
        // Reference 30 cat / 10 dog, window 10 cat / 10 dog; grand total 60, column totals 40 / 20.
        let drift = LabelDrift {
            reference_period: None,
            reference: counts(&[("cat", 30), ("dog", 10)]),
            window_start: 0,
            window: counts(&[("cat", 10), ("dog", 10)]),
        };
        let stats = drift.statistics().unwrap();
        // Expected: reference 26.667 / 13.333, window 13.333 / 6.667.
        let chi: f64 = [(30.0, 80.0 / 3.0), (10.0, 40.0 / 3.0), (10.0, 40.0 / 3.0), (10.0, 20.0 / 3.0)]
            .iter()
            .map(|(o, e): &(f64, f64)| (o - e).powi(2) / e)
            .sum();
        assert!((stats.chi_square - chi).abs() < 1e-9, "{} vs {chi}", stats.chi_square);
        assert_eq!(stats.degrees_of_freedom, 1);
        // chi-square 3.75 with 1 degree of freedom: p = 0.05281 (tables).
        assert!((stats.p_value - 0.052_807).abs() < 1e-5, "{}", stats.p_value);
        let bc = (0.75f64 * 0.5).sqrt() + (0.25f64 * 0.5).sqrt();
        assert!((stats.hellinger - (1.0 - bc).sqrt()).abs() < 1e-12);

        let same = LabelDrift { window: counts(&[("cat", 3), ("dog", 1)]), ..drift.clone() };
        let stats = same.statistics().unwrap();
        assert!(stats.chi_square.abs() < 1e-12 && (stats.p_value - 1.0).abs() < 1e-9 && stats.hellinger < 1e-7);

        let disjoint = LabelDrift { reference: counts(&[("cat", 4)]), window: counts(&[("dog", 4)]), ..drift };
        let stats = disjoint.statistics().unwrap();
        assert!((stats.hellinger - 1.0).abs() < 1e-12 && stats.p_value < 0.01);
    }
}
