//! Memory of the follower's per-record state, without a database: generated records are fed
//! into the same state operator and counting function as `dataflow count --follow` uses, in
//! one round (the initial load), then a round of label changes; the process's resident memory
//! is read at its peak and at steady state, and the counts are checked against the generator.
//! `--before` runs the state the follower had before (differential's `arrange_from_upsert`
//! keyed by the `_id` text, holding each record's observation) for comparison.
//!
//! ```sh
//! cargo run --release -p iot-dataflow --example follow_state_memory -- --records 10000000
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use iot_bench::{generate, Spec, Truth};
use iot_dataflow::count::{error_counts, tally_by_producer};
use iot_dataflow::follow_state::{digest, track_records, RecordState, Upsert};
use iot_dataflow::load::Reading;
use iot_dataflow::record::{Observation, Tally};
use iot_dataflow::worker_zero::{self, collect_rows_at_worker_zero, current_table, WorkerCell};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle, Scope};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Records whose label changes in the round after the load.
    #[arg(long, default_value_t = 100_000)]
    changes: u64,
    /// Measure the state the follower had before (upserts arranged by `_id` text).
    #[arg(long)]
    before: bool,
}

type Rows = WorkerCell<worker_zero::Rows>;

fn main() -> Result<()> {
    let args = Args::parse();
    let spec =
        Spec { records: args.records, producers: args.producers, pending_rate: 0.05, seed: 7, ..Spec::default() };
    let baseline = rss_kib("VmRSS");
    let started = Instant::now();
    let (records, changes, before) = (args.records, args.changes, args.before);
    let outcome = timely::execute(timely::Config::process(args.workers), move |worker| {
        let rows: Rows = Default::default();
        let probe = ProbeHandle::new();
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = Feed::new(before);
        worker.dataflow::<u64, _, _>(|scope| input.build(scope, &rows, &probe));
        // Each worker reads its share of the records, and steps its dataflow every 1024, as the
        // follower's load does.
        let mut sent = 0usize;
        let mut answer = generate(&spec, |record| {
            if record.id as usize % peers == index {
                sent += 1;
                if sent.is_multiple_of(1024) {
                    worker.step();
                }
                let reading = Reading::counted(record.producer_id, record.ground_truth, record.inferred);
                input.send(&record.doc_id, &reading);
            }
        });
        input.advance_to(1);
        worker.step_while(|| probe.less_than(&1));
        let loaded = (rss_kib("VmRSS"), rss_kib("VmHWM"));
        // Then one round of changes from worker 0: the first `changes` records become pending.
        if index == 0 {
            generate(&Spec { records: changes.min(records), ..spec }, |record| {
                let reading = Reading::counted(record.producer_id, record.ground_truth, None);
                input.send(&record.doc_id, &reading);
            });
        }
        input.advance_to(2);
        worker.step_while(|| probe.less_than(&2));
        let changed = rss_kib("VmRSS");
        if index == 0 {
            // The answer after the changes: each changed record moved from its verdict to pending.
            let changed_answer = generate(&Spec { records: changes.min(records), ..spec }, |_| {});
            for (producer, truth) in changed_answer {
                let entry = answer.entry(producer).or_default();
                entry.errors -= truth.errors;
                entry.judged -= truth.judged;
                entry.pending += truth.judged;
            }
        }
        let table = current(&rows);
        (loaded, changed, (index == 0).then(|| check(&table, &answer)))
    })
    .map_err(|err| anyhow::anyhow!("{err}"))?;
    let results: Vec<_> = outcome.join().into_iter().collect::<Result<_, _>>().map_err(|err| anyhow::anyhow!(err))?;
    let ((steady, peak), changed, checked) = results.into_iter().next().expect("worker 0");
    checked.expect("worker 0 checks")?;
    let per_record = |kib: u64| kib as f64 * 1024.0 / records as f64;
    println!(
        "| {} | {records} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} s |",
        if before { "before (arranged by `_id`)" } else { "compact" },
        args.workers,
        baseline as f64 / 1024.0,
        per_record(peak),
        per_record(steady),
        per_record(changed),
        per_record(steady.saturating_sub(baseline)),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// The follower's upserts before: `(_id, observation or gone, round)`.
type UpsertBefore = (String, Option<Observation>, u64);

/// The state being measured: the follower's compact one, or the one it had before.
enum Feed {
    Compact(InputHandle<u64, CapacityContainerBuilder<Vec<Upsert>>>),
    Before(InputHandle<u64, CapacityContainerBuilder<Vec<UpsertBefore>>>),
}

impl Feed {
    fn new(before: bool) -> Self {
        if before {
            Feed::Before(InputHandle::new())
        } else {
            Feed::Compact(InputHandle::new())
        }
    }

    fn build<'scope>(&mut self, scope: Scope<'scope, u64>, rows: &Rows, probe: &ProbeHandle<u64>) {
        let counts: VecCollection<'scope, u64, (String, Tally), isize> = match self {
            Feed::Compact(input) => tally_by_producer(
                track_records(input.to_stream(scope), Default::default()).flat_map(RecordState::counted),
            ),
            Feed::Before(input) => error_counts(
                arrange_from_upsert::<
                    ValBuilder<String, Observation, u64, isize>,
                    ValSpine<String, Observation, u64, isize>,
                    String,
                    Observation,
                >(input.to_stream(scope), "RecordsById")
                .as_collection(|_id, observation| observation.clone()),
            ),
        };
        collect_rows_at_worker_zero(counts, rows, probe);
    }

    fn send(&mut self, id: &str, reading: &Reading<'_>) {
        match self {
            Feed::Compact(input) => input.send((digest(id), RecordState::of(reading, None))),
            Feed::Before(input) => {
                let time = *input.time();
                input.send((id.to_owned(), reading.observation(None), time))
            }
        }
    }

    fn advance_to(&mut self, round: u64) {
        match self {
            Feed::Compact(input) => input.advance_to(round),
            Feed::Before(input) => input.advance_to(round),
        }
    }
}

fn current(rows: &Rows) -> BTreeMap<String, Tally> {
    current_table(&rows.borrow())
}

/// The counts must be the generator's answer: a measurement of a wrong state is worthless.
fn check(table: &BTreeMap<String, Tally>, answer: &BTreeMap<String, Truth>) -> Result<()> {
    let expected: BTreeMap<String, (u64, u64, u64)> =
        answer.iter().map(|(p, t)| (p.clone(), (t.judged - t.errors, t.errors, t.pending))).collect();
    let got: BTreeMap<String, (u64, u64, u64)> =
        table.iter().map(|(p, t)| (p.clone(), (t.correct, t.incorrect, t.pending))).collect();
    ensure!(got == expected, "the counts differ from the generator's answer");
    Ok(())
}

/// A line of `/proc/self/status` in KiB: `VmRSS` (resident now) or `VmHWM` (resident at peak).
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}
