//! The plumbing between worker 0 and the others, shared by the batch job and `--follow`: worker
//! 0 decides what each worker reads and collects what they all computed. Every worker must take
//! part in each of these tiny dataflows, even one that has failed, or the others would wait for
//! it forever.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use anyhow::Result;
use differential_dataflow::VecCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Stream};
use timely::worker::Worker;

use crate::record::Tally;
use crate::source::mongo::{KeyRange, MongoSource};
use crate::stats::LoadStats;

/// State a worker shares with the operators it built: they run on its thread, one at a time.
pub type WorkerCell<T> = Rc<RefCell<T>>;
/// Every `(key, value)` row worker 0 has seen with a multiplicity other than zero: by default
/// the `(ProducerID, Tally)` rows of the counts.
pub type Rows<K = String, V = Tally> = BTreeMap<(K, V), isize>;
pub(crate) type StatsInput = InputHandle<u64, CapacityContainerBuilder<Vec<LoadStats>>>;

/// The sink side of every job: tallies and load statistics go to worker 0, which keeps them.
pub(crate) fn collect_at_worker_zero<'scope>(
    counts: VecCollection<'scope, u64, (String, Tally), isize>,
    stats: Stream<'scope, u64, Vec<LoadStats>>,
    rows: &WorkerCell<Rows>,
    merged: &WorkerCell<LoadStats>,
    probe: &ProbeHandle<u64>,
) {
    collect_rows_at_worker_zero(counts, rows, probe);
    let sink = merged.clone();
    stats.exchange(|_| 0).inspect(move |stats: &LoadStats| sink.borrow_mut().merge(stats)).probe_with(probe);
}

/// A view's rows go to worker 0, which keeps each with its multiplicity.
pub fn collect_rows_at_worker_zero<'scope, K, V>(
    rows_of_view: VecCollection<'scope, u64, (K, V), isize>,
    rows: &WorkerCell<Rows<K, V>>,
    probe: &ProbeHandle<u64>,
) where
    K: timely::ExchangeData + Ord + Clone,
    V: timely::ExchangeData + Ord + Clone,
{
    let sink = rows.clone();
    rows_of_view
        .inner
        .exchange(|_| 0)
        .inspect(move |(row, _time, diff)| {
            let mut rows = sink.borrow_mut();
            let count = rows.entry(row.clone()).or_default();
            *count += diff;
            if *count == 0 {
                // A follower's views change for as long as it runs: forget what was retracted.
                rows.remove(row);
            }
        })
        .probe_with(probe);
}

/// The table as of the last completed time: the rows whose updates add up to one.
pub fn current_table<K: Ord + Clone, V: Clone>(rows: &Rows<K, V>) -> BTreeMap<K, V> {
    rows.iter().filter(|(_, diff)| **diff > 0).map(|((key, value), _)| (key.clone(), value.clone())).collect()
}

/// Brings `table` up to the last completed time with the updates collected in `rows` since the
/// last call, and empties `rows`; whether the table changed. For views with one value per key at
/// every completed time: a round costs what changed in it, not the size of the table.
pub fn apply_updates<K: Ord, V>(rows: &mut Rows<K, V>, table: &mut BTreeMap<K, V>) -> bool {
    let updates = std::mem::take(rows);
    let changed = !updates.is_empty();
    // A changed value comes as its old row retracted and its new row added: retractions first.
    let (added, retracted): (Vec<_>, Vec<_>) = updates.into_iter().partition(|(_, diff)| *diff > 0);
    for ((key, _), _) in retracted {
        table.remove(&key);
    }
    table.extend(added.into_iter().map(|(row, _)| row));
    changed
}

/// Worker 0 plans the `_id` ranges; a tiny dataflow hands each worker its own.
pub(crate) fn distribute_plan(worker: &mut Worker, mongo: &MongoSource) -> Result<Vec<KeyRange>> {
    from_worker_zero(worker, |peers| mongo.plan(peers))
}

/// Worker 0 decides a list of items, the `i`-th for worker `i % peers`; a tiny dataflow hands
/// each worker its own. If deciding fails, worker 0 gets the error and the others nothing.
pub(crate) fn from_worker_zero<T: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    decide: impl FnOnce(usize) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mine: WorkerCell<Vec<T>> = Default::default();
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(usize, T)>>>::new();
        let sink = mine.clone();
        input
            .to_stream(scope)
            .exchange(|(worker, _): &(usize, T)| *worker as u64)
            .inspect(move |(_, item): &(usize, T)| sink.borrow_mut().push(item.clone()))
            .probe_with(&probe);
        input
    });
    let decided = if worker.index() == 0 { decide(worker.peers()) } else { Ok(Vec::new()) };
    if let Ok(items) = &decided {
        items.iter().cloned().enumerate().for_each(|item| input.send(item));
    }
    // Closing the input even after a failure lets every worker finish this dataflow.
    input.advance_to(1);
    worker.step_while(|| probe.less_than(&1));
    decided?;
    let items = mine.borrow().clone();
    Ok(items)
}

/// Every worker hands worker 0 one item; worker 0 gets them all, in worker order, the others
/// nothing.
pub(crate) fn gather_at_worker_zero<T: timely::ExchangeData + Clone>(worker: &mut Worker, item: T) -> Vec<T> {
    let gathered: WorkerCell<Vec<(usize, T)>> = Default::default();
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(usize, T)>>>::new();
        let sink = gathered.clone();
        input
            .to_stream(scope)
            .exchange(|_| 0)
            .inspect(move |item: &(usize, T)| sink.borrow_mut().push(item.clone()))
            .probe_with(&probe);
        input
    });
    input.send((worker.index(), item));
    input.advance_to(1);
    worker.step_while(|| probe.less_than(&1));
    let mut items = gathered.take();
    items.sort_by_key(|(index, _)| *index);
    items.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::*;
    use crate::record::Observation;
    use crate::views::windows::error_windows;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_table_kept_by_its_updates_equals_the_one_rebuilt_from_every_row() {
        let obs =
            |truth: &str, inferred: &str, window: i64| Observation::new("a", truth, Some(inferred)).in_window(window);
        let rounds: Vec<Vec<(Observation, isize)>> = vec![
            vec![(obs("cat", "cat", 0), 3), (obs("cat", "dog", HOUR), 1)],
            // A value changes, a window appears.
            vec![(obs("cat", "dog", 0), 1), (obs("cat", "cat", 2 * HOUR), 1)],
            // A window goes, and one comes and goes within the round.
            vec![(obs("cat", "dog", HOUR), -1), (obs("cat", "cat", 5 * HOUR), 1), (obs("cat", "cat", 5 * HOUR), -1)],
            // Nothing changes.
            vec![(obs("cat", "cat", 0), 1), (obs("cat", "cat", 0), -1)],
        ];
        let (kept, rebuilt, changed) = timely::execute_directly(move |worker| {
            let (updates, every_row): (WorkerCell<Rows<_, _>>, WorkerCell<Rows<_, _>>) = Default::default();
            let probe = ProbeHandle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, observations) = scope.new_collection();
                let windows = error_windows(observations);
                collect_rows_at_worker_zero(windows.clone(), &updates, &probe);
                collect_rows_at_worker_zero(windows, &every_row, &probe);
                input
            });
            let (mut table, mut kept, mut rebuilt, mut changed) = (BTreeMap::new(), Vec::new(), Vec::new(), Vec::new());
            for (round, rows) in rounds.into_iter().enumerate() {
                rows.into_iter().for_each(|(observation, diff)| input.update(observation, diff));
                input.advance_to(round as u64 + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
                changed.push(apply_updates(&mut updates.borrow_mut(), &mut table));
                kept.push(table.clone());
                rebuilt.push(current_table(&every_row.borrow()));
            }
            (kept, rebuilt, changed)
        });
        assert_eq!(kept, rebuilt);
        assert_eq!(changed, [true, true, true, false]);
        assert_eq!(kept[2].keys().map(|(_, window)| *window).collect::<Vec<_>>(), [0, 2 * HOUR]);
        assert_eq!(kept[2][&("a".to_owned(), 0)], Tally { correct: 3, incorrect: 1, pending: 0 });
    }
}
