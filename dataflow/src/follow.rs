//! `dataflow count --follow`: after the initial load, keep the CSV equal to what a fresh batch
//! count would give, by feeding the same counting function each record's changes.
//!
//! Records enter as upserts keyed by `_id` (differential's `arrange_from_upsert`), so a changed
//! record retracts its old observation and adds its new one, and a deleted record retracts its
//! observation; the state is spread over all workers by `_id`. Worker 0 polls the change log
//! (see [`crate::source::changes`]) and drives the rounds; every worker holds its share of the
//! state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::consolidate::Consolidator;
use crate::count::error_counts;
use crate::job::{collect_at_worker_zero, current_table, distribute_plan, from_worker_zero, Rows, Shared, StatsInput};
use crate::progress::Progress;
use crate::record::{Observation, Tally};
use crate::sink;
use crate::source::changes::{ChangePoller, Changes};
use crate::source::file::{self, Format, Tail};
use crate::source::mongo::{document_id, read_document, MongoSource, Reading};
use crate::source::{Share, Source};
use crate::stats::LoadStats;

#[derive(Clone, Debug)]
pub struct FollowOptions {
    pub output: PathBuf,
    pub detail: bool,
    pub poll_interval: Duration,
    /// How late a change-log entry may become visible after its `ChangedAt` and still be seen.
    pub settle: Duration,
    /// How long change-log entries are kept.
    pub change_retention: Duration,
    /// Print `ProducerID,old_errors,new_errors` on stdout for every changed row.
    pub print_changes: bool,
    /// Log a status line this often (never when zero).
    pub status_every: Duration,
    /// Set by Ctrl-C or SIGTERM.
    pub stop: Arc<AtomicBool>,
}

type Upserts = InputHandle<u64, CapacityContainerBuilder<Vec<(String, Option<Observation>, u64)>>>;

/// The dataflow's two inputs: records keyed by `_id` (MongoDB, where a record can change) and
/// records that only ever arrive (the lines of a file). Both advance together, one time a round.
struct Inputs {
    upserts: Upserts,
    appended: InputSession<u64, Observation, isize>,
}

impl Inputs {
    fn round(&self) -> u64 {
        *self.upserts.time()
    }

    fn advance_to(&mut self, round: u64) {
        self.upserts.advance_to(round);
        self.appended.advance_to(round);
        self.appended.flush();
    }
}

pub fn run(source: Source, cluster: ClusterArgs, options: FollowOptions, progress: Progress) -> Result<()> {
    if let Source::File(path) = &source {
        if file::detect(path)? == Some(Format::JsonArray) {
            bail!(
                "--follow on a file needs JSON Lines (appended lines are its changes); {} is a JSON array",
                path.display()
            );
        }
    }
    cluster.execute(move |worker| follow_on_worker(worker, &source, &options, &progress))?;
    Ok(())
}

fn follow_on_worker(
    worker: &mut Worker,
    source: &Source,
    options: &FollowOptions,
    progress: &Progress,
) -> Result<(), String> {
    let started = Instant::now();
    let rows: Shared<Rows> = Default::default();
    let merged: Shared<LoadStats> = Default::default();
    let probe = ProbeHandle::new();
    let (mut inputs, mut stats_input) = worker.dataflow::<u64, _, _>(|scope| {
        let mut upserts = Upserts::new();
        let (appended, appended_records) = scope.new_collection::<Observation, isize>();
        let mut stats_input = StatsInput::new();
        let records_by_id = arrange_from_upsert::<
            ValBuilder<String, Observation, u64, isize>,
            ValSpine<String, Observation, u64, isize>,
            String,
            Observation,
        >(upserts.to_stream(scope), "RecordsById")
        .as_collection(|_id, observation| observation.clone());
        let observations = records_by_id.concat(appended_records);
        collect_at_worker_zero(error_counts(observations), stats_input.to_stream(scope), &rows, &merged, &probe);
        (Inputs { upserts, appended }, stats_input)
    });

    let mut stats = LoadStats::default();
    let (feed, loaded) = match source {
        Source::Mongo(mongo) => load_mongo(worker, mongo, options, &mut inputs, &mut stats, progress),
        Source::File(path) => load_file(worker, path, &mut inputs, &mut stats, progress),
    };
    if let Err(err) = loaded {
        stats.failure = Some(format!("{err:#}"));
    }
    stats_input.send(stats);
    inputs.advance_to(1);
    drop(stats_input);
    worker.step_while(|| probe.less_than(&1));

    if worker.index() != 0 {
        // Only worker 0 feeds changes; the others keep their share of the state until it stops.
        drop(inputs);
        worker.step_or_park_while(None, || !probe.done());
        return Ok(());
    }
    progress.finish();
    let loaded = merged.borrow().clone();
    let result = match (loaded.failure.clone(), feed) {
        (Some(failure), _) => Err(failure),
        (None, None) => Err("the change feed did not start".to_owned()),
        (None, Some(feed)) => {
            eprintln!(
                "loaded {} records in {:.2}s ({} skipped, {} deleted); following changes every {} ms",
                loaded.records,
                started.elapsed().as_secs_f64(),
                loaded.skipped,
                loaded.deleted,
                options.poll_interval.as_millis()
            );
            for example in &loaded.skipped_examples {
                eprintln!("  skipped {example}");
            }
            follow_changes(worker, feed, &mut inputs, &rows, &probe, options).map_err(|err| format!("{err:#}"))
        }
    };
    // Closing the inputs lets every worker finish.
    drop(inputs);
    worker.step_or_park_while(None, || !probe.done());
    result
}

/// The initial load from MongoDB. Worker 0 starts polling the change log first, so that writes
/// made while the load reads are not missed.
fn load_mongo(
    worker: &mut Worker,
    source: &MongoSource,
    options: &FollowOptions,
    inputs: &mut Inputs,
    stats: &mut LoadStats,
    progress: &Progress,
) -> (Option<Feed>, Result<()>) {
    // Every worker must still build the planning dataflow below, so a failure here waits.
    let poller = (worker.index() == 0).then(|| ChangePoller::start(source, options.settle, options.change_retention));
    let (poller, start_failure) = match poller {
        Some(Err(err)) => (None, Some(err)),
        started => (started.and_then(Result::ok), None),
    };
    let (ranges, planning_failure) = distribute_plan(worker, source);
    let failure = start_failure.or(planning_failure);
    let loaded = failure.map_or(Ok(()), Err).and_then(|()| {
        ranges.iter().try_for_each(|range| {
            source.scan_range(range, progress, |document| {
                stats.records += 1;
                match read_document(document) {
                    Reading::Counted { producer_id, ground_truth, inferred } => inputs.upserts.send((
                        document_id(document),
                        Some(Observation::new(producer_id, ground_truth, inferred)),
                        0,
                    )),
                    Reading::Deleted => stats.deleted += 1,
                    Reading::Malformed(reason) => stats.skip(|| document_id(document), &reason),
                }
            })
        })
    });
    (poller.map(Feed::Mongo), loaded)
}

/// The initial load of a JSON Lines file: every worker reads its share of the complete lines
/// that worker 0 saw at the start; worker 0 then follows what is appended after them.
fn load_file(
    worker: &mut Worker,
    path: &Path,
    inputs: &mut Inputs,
    stats: &mut LoadStats,
    progress: &Progress,
) -> (Option<Feed>, Result<()>) {
    let share = Share { index: worker.index(), peers: worker.peers() };
    let (lengths, failure) = from_worker_zero(worker, |peers| Ok(vec![file::complete_len(path)?; peers]));
    let Some(&len) = lengths.first() else {
        return (None, Err(failure.unwrap_or_else(|| anyhow::anyhow!("worker 0 did not measure the file"))));
    };
    let mut counts = Consolidator::default();
    let loaded = file::load_lines(path, share, len, &mut counts, stats, progress);
    counts.drain().into_iter().for_each(|(observation, diff)| inputs.appended.update(observation, diff));
    let feed = (worker.index() == 0).then(|| Feed::File(Tail::new(path, len)));
    (feed, loaded)
}

/// Where worker 0 finds the changes after the initial load.
enum Feed {
    Mongo(ChangePoller),
    File(Tail),
}

impl Feed {
    /// Sends what changed since the last call into `inputs`, at their current round; returns
    /// how many records changed. An error is fatal: the CSV can no longer be kept exact.
    fn poll(&mut self, inputs: &mut Inputs) -> Result<usize> {
        match self {
            Feed::Mongo(poller) => {
                if poller.fell_behind() {
                    bail!(
                        "no poll for longer than --change-retention-s: entries another follower pruned may be \
                         missed; restart to reload (and raise --change-retention-s if the initial load is that slow)"
                    );
                }
                let Changes { upserts, malformed } = match poller.poll() {
                    Ok(changes) => changes,
                    Err(err) => {
                        // The CSV keeps its last consistent state; the next poll tries again.
                        tracing::warn!("{err:#}; retrying");
                        return Ok(0);
                    }
                };
                poller.prune();
                for (id, reason) in malformed {
                    tracing::warn!(%id, "changed record not counted: {reason}");
                }
                let round = inputs.round();
                let changed = upserts.len();
                upserts.into_iter().for_each(|(id, observation)| inputs.upserts.send((id, observation, round)));
                Ok(changed)
            }
            Feed::File(tail) => {
                let (mut counts, mut stats) = (Consolidator::default(), LoadStats::default());
                tail.read_appended(&mut counts, &mut stats)?;
                for example in &stats.skipped_examples {
                    tracing::warn!("appended line not counted: {example}");
                }
                counts.drain().into_iter().for_each(|(observation, diff)| inputs.appended.update(observation, diff));
                Ok(stats.records as usize)
            }
        }
    }
}

/// Worker 0's loop: poll, feed one round, wait for it, rewrite the CSV when the table changed.
fn follow_changes(
    worker: &mut Worker,
    mut feed: Feed,
    inputs: &mut Inputs,
    rows: &Shared<Rows>,
    probe: &ProbeHandle<u64>,
    options: &FollowOptions,
) -> Result<()> {
    let mut table = current_table(&rows.borrow());
    sink::write_csv(&options.output, &table, options.detail)?;
    let mut next_status = Instant::now() + options.status_every;
    let mut changes_applied = 0u64;
    while !options.stop.load(Ordering::SeqCst) {
        let deadline = Instant::now() + options.poll_interval;
        while Instant::now() < deadline && !options.stop.load(Ordering::SeqCst) {
            worker
                .step_or_park(Some(deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))));
        }
        let changed = feed.poll(inputs)?;
        if changed > 0 {
            changes_applied += changed as u64;
            let next = inputs.round() + 1;
            inputs.advance_to(next);
            worker.step_while(|| probe.less_than(&next));
            rows.borrow_mut().retain(|_, diff| *diff != 0);
            let updated = current_table(&rows.borrow());
            if updated != table {
                if options.print_changes {
                    print_changes(&table, &updated)?;
                }
                sink::write_csv(&options.output, &updated, options.detail)?;
                table = updated;
            }
        }
        if !options.status_every.is_zero() && Instant::now() >= next_status {
            let errors: u64 = table.values().map(|t| t.incorrect).sum();
            tracing::info!(producers = table.len(), errors, changes_applied, "following");
            next_status = Instant::now() + options.status_every;
        }
    }
    eprintln!("stopped; {} is up to date as of the last poll", options.output.display());
    Ok(())
}

/// `ProducerID,old_errors,new_errors` for every producer whose error count changed.
fn print_changes(old: &BTreeMap<String, Tally>, new: &BTreeMap<String, Tally>) -> Result<()> {
    let stdout = std::io::stdout();
    let mut csv = csv::Writer::from_writer(stdout.lock());
    let producers: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for producer in producers {
        let before = old.get(producer).map(|t| t.incorrect);
        let after = new.get(producer).map(|t| t.incorrect);
        if before != after {
            let show = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
            csv.write_record([producer.as_str(), &show(before), &show(after)])?;
        }
    }
    csv.flush()?;
    std::io::stdout().flush()?;
    Ok(())
}
