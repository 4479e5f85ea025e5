//! What `--serve` shows: the counts and every view as of one time, in the shapes the JSON API
//! returns and the live page draws. Built from the follower's tables by a pure function.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::alerts::FiringAlert;
use crate::record::Tally;
use crate::views::confusion::Scope;
use crate::views::drift::Distribution;
use crate::views::sink::timestamp;
use crate::views::Snapshot;

/// Everything the page and the API show.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Board {
    /// RFC 3339 UTC: every write made before this time is counted.
    pub as_of: String,
    /// The same in ms since the epoch; `None` before the first load is done.
    pub as_of_ms: Option<i64>,
    /// Where the records come from, without a password.
    pub source: String,
    /// The views' window width in ms; `None` without views.
    pub window_ms: Option<i64>,
    /// Sorted by error rate, worst first; producers with nothing judged last.
    pub producers: Vec<ProducerRow>,
    pub confusion: Vec<ConfusionRow>,
    pub classes: Vec<ClassRow>,
    /// Each producer's latest [`BOARD_WINDOWS`] windows: what a sparkline shows, and a bounded
    /// event however long the follower runs (the files and the report hold every window).
    pub windows: Vec<WindowRow>,
    pub drift: Vec<DriftRow>,
    /// The `--alert` rules firing now, by rule then producer.
    pub alerts: Vec<FiringAlert>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProducerRow {
    pub producer: String,
    pub judged: u64,
    pub errors: u64,
    pub pending: u64,
    pub error_rate: Option<f64>,
    /// The error rate of the producer's latest window, with views.
    pub latest_window_error_rate: Option<f64>,
    /// Whether its predicted labels drifted, with views and a comparable window.
    pub drifted: Option<bool>,
    /// Whether an `--alert` rule fires for it.
    pub alerting: bool,
}

/// One confusion cell; `producer` is `None` for the cells over all producers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfusionRow {
    pub producer: Option<String>,
    pub ground_truth: String,
    pub inferred: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassRow {
    pub producer: Option<String>,
    pub class: String,
    pub support: u64,
    pub predicted: u64,
    pub correct: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowRow {
    pub producer: String,
    /// RFC 3339 UTC.
    pub window_start: String,
    pub window_start_ms: i64,
    pub judged: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftRow {
    pub producer: String,
    pub reference_start: Option<String>,
    pub reference_end: Option<String>,
    pub window_start: String,
    pub reference: Distribution,
    pub window: Distribution,
    pub chi_square: Option<f64>,
    pub degrees_of_freedom: Option<u64>,
    pub p_value: Option<f64>,
    pub hellinger: Option<f64>,
    pub drifted: Option<bool>,
}

/// Windows per producer on the board.
pub const BOARD_WINDOWS: usize = 48;

/// What the board is built from.
pub struct Tables<'a> {
    pub counts: &'a BTreeMap<String, Tally>,
    pub views: Option<&'a Snapshot>,
    /// Ms since the epoch.
    pub as_of: i64,
    pub source: String,
    pub window_ms: Option<i64>,
    pub drift_alpha: f64,
    pub alerts: Vec<FiringAlert>,
}

impl Board {
    pub fn new(tables: Tables<'_>) -> Board {
        let empty = Snapshot::default();
        let views = tables.views.unwrap_or(&empty);
        let drift: Vec<DriftRow> =
            views.drift.iter().map(|(producer, drift)| drift_row(producer, drift, tables.drift_alpha)).collect();
        let drifted: BTreeMap<&str, bool> =
            drift.iter().filter_map(|row| Some((row.producer.as_str(), row.drifted?))).collect();
        let latest: BTreeMap<&str, Option<f64>> =
            views.windows.iter().map(|((producer, _), tally)| (producer.as_str(), tally.error_rate())).collect();
        let mut producers: Vec<ProducerRow> = tables
            .counts
            .iter()
            .map(|(producer, tally)| ProducerRow {
                producer: producer.clone(),
                judged: tally.judged(),
                errors: tally.incorrect,
                pending: tally.pending,
                error_rate: tally.error_rate(),
                latest_window_error_rate: latest.get(producer.as_str()).copied().flatten(),
                drifted: drifted.get(producer.as_str()).copied(),
                alerting: tables.alerts.iter().any(|alert| &alert.producer == producer),
            })
            .collect();
        producers.sort_by(|a, b| worst_first(a.error_rate, b.error_rate).then_with(|| a.producer.cmp(&b.producer)));
        Board {
            as_of: timestamp(tables.as_of),
            as_of_ms: Some(tables.as_of),
            source: tables.source,
            window_ms: tables.window_ms,
            producers,
            confusion: views
                .confusion
                .iter()
                .map(|(cell, count)| ConfusionRow {
                    producer: producer_of(&cell.scope),
                    ground_truth: cell.ground_truth.clone(),
                    inferred: cell.inferred.clone(),
                    count: *count,
                })
                .collect(),
            classes: class_rows(views),
            windows: latest_windows(views)
                .map(|((producer, window), tally)| WindowRow {
                    producer: producer.clone(),
                    window_start: timestamp(*window),
                    window_start_ms: *window,
                    judged: tally.judged(),
                    errors: tally.incorrect,
                    error_rate: tally.error_rate(),
                })
                .collect(),
            drift,
            alerts: tables.alerts,
        }
    }
}

/// The latest [`BOARD_WINDOWS`] windows of each producer, in order (the windows are sorted by
/// producer, then start).
fn latest_windows(views: &Snapshot) -> impl Iterator<Item = (&(String, i64), &Tally)> {
    let windows: Vec<(&(String, i64), &Tally)> = views.windows.iter().collect();
    let latest: Vec<_> = windows
        .chunk_by(|((a, _), _), ((b, _), _)| a == b)
        .flat_map(|producer| &producer[producer.len().saturating_sub(BOARD_WINDOWS)..])
        .copied()
        .collect();
    latest.into_iter()
}

/// Higher rates first; no rate (nothing judged) last.
fn worst_first(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

fn producer_of(scope: &Scope) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Producer(producer) => Some(producer.clone()),
    }
}

fn class_rows(views: &Snapshot) -> Vec<ClassRow> {
    let mut rows = Vec::new();
    for (scope, scores) in views.class_scores() {
        for score in scores {
            rows.push(ClassRow {
                producer: producer_of(scope),
                precision: score.precision(),
                recall: score.recall(),
                f1: score.f1(),
                class: score.class,
                support: score.support,
                predicted: score.predicted,
                correct: score.correct,
            });
        }
    }
    rows
}

fn drift_row(producer: &str, drift: &crate::views::drift::LabelDrift, alpha: f64) -> DriftRow {
    let stats = drift.statistics();
    DriftRow {
        producer: producer.to_owned(),
        reference_start: drift.reference_period.map(|(start, _)| timestamp(start)),
        reference_end: drift.reference_period.map(|(_, end)| timestamp(end)),
        window_start: timestamp(drift.window_start),
        reference: drift.reference.clone(),
        window: drift.window.clone(),
        chi_square: stats.map(|s| s.chi_square),
        degrees_of_freedom: stats.map(|s| s.degrees_of_freedom),
        p_value: stats.map(|s| s.p_value),
        hellinger: stats.map(|s| s.hellinger),
        drifted: stats.map(|s| s.p_value < alpha),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::confusion::Cell;
    use crate::views::drift::LabelDrift;

    fn tally(correct: u64, incorrect: u64, pending: u64) -> Tally {
        Tally { correct, incorrect, pending }
    }

    #[test]
    fn producers_worst_first_with_their_latest_window_and_drift() {
        let counts = BTreeMap::from([
            ("a".to_owned(), tally(9, 1, 0)),
            ("b".to_owned(), tally(1, 3, 2)),
            ("idle".to_owned(), tally(0, 0, 4)),
        ]);
        let mut views = Snapshot::default();
        views.windows.insert(("b".into(), 0), tally(1, 0, 0));
        views.windows.insert(("b".into(), 3_600_000), tally(0, 3, 0));
        let counts_of = |pairs: &[(&str, u64)]| pairs.iter().map(|(l, n)| (l.to_string(), *n)).collect();
        views.drift.insert(
            "b".into(),
            LabelDrift {
                reference_period: Some((0, 3_600_000)),
                reference: counts_of(&[("cat", 40)]),
                window_start: 3_600_000,
                window: counts_of(&[("dog", 40)]),
            },
        );
        let cell = |scope, t: &str, i: &str| Cell { scope, ground_truth: t.into(), inferred: i.into() };
        views.confusion.insert(cell(Scope::All, "cat", "dog"), 4);
        views.confusion.insert(cell(Scope::Producer("b".into()), "cat", "dog"), 3);
        let board = Board::new(Tables {
            counts: &counts,
            views: Some(&views),
            as_of: 1_764_504_000_000,
            source: "x".into(),
            window_ms: Some(3_600_000),
            drift_alpha: 0.01,
            alerts: vec![FiringAlert { rule: "r".into(), producer: "b".into(), fired_at: "t".into() }],
        });
        let order: Vec<_> = board
            .producers
            .iter()
            .map(|p| (p.producer.as_str(), p.error_rate, p.latest_window_error_rate, p.drifted, p.alerting))
            .collect();
        assert_eq!(
            order,
            [
                ("b", Some(0.75), Some(1.0), Some(true), true),
                ("a", Some(0.1), None, None, false),
                ("idle", None, None, None, false)
            ]
        );
        assert_eq!(board.windows[1].window_start, "2026-11-30T12:00:00Z".replace("2026-11-30T12", "1970-01-01T01"));
        assert_eq!(board.confusion[0].producer, None);
        assert_eq!(board.classes.iter().filter(|c| c.producer.is_none()).count(), 2, "cat and dog over all");
        assert!(board.drift[0].hellinger.unwrap() > 0.99);
    }

    #[test]
    fn the_board_keeps_each_producers_latest_windows() {
        let mut views = Snapshot::default();
        for window in 0..100 {
            views.windows.insert(("a".into(), window * 3_600_000), tally(1, 0, 0));
        }
        views.windows.insert(("b".into(), 0), tally(0, 1, 0));
        let counts = BTreeMap::new();
        let board = Board::new(Tables {
            counts: &counts,
            views: Some(&views),
            as_of: 0,
            source: String::new(),
            window_ms: None,
            drift_alpha: 0.01,
            alerts: Vec::new(),
        });
        let of =
            |p: &str| board.windows.iter().filter(|w| w.producer == p).map(|w| w.window_start_ms).collect::<Vec<_>>();
        assert_eq!(of("a"), (52..100).map(|w| w * 3_600_000).collect::<Vec<_>>());
        assert_eq!(of("b"), [0]);
    }
}
