//! The monitoring views: pure functions of the observation collection, like
//! [`crate::count::error_counts`], that the batch job and `--follow` build the same way.
//!
//! - [`confusion::confusion_counts`]: `(scope, truth, inferred)` counts, per producer and over all;
//!   [`confusion::class_scores`] turns one scope's counts into per-class precision, recall, F1.
//! - [`windows::error_windows`]: judged and wrong records per producer per window of `InferredAt`.
//! - [`drift::label_drift`]: each producer's predicted labels in its latest window against its
//!   reference, from which [`drift::LabelDrift::statistics`] computes chi-square and Hellinger.
//!
//! Every view's state is proportional to distinct (producer, class, class) triples and windows,
//! never to records: sources consolidate records into observations first.

pub mod confusion;
pub mod drift;
pub mod windows;

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
        D: differential_dataflow::Data + Ord + Clone + Send,
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
                for (_, diff) in &current {
                    assert_eq!(*diff, 1, "every row of a view holds once");
                }
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
