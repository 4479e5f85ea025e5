//! Confusion counts: how often each true class was labelled as each class, per producer and over
//! all producers. Pending records are left out: they have no label yet.

use std::collections::BTreeMap;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

use crate::consolidate::sum_by_hash;
use crate::record::Observation;

/// Which records a row covers. `All` sorts before every producer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    All,
    Producer(String),
}

/// One cell of a confusion matrix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub scope: Scope,
    pub ground_truth: String,
    pub inferred: String,
}

/// `(cell, count)` for every cell with at least one record.
pub fn confusion_counts<'scope, T>(
    observations: VecCollection<'scope, T, Observation, isize>,
) -> VecCollection<'scope, T, (Cell, u64), isize>
where
    T: Timestamp + Lattice + Ord,
{
    confusion_of(observations.flat_map(labelled))
}

/// What the view reads of an observation: `(producer, truth, inferred)`, for an inferred record.
pub fn labelled(observation: Observation) -> Option<(String, String, String)> {
    let Observation { producer_id, ground_truth, inferred, .. } = observation;
    Some((producer_id, ground_truth, inferred?))
}

/// The confusion counts from `(producer, truth, inferred)` triples.
pub fn confusion_of<'scope, T>(
    labelled: VecCollection<'scope, T, (String, String, String), isize>,
) -> VecCollection<'scope, T, (Cell, u64), isize>
where
    T: Timestamp + Lattice + Ord,
{
    let cells = labelled.flat_map(|(producer_id, ground_truth, inferred)| {
        let overall = Cell { scope: Scope::All, ground_truth: ground_truth.clone(), inferred: inferred.clone() };
        [Cell { scope: Scope::Producer(producer_id), ground_truth, inferred }, overall]
    });
    sum_by_hash(cells).count().map(|(cell, count)| (cell, count.max(0) as u64))
}

/// Precision, recall and F1 of one class, from one scope's confusion counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassScore {
    pub class: String,
    /// Records whose ground truth is the class.
    pub support: u64,
    /// Records the model labelled as the class.
    pub predicted: u64,
    /// Records of the class labelled as the class.
    pub correct: u64,
}

impl ClassScore {
    /// Share of the class's predictions that were right; `None` if it was never predicted.
    pub fn precision(&self) -> Option<f64> {
        (self.predicted > 0).then(|| self.correct as f64 / self.predicted as f64)
    }

    /// Share of the class's records labelled right; `None` if no record is of the class.
    pub fn recall(&self) -> Option<f64> {
        (self.support > 0).then(|| self.correct as f64 / self.support as f64)
    }

    /// The harmonic mean of precision and recall: 0 when either is 0, `None` when either is
    /// undefined.
    pub fn f1(&self) -> Option<f64> {
        let (precision, recall) = (self.precision()?, self.recall()?);
        Some(if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) })
    }
}

/// The scores of every class that occurs as a truth or a label in `cells` (one scope's
/// `(truth, inferred, count)`), sorted by class.
pub fn class_scores<'a>(cells: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> Vec<ClassScore> {
    let mut scores = BTreeMap::<&'a str, ClassScore>::new();
    for (truth, inferred, count) in cells {
        score_of(&mut scores, truth).support += count;
        score_of(&mut scores, inferred).predicted += count;
        if truth == inferred {
            score_of(&mut scores, truth).correct += count;
        }
    }
    scores.into_values().collect()
}

fn score_of<'m, 'a>(scores: &'m mut BTreeMap<&'a str, ClassScore>, class: &'a str) -> &'m mut ClassScore {
    scores.entry(class).or_insert_with(|| ClassScore { class: class.to_owned(), ..ClassScore::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testing::{after_each_round, rows};

    fn obs(producer: &str, truth: &str, inferred: Option<&str>) -> Observation {
        Observation::new(producer, truth, inferred)
    }

    fn cell(scope: Option<&str>, truth: &str, inferred: &str, count: u64) -> (Cell, u64) {
        let scope = scope.map_or(Scope::All, |p| Scope::Producer(p.to_owned()));
        (Cell { scope, ground_truth: truth.to_owned(), inferred: inferred.to_owned() }, count)
    }

    #[test]
    fn counts_per_producer_and_overall_without_pending_records() {
        let round = vec![
            (obs("a", "cat", Some("dog")), 2),
            (obs("a", "cat", Some("cat")), 1),
            (obs("b", "cat", Some("dog")).in_window(0), 3),
            (obs("b", "dog", None), 4),
        ];
        let snapshots = after_each_round(confusion_counts, vec![round]);
        assert_eq!(
            rows(&snapshots[0]),
            [
                cell(None, "cat", "cat", 1),
                cell(None, "cat", "dog", 5),
                cell(Some("a"), "cat", "cat", 1),
                cell(Some("a"), "cat", "dog", 2),
                cell(Some("b"), "cat", "dog", 3),
            ]
        );
    }

    #[test]
    fn a_corrected_label_moves_a_record_between_cells_and_an_emptied_cell_disappears() {
        let rounds = vec![
            vec![(obs("a", "cat", Some("dog")), 1), (obs("a", "cat", None), 1)],
            // The wrong label is corrected; the pending record gets one.
            vec![
                (obs("a", "cat", Some("dog")), -1),
                (obs("a", "cat", Some("cat")), 1),
                (obs("a", "cat", None), -1),
                (obs("a", "cat", Some("cat")), 1),
            ],
            // Both records are deleted.
            vec![(obs("a", "cat", Some("cat")), -2)],
        ];
        let snapshots = after_each_round(confusion_counts, rounds);
        assert_eq!(rows(&snapshots[0]), [cell(None, "cat", "dog", 1), cell(Some("a"), "cat", "dog", 1)]);
        assert_eq!(rows(&snapshots[1]), [cell(None, "cat", "cat", 2), cell(Some("a"), "cat", "cat", 2)]);
        assert!(snapshots[2].is_empty());
    }

    #[test]
    fn class_scores_from_a_confusion_matrix() {
        // truth cat: 8 right, 2 labelled dog; truth dog: 3 right, 1 labelled cat, 1 labelled "a,\"b\"".
        let cells = [("cat", "cat", 8), ("cat", "dog", 2), ("dog", "dog", 3), ("dog", "cat", 1), ("dog", "a,\"b\"", 1)];
        let scores = class_scores(cells);
        let classes: Vec<_> = scores.iter().map(|s| (s.class.as_str(), s.support, s.predicted, s.correct)).collect();
        assert_eq!(classes, [("a,\"b\"", 0, 1, 0), ("cat", 10, 9, 8), ("dog", 5, 5, 3)]);
        let cat = &scores[1];
        assert_eq!((cat.precision(), cat.recall()), (Some(8.0 / 9.0), Some(0.8)));
        let f1 = 2.0 * (8.0 / 9.0) * 0.8 / (8.0 / 9.0 + 0.8);
        assert!((cat.f1().unwrap() - f1).abs() < 1e-12);
        assert_eq!((scores[0].precision(), scores[0].recall(), scores[0].f1()), (Some(0.0), None, None));
        let never_right = ClassScore { class: "x".into(), support: 3, predicted: 2, correct: 0 };
        assert_eq!(never_right.f1(), Some(0.0));
    }
}
