//! The batch job: every worker loads its share, the counting dataflow reduces across the
//! cluster, and worker 0 (in process 0) collects the table.

use std::collections::BTreeMap;

use anyhow::Result;
use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::count::tally_by_producer;
use crate::load::Loader;
use crate::progress::Progress;
use crate::record::{Tally, Verdict};
use crate::source::{Share, Source};
use crate::stats::LoadStats;
use crate::views::{monitor_inputs, Snapshot, ViewCells, ViewInputs, ViewOptions};
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

    let (mut inputs, mut stats_input) = worker.dataflow::<u64, _, _>(|scope| {
        let (verdicts_input, verdicts) = scope.new_collection();
        let (labelled_input, labelled) = scope.new_collection();
        let (windowed_input, windowed_verdicts) = scope.new_collection();
        let (window_labels_input, window_labels) = scope.new_collection();
        let mut stats_input = StatsInput::new();
        if let Some(options) = &job.views {
            let view_inputs = ViewInputs { labelled, windowed_verdicts, window_labels };
            monitor_inputs(view_inputs, options, &view_cells, &probe);
        }
        let counts = tally_by_producer(verdicts);
        collect_at_worker_zero(counts, stats_input.to_stream(scope), &rows, &merged, &probe);
        let inputs = Inputs {
            verdicts: verdicts_input,
            labelled: labelled_input,
            windowed_verdicts: windowed_input,
            window_labels: window_labels_input,
        };
        (inputs, stats_input)
    });

    let mut loader = Loader::for_views(job.views.as_ref());
    if let Err(err) = load_share(worker, &job.source, &mut loader, progress) {
        // Still take part in the dataflow, so that the failure reaches process 0 and no worker waits forever.
        loader.stats.failure = Some(format!("{err:#}"));
    }
    let sums = loader.counts.drain_view_rows();
    feed(worker, &mut inputs.verdicts, sums.verdicts);
    feed(worker, &mut inputs.labelled, sums.labelled);
    feed(worker, &mut inputs.windowed_verdicts, sums.windowed_verdicts);
    feed(worker, &mut inputs.window_labels, sums.window_labels);
    stats_input.send(std::mem::take(&mut loader.stats));
    inputs.close();
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

/// The batch dataflow's inputs: what the count and each view read, summed by the loader.
struct Inputs {
    verdicts: InputSession<u64, (String, Verdict), isize>,
    labelled: InputSession<u64, (String, String, String), isize>,
    windowed_verdicts: InputSession<u64, ((String, i64), Verdict), isize>,
    window_labels: InputSession<u64, (String, (i64, String)), isize>,
}

impl Inputs {
    /// Everything is sent: time 0 is complete.
    fn close(&mut self) {
        self.verdicts.advance_to(1);
        self.labelled.advance_to(1);
        self.windowed_verdicts.advance_to(1);
        self.window_labels.advance_to(1);
        self.verdicts.flush();
        self.labelled.flush();
        self.windowed_verdicts.flush();
        self.window_labels.flush();
    }
}

/// Sends `rows` in steps: a view may get copies of what is sent, and stepping lets it sum each
/// step up before the next, so that memory holds the sums rather than all the copies.
fn feed<D: differential_dataflow::Data>(
    worker: &mut Worker,
    input: &mut InputSession<u64, D, isize>,
    rows: impl Iterator<Item = (D, isize)>,
) {
    for (sent, (row, diff)) in rows.enumerate() {
        input.update(row, diff);
        if sent % FEED_STEP == FEED_STEP - 1 {
            input.flush();
            worker.step();
        }
    }
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
