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
