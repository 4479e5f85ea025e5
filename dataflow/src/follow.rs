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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::count::error_counts;
use crate::job::{collect_at_worker_zero, current_table, distribute_plan, Rows, Shared, StatsInput};
use crate::progress::Progress;
use crate::record::{Observation, Tally};
use crate::sink;
use crate::source::changes::{ChangePoller, Changes};
use crate::source::mongo::{document_id, read_document, MongoSource, Reading};
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

pub fn run(source: MongoSource, cluster: ClusterArgs, options: FollowOptions, progress: Progress) -> Result<()> {
    cluster.execute(move |worker| follow_on_worker(worker, &source, &options, &progress))?;
    Ok(())
}

fn follow_on_worker(
    worker: &mut Worker,
    source: &MongoSource,
    options: &FollowOptions,
    progress: &Progress,
) -> Result<(), String> {
    let started = Instant::now();
    let rows: Shared<Rows> = Default::default();
    let merged: Shared<LoadStats> = Default::default();
    let probe = ProbeHandle::new();
    let (mut upserts, mut stats_input) = worker.dataflow::<u64, _, _>(|scope| {
        let mut upserts = Upserts::new();
        let mut stats_input = StatsInput::new();
        let observations = arrange_from_upsert::<
            ValBuilder<String, Observation, u64, isize>,
            ValSpine<String, Observation, u64, isize>,
            String,
            Observation,
        >(upserts.to_stream(scope), "RecordsById")
        .as_collection(|_id, observation| observation.clone());
        collect_at_worker_zero(error_counts(observations), stats_input.to_stream(scope), &rows, &merged, &probe);
        (upserts, stats_input)
    });

    // Polling starts before the initial load, so writes made while it reads are not missed.
    let mut poller = None;
    let mut failure = None;
    if worker.index() == 0 {
        match ChangePoller::start(source, options.settle, options.change_retention) {
            Ok(started_poller) => poller = Some(started_poller),
            Err(err) => failure = Some(format!("{err:#}")),
        }
    }
    let (ranges, planning_failure) = distribute_plan(worker, source);
    let mut stats = LoadStats::default();
    let loaded = planning_failure.map_or(Ok(()), Err).and_then(|()| {
        ranges.iter().try_for_each(|range| {
            source.scan_range(range, progress, |document| {
                stats.records += 1;
                match read_document(document) {
                    Reading::Counted { producer_id, ground_truth, inferred } => upserts.send((
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
    if let Err(err) = loaded {
        stats.failure = Some(format!("{err:#}"));
    }
    stats_input.send(stats);
    upserts.advance_to(1);
    drop(stats_input);
    worker.step_while(|| probe.less_than(&1));

    if worker.index() != 0 {
        // Only worker 0 feeds changes; the others keep their share of the state until it stops.
        drop(upserts);
        worker.step_or_park_while(None, || !probe.done());
        return Ok(());
    }
    progress.finish();
    let loaded = merged.borrow().clone();
    let result = match (failure.or(loaded.failure.clone()), poller) {
        (Some(failure), _) => Err(failure),
        (None, None) => Err("the change poller did not start".to_owned()),
        (None, Some(poller)) => {
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
            follow_changes(worker, poller, source, &mut upserts, &rows, &probe, options)
                .map_err(|err| format!("{err:#}"))
        }
    };
    // Closing the input lets every worker finish.
    drop(upserts);
    worker.step_or_park_while(None, || !probe.done());
    result
}

/// Worker 0's loop: poll, feed one round, wait for it, rewrite the CSV when the table changed.
fn follow_changes(
    worker: &mut Worker,
    mut poller: ChangePoller,
    source: &MongoSource,
    upserts: &mut Upserts,
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
        if poller.fell_behind() {
            bail!(
                "no poll for longer than --change-retention-s: entries another follower pruned may be missed; \
                 restart to reload (and raise --change-retention-s if the initial load is that slow)"
            );
        }
        let Changes { upserts: found, malformed, .. } = match poller.poll() {
            Ok(changes) => changes,
            Err(err) => {
                // The CSV keeps its last consistent state; try again at the next poll.
                tracing::warn!("{err:#}; retrying");
                continue;
            }
        };
        poller.prune(&source.uri);
        for (id, reason) in malformed {
            tracing::warn!(%id, "changed record not counted: {reason}");
        }
        if !found.is_empty() {
            changes_applied += found.len() as u64;
            let round = *upserts.time();
            for (id, observation) in found {
                upserts.send((id, observation, round));
            }
            upserts.advance_to(round + 1);
            worker.step_while(|| probe.less_than(&(round + 1)));
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
