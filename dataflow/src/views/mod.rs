//! The monitoring views: pure functions of the observation collection, like
//! [`crate::count::error_counts`], that the batch job and `--follow` build the same way.
//!
//! - [`confusion::confusion_counts`]: `(scope, truth, inferred)` counts, per producer and over all;
//!   [`confusion::class_scores`] turns one scope's counts into per-class precision, recall, F1.
//! - [`windows::error_windows`]: judged and wrong records per producer per window of `InferredAt`.
//! - [`drift::label_drift`]: each producer's predicted labels in its latest window against its
//!   reference, from which [`drift::LabelDrift::statistics`] computes chi-square and Hellinger.
//! - [`alerts::alert_evidence`]: per `--alert` rule and producer, what the rule judges.
//!
//! Every view's state is proportional to distinct (producer, class, class) triples and windows,
//! never to records: sources consolidate records into observations first.

pub mod alerts;
pub mod confusion;
pub mod drift;
pub mod reference_file;
pub mod sink;
pub mod windows;

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::ProbeHandle;

use crate::record::{Observation, Tally, Verdict, Windowing};
use crate::worker_zero::{apply_updates, collect_rows_at_worker_zero, Rows, WorkerCell};
use alerts::{alert_evidence, AlertRules, Evidence};
use confusion::{confusion_of, Cell};
use drift::{label_drift_of, LabelDrift, Reference};
use windows::error_windows_of;

/// What the views need besides the observations, decided once from the flags.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The windows of `InferredAt` for the error rate over time and the drift.
    pub windowing: Windowing,
    /// What each producer's latest window is compared with.
    pub reference: Reference,
    /// A drift is flagged when its p-value is below this.
    pub drift_alpha: f64,
    /// The `--alert` rules to gather evidence for, if any.
    pub alerts: Option<AlertRules>,
}

/// Every view's updates as worker 0 collects them, one cell per view, until they are read.
#[derive(Clone, Default)]
pub struct ViewCells {
    confusion: WorkerCell<Rows<Cell, u64>>,
    windows: WorkerCell<Rows<(String, i64), Tally>>,
    drift: WorkerCell<Rows<String, LabelDrift>>,
    alerts: WorkerCell<Rows<(usize, String), Evidence>>,
}

/// Every view, built from one collection of observations; worker 0 collects their rows.
pub fn monitor<'scope>(
    observations: VecCollection<'scope, u64, Observation, isize>,
    options: &ViewOptions,
    cells: &ViewCells,
    probe: &ProbeHandle<u64>,
) {
    monitor_inputs(ViewInputs::of(observations), options, cells, probe);
}

/// What the views read of the observations, one collection per view. The follower projects its
/// observations; the batch job sums each projection in its loader
/// ([`crate::consolidate::Consolidator::for_views`]), so that its dataflow never sees an observation.
pub struct ViewInputs<'scope> {
    /// `(producer, truth, inferred)` of inferred records: the confusion counts.
    pub labelled: VecCollection<'scope, u64, (String, String, String), isize>,
    /// `((producer, window), verdict)` of records in a window: the error rate over time.
    pub windowed_verdicts: VecCollection<'scope, u64, ((String, i64), Verdict), isize>,
    /// `(producer, (window, label))` of records in a window: the drift.
    pub window_labels: VecCollection<'scope, u64, (String, (i64, String)), isize>,
}

impl<'scope> ViewInputs<'scope> {
    pub fn of(observations: VecCollection<'scope, u64, Observation, isize>) -> Self {
        ViewInputs {
            labelled: observations.clone().flat_map(confusion::labelled),
            windowed_verdicts: observations.clone().flat_map(windows::windowed_verdict),
            window_labels: observations.flat_map(drift::window_label),
        }
    }
}

/// Every view, built from its input; worker 0 collects their rows.
pub fn monitor_inputs<'scope>(
    inputs: ViewInputs<'scope>,
    options: &ViewOptions,
    cells: &ViewCells,
    probe: &ProbeHandle<u64>,
) {
    collect_rows_at_worker_zero(confusion_of(inputs.labelled), &cells.confusion, probe);
    let windows = error_windows_of(inputs.windowed_verdicts);
    if let Some(rules) = &options.alerts {
        collect_rows_at_worker_zero(alert_evidence(windows.clone(), rules.clone()), &cells.alerts, probe);
    }
    collect_rows_at_worker_zero(windows, &cells.windows, probe);
    collect_rows_at_worker_zero(label_drift_of(inputs.window_labels, options.reference.clone()), &cells.drift, probe);
}

/// Every view as of one time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub confusion: BTreeMap<Cell, u64>,
    pub windows: BTreeMap<(String, i64), Tally>,
    pub drift: BTreeMap<String, LabelDrift>,
    /// Per `(rule index, producer)`; empty without `--alert`.
    pub alerts: BTreeMap<(usize, String), Evidence>,
}

impl ViewCells {
    /// Brings `snapshot` up to the last completed time with the rows collected since the last
    /// call (worker 0 only: the others hold nothing); whether any view changed.
    pub fn update(&self, snapshot: &mut Snapshot) -> bool {
        let changed = [
            apply_updates(&mut self.confusion.borrow_mut(), &mut snapshot.confusion),
            apply_updates(&mut self.windows.borrow_mut(), &mut snapshot.windows),
            apply_updates(&mut self.drift.borrow_mut(), &mut snapshot.drift),
            apply_updates(&mut self.alerts.borrow_mut(), &mut snapshot.alerts),
        ];
        changed.contains(&true)
    }

    /// The views as of the last completed time, read once (it takes the rows collected so far).
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.update(&mut snapshot);
        snapshot
    }
}

impl Snapshot {
    /// One scope's `(truth, inferred, count)` cells.
    pub fn confusion_of<'a>(
        &'a self,
        scope: &'a confusion::Scope,
    ) -> impl Iterator<Item = (&'a str, &'a str, u64)> + 'a {
        // Cells sort by scope first: one scope's cells are one range, found without a scan.
        let first = Cell { scope: scope.clone(), ground_truth: String::new(), inferred: String::new() };
        self.confusion
            .range(first..)
            .take_while(move |(cell, _)| &cell.scope == scope)
            .map(|(cell, count)| (cell.ground_truth.as_str(), cell.inferred.as_str(), *count))
    }

    /// Each scope's per-class scores, in scope order: one pass over the confusion counts (which
    /// are sorted by scope first), however many producers.
    pub fn class_scores(&self) -> Vec<(&confusion::Scope, Vec<confusion::ClassScore>)> {
        let cells: Vec<(&Cell, &u64)> = self.confusion.iter().collect();
        cells
            .chunk_by(|(a, _), (b, _)| a.scope == b.scope)
            .map(|scope| {
                let scores = confusion::class_scores(
                    scope.iter().map(|(cell, n)| (cell.ground_truth.as_str(), cell.inferred.as_str(), **n)),
                );
                (&scope[0].0.scope, scores)
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use differential_dataflow::input::Input;
    use differential_dataflow::VecCollection;

    use crate::record::Observation;
    use crate::worker_zero::WorkerCell;

    /// Feeds `rounds` of observation updates through `view` on one worker and returns the
    /// view's output after each round, as rows with their accumulated multiplicities.
    pub fn after_each_round<D>(
        view: impl for<'s> Fn(VecCollection<'s, u64, Observation, isize>) -> VecCollection<'s, u64, D, isize>
            + Send
            + Sync
            + 'static,
        rounds: Vec<Vec<(Observation, isize)>>,
    ) -> Vec<BTreeMap<D, isize>>
    where
        D: differential_dataflow::Data + Ord + Clone + Send + std::fmt::Debug,
    {
        timely::execute_directly(move |worker| {
            let output: WorkerCell<BTreeMap<D, isize>> = Default::default();
            let sink = output.clone();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, observations) = scope.new_collection();
                let (probe, _) = view(observations)
                    .inspect(move |(row, _time, diff)| *sink.borrow_mut().entry(row.clone()).or_default() += diff)
                    .probe();
                (input, probe)
            });
            let mut snapshots = Vec::new();
            for (round, updates) in rounds.into_iter().enumerate() {
                for (observation, diff) in updates {
                    input.update(observation, diff);
                }
                input.advance_to(round as u64 + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
                let current: BTreeMap<D, isize> = output
                    .borrow()
                    .iter()
                    .filter(|(_, diff)| **diff != 0)
                    .map(|(row, diff)| (row.clone(), *diff))
                    .collect();
                assert!(current.values().all(|diff| *diff == 1), "every row of a view holds once: {current:?}");
                snapshots.push(current);
            }
            snapshots
        })
    }

    /// The rows of one snapshot, without their (always 1) multiplicities.
    pub fn rows<D: Clone>(snapshot: &BTreeMap<D, isize>) -> Vec<D> {
        snapshot.keys().cloned().collect()
    }
}
