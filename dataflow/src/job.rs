//! The batch job: every worker loads its share, the counting dataflow reduces across the
//! cluster, and worker 0 (in process 0) collects the table.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use anyhow::Result;
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Stream};
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::consolidate::Consolidator;
use crate::count::error_counts;
use crate::progress::Progress;
use crate::record::{Observation, Tally};
use crate::source::mongo::{KeyRange, MongoSource};
use crate::source::{Share, Source};
use crate::stats::LoadStats;

#[derive(Clone, Debug)]
pub struct CountJob {
    pub source: Source,
    pub cluster: ClusterArgs,
}

/// What process 0 learns: the per-producer table and the merged load statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub table: BTreeMap<String, Tally>,
    pub stats: LoadStats,
}

impl Outcome {
    pub fn total(&self) -> Tally {
        let mut total = Tally::default();
        self.table.values().for_each(|tally| total.add(tally));
        total
    }
}

/// Runs the job on this process's workers; process 0 gets `Some(outcome)`, the others `None`.
pub fn run(job: CountJob, progress: Progress) -> Result<Option<Outcome>> {
    let cluster = job.cluster.clone();
    let outcomes = cluster.execute(move |worker| count_on_worker(worker, &job, &progress))?;
    Ok(outcomes.into_iter().flatten().next())
}

pub(crate) type Shared<T> = Rc<RefCell<T>>;
/// Every `(ProducerID, Tally)` row worker 0 has seen, with its accumulated multiplicity.
pub(crate) type Rows = BTreeMap<(String, Tally), isize>;
pub(crate) type StatsInput = InputHandle<u64, CapacityContainerBuilder<Vec<LoadStats>>>;

/// The sink side of every job: tallies and load statistics go to worker 0, which keeps them.
pub(crate) fn collect_at_worker_zero<'scope>(
    counts: VecCollection<'scope, u64, (String, Tally), isize>,
    stats: Stream<'scope, u64, Vec<LoadStats>>,
    rows: &Shared<Rows>,
    merged: &Shared<LoadStats>,
    probe: &ProbeHandle<u64>,
) {
    let sink = rows.clone();
    counts
        .inner
        .exchange(|_| 0)
        .inspect(move |(row, _time, diff)| *sink.borrow_mut().entry(row.clone()).or_default() += diff)
        .probe_with(probe);
    let sink = merged.clone();
    stats.exchange(|_| 0).inspect(move |stats: &LoadStats| sink.borrow_mut().merge(stats)).probe_with(probe);
}

fn count_on_worker(worker: &mut Worker, job: &CountJob, progress: &Progress) -> Result<Option<Outcome>, String> {
    let share = Share { index: worker.index(), peers: worker.peers() };
    let rows: Shared<Rows> = Default::default();
    let merged: Shared<LoadStats> = Default::default();
    let probe = ProbeHandle::new();

    let (mut observations, mut stats_input) = worker.dataflow::<u64, _, _>(|scope| {
        let (observations_input, observations) = scope.new_collection::<Observation, isize>();
        let mut stats_input = StatsInput::new();
        collect_at_worker_zero(error_counts(observations), stats_input.to_stream(scope), &rows, &merged, &probe);
        (observations_input, stats_input)
    });

    let mut counts = Consolidator::default();
    let mut stats = LoadStats::default();
    let loaded = match &job.source {
        Source::Mongo(mongo) => {
            let (ranges, planning_failure) = distribute_plan(worker, mongo);
            planning_failure.map_or(Ok(()), Err).and_then(|()| {
                ranges.iter().try_for_each(|range| mongo.load_range(range, &mut counts, &mut stats, progress))
            })
        }
        Source::File(path) => crate::source::file::load_share(path, share, &mut counts, &mut stats, progress),
    };
    if let Err(err) = loaded {
        // Still take part in the dataflow, so that the failure reaches process 0 and no worker waits forever.
        stats.failure = Some(format!("{err:#}"));
    }
    for (observation, diff) in counts.drain() {
        observations.update(observation, diff);
    }
    stats_input.send(stats);
    observations.advance_to(1);
    observations.flush();
    stats_input.advance_to(1);
    worker.step_while(|| probe.less_than(&1));

    if share.index != 0 {
        return Ok(None);
    }
    let stats = merged.borrow().clone();
    if let Some(failure) = stats.failure {
        return Err(failure);
    }
    let table = current_table(&rows.borrow());
    Ok(Some(Outcome { table, stats }))
}

/// The table as of the last completed time: the rows whose updates add up to one.
pub fn current_table(rows: &Rows) -> BTreeMap<String, Tally> {
    rows.iter().filter(|(_, diff)| **diff > 0).map(|((producer, tally), _)| (producer.clone(), *tally)).collect()
}

/// Worker 0 plans the `_id` ranges; a tiny dataflow hands each worker its own.
pub(crate) fn distribute_plan(worker: &mut Worker, mongo: &MongoSource) -> (Vec<KeyRange>, Option<anyhow::Error>) {
    from_worker_zero(worker, |peers| mongo.plan(peers))
}

/// Worker 0 decides a list of items, the `i`-th for worker `i % peers`; a tiny dataflow hands
/// each worker its own. The error, if deciding failed, stays with worker 0.
pub(crate) fn from_worker_zero<T: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    decide: impl FnOnce(usize) -> anyhow::Result<Vec<T>>,
) -> (Vec<T>, Option<anyhow::Error>) {
    let mine: Shared<Vec<T>> = Default::default();
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
    let mut failure = None;
    if worker.index() == 0 {
        match decide(worker.peers()) {
            Ok(items) => items.into_iter().enumerate().for_each(|item| input.send(item)),
            Err(err) => failure = Some(err),
        }
    }
    input.advance_to(1);
    worker.step_while(|| probe.less_than(&1));
    let items = mine.borrow().clone();
    (items, failure)
}
