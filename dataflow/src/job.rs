//! The batch job: every worker loads its share, the counting dataflow reduces across the
//! cluster, and worker 0 (in process 0) collects the table.

use std::collections::BTreeMap;

use anyhow::Result;
use differential_dataflow::input::Input;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::count::error_counts;
use crate::load::Loader;
use crate::progress::Progress;
use crate::record::{Observation, Tally};
use crate::source::{Share, Source};
use crate::stats::LoadStats;
use crate::views::{monitor, Snapshot, ViewCells, ViewOptions};
use crate::worker_zero::{collect_at_worker_zero, current_table, distribute_plan, Rows, StatsInput, WorkerCell};

/// Observations sent between two steps of the dataflow.
const FEED_STEP: usize = 1 << 16;

#[derive(Clone, Debug)]
pub struct CountJob {
    pub source: Source,
    pub cluster: ClusterArgs,
    /// The monitoring views to compute besides the counts, if any.
    pub views: Option<ViewOptions>,
}

/// What process 0 learns: the per-producer table, the views asked for and the merged load
/// statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub table: BTreeMap<String, Tally>,
    pub views: Option<Snapshot>,
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

fn count_on_worker(worker: &mut Worker, job: &CountJob, progress: &Progress) -> Result<Option<Outcome>, String> {
    let share = Share { index: worker.index(), peers: worker.peers() };
    let rows: WorkerCell<Rows> = Default::default();
    let merged: WorkerCell<LoadStats> = Default::default();
    let view_cells = ViewCells::default();
    let probe = ProbeHandle::new();

    let (mut observations, mut stats_input) = worker.dataflow::<u64, _, _>(|scope| {
        let (observations_input, observations) = scope.new_collection::<Observation, isize>();
        let mut stats_input = StatsInput::new();
        if let Some(options) = &job.views {
            monitor(observations.clone(), options, &view_cells, &probe);
        }
        collect_at_worker_zero(error_counts(observations), stats_input.to_stream(scope), &rows, &merged, &probe);
        (observations_input, stats_input)
    });

    let mut loader = Loader::new(job.views.as_ref().map(|options| options.windowing));
    if let Err(err) = load_share(worker, &job.source, &mut loader, progress) {
        // Still take part in the dataflow, so that the failure reaches process 0 and no worker waits forever.
        loader.stats.failure = Some(format!("{err:#}"));
    }
    // Fed in steps: every view gets its own copy of what is sent, and stepping lets them sum
    // each step up before the next, so that memory holds the sums rather than all the copies.
    for (sent, (observation, diff)) in loader.counts.drain_lazily().enumerate() {
        observations.update(observation, diff);
        if sent % FEED_STEP == FEED_STEP - 1 {
            observations.flush();
            worker.step();
        }
    }
    stats_input.send(std::mem::take(&mut loader.stats));
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
    let views = job.views.as_ref().map(|_| view_cells.snapshot());
    Ok(Some(Outcome { table, views, stats }))
}

/// This worker's share of the source: its `_id` ranges of the collection, or its part of the file.
fn load_share(worker: &mut Worker, source: &Source, loader: &mut Loader, progress: &Progress) -> Result<()> {
    match source {
        Source::Mongo(mongo) => {
            distribute_plan(worker, mongo)?.iter().try_for_each(|range| mongo.load_range(range, loader, progress))
        }
        Source::File(path) => {
            let share = Share { index: worker.index(), peers: worker.peers() };
            crate::source::file::load_share(path, share, loader, progress)
        }
    }
}
