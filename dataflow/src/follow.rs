//! `dataflow count --follow`: after the initial load, keep the CSV equal to what a fresh batch
//! count would give, by feeding the same counting function each record's changes.
//!
//! Records enter as upserts keyed by a digest of `_id` ([`crate::follow_state`]): the worker that
//! owns the record keeps its compact state, and a change retracts the old state and adds the new
//! one, so the counting function sees only per-producer verdicts; the state is spread over all
//! workers by digest. Worker 0 polls the change log
//! (see [`crate::source::changes`]) and drives the rounds; every worker holds its share of the
//! state. A stop requested in any process reaches worker 0 through the dataflow, so the whole
//! cluster stops at the end of a round.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use differential_dataflow::input::{Input, InputSession};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::alerts::{AlertOptions, Alerter, FiringAlert};
use crate::cluster::ClusterArgs;
use crate::count::error_counts;
use crate::follow_checkpoint::{self, CheckpointOptions, Checkpointer, Restored};
use crate::follow_state::{digest, track_records, RecordState, Records, Upsert};
use crate::load::Loader;
use crate::progress::Progress;
use crate::record::{Observation, Tally, Windowing};
use crate::serve::board::Tables;
use crate::serve::{Board, ServeOptions, Server};
use crate::sink::{rfc3339, rfc3339_ms, AsOf, Output, Position};
use crate::source::changes::{ChangePoller, Changes, LogPosition};
use crate::source::file::{self, Format, Tail};
use crate::source::mongo::{document_id, read_document, MongoSource};
use crate::source::{bounded, Share, Source};
use crate::stats::LoadStats;
use crate::views::{monitor, Snapshot, ViewCells, ViewOptions};
use crate::worker_zero::{
    collect_at_worker_zero, current_table, distribute_plan, from_worker_zero, Rows, StatsInput, WorkerCell,
};

/// How often a worker that only holds state looks at its process's stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Records a worker sends during the initial load between two steps of its dataflow. Stepping
/// lets the state operator take records in as they come; without it every record loaded would
/// wait in the channels, as the text of its producer, until the load is over.
const LOAD_STEP_EVERY: usize = 1024;
/// How stale the sidecar's as-of time may get while nothing changes.
const SIDECAR_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct FollowOptions {
    pub output: Output,
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
    /// Where and how often to write checkpoints (MongoDB only).
    pub checkpoints: Option<CheckpointOptions>,
    /// The monitoring views to keep current besides the counts, if any.
    pub views: Option<ViewOptions>,
    /// `--serve`: where to serve the live page and API (process 0).
    pub serve: Option<ServeOptions>,
    /// The running server, in process 0 with `--serve`.
    pub server: Option<Arc<Server>>,
    /// `--alert`: the rules and where their events go.
    pub alerts: Option<AlertOptions>,
    /// The running alerter, in process 0 with `--alert`.
    pub alerter: Option<Arc<Mutex<Alerter>>>,
}

impl FollowOptions {
    fn windowing(&self) -> Option<Windowing> {
        self.views.as_ref().map(|views| views.windowing)
    }
}

type Upserts = InputHandle<u64, CapacityContainerBuilder<Vec<Upsert>>>;

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
    let process = cluster.process;
    cluster.execute(move |worker| follow_on_worker(worker, process, &source, &options, &progress))?;
    Ok(())
}

/// What worker 0 collects from the dataflow.
#[derive(Default)]
struct Collected {
    rows: WorkerCell<Rows>,
    /// The initial load's statistics, merged over every worker.
    loaded: WorkerCell<LoadStats>,
    /// Malformed records in the dataflow (MongoDB).
    malformed: WorkerCell<isize>,
    /// The views' rows, when they are on.
    views: ViewCells,
}

fn follow_on_worker(
    worker: &mut Worker,
    process: u16,
    source: &Source,
    options: &FollowOptions,
    progress: &Progress,
) -> Result<(), String> {
    let started = Instant::now();
    let loaded_as_of = SystemTime::now();
    let mut votes = StopVotes::new(worker, process);
    let collected = Collected::default();
    let probe = ProbeHandle::new();
    let records: WorkerCell<Records> = Default::default();
    let (mut checkpointer, restored) = match (source, &options.checkpoints) {
        (Source::Mongo(mongo), Some(checkpoints)) => {
            let origin = follow_checkpoint::origin(mongo, options.windowing());
            let checkpointer = Checkpointer::new(worker, checkpoints, origin.clone(), records.clone());
            let (settle, retention) = (options.settle, options.change_retention);
            let restored = follow_checkpoint::restore(worker, mongo, settle, retention, checkpoints, &origin, &records);
            (Some(checkpointer), restored)
        }
        _ => (None, None),
    };
    let (mut inputs, mut stats_input) = build_dataflow(worker, &collected, &probe, records, options.views.as_ref());

    let mut stats = LoadStats::default();
    let resumed = restored.is_some();
    let (feed, loaded) = match (source, restored) {
        (_, Some(Restored { poller, records })) => {
            stats.records = records;
            (poller.map(Feed::Mongo), Ok(()))
        }
        (Source::Mongo(mongo), None) => load_mongo(worker, mongo, options, &mut inputs, &mut stats, progress),
        (Source::File(path), None) => load_file(worker, path, options.windowing(), &mut inputs, &mut stats, progress),
    };
    let feed = feed.map(|feed| feed.with_windowing(options.windowing()));
    if let Err(err) = loaded {
        stats.failure = Some(format!("{err:#}"));
    }
    stats_input.send(stats);
    inputs.advance_to(1);
    drop(stats_input);
    worker.step_while(|| probe.less_than(&1));

    if worker.index() != 0 {
        hold_state_until_stopped(worker, inputs, &probe, &mut votes, checkpointer.as_mut(), options);
        return Ok(());
    }
    progress.finish();
    let loaded = collected.loaded.borrow().clone();
    let result = match (loaded.failure.clone(), feed) {
        (Some(failure), _) => Err(failure),
        (None, None) => Err("the change feed did not start".to_owned()),
        (None, Some(feed)) => {
            if !resumed {
                report_loaded(&loaded, started, loaded_as_of, options);
            }
            let state = State {
                rows: &collected.rows,
                malformed: &collected.malformed,
                // Malformed records of MongoDB are in the dataflow; lines of a file are only counted.
                malformed_lines: if matches!(feed, Feed::File(..)) { loaded.skipped } else { 0 },
                source: source.describe(),
                as_of: loaded_as_of,
                views: options.views.as_ref().map(|_| &collected.views),
            };
            let checkpointer = checkpointer.as_mut().map(|writer| Checkpoints { writer, after_load: !resumed });
            follow_changes(worker, feed, &mut inputs, state, &probe, &votes, checkpointer, options)
                .map_err(|err| format!("{err:#}"))
        }
    };
    // Closing the inputs lets every worker finish.
    drop(inputs);
    worker.step_or_park_while(None, || !probe.done());
    result
}

/// Records by `_id` (upserts) and appended lines are one collection of observations, which feeds
/// the same counting function and views as the batch job; worker 0 collects their tables, the
/// load statistics and the number of malformed records.
fn build_dataflow(
    worker: &mut Worker,
    collected: &Collected,
    probe: &ProbeHandle<u64>,
    records: WorkerCell<Records>,
    views: Option<&ViewOptions>,
) -> (Inputs, StatsInput) {
    worker.dataflow::<u64, _, _>(|scope| {
        let mut upserts = Upserts::new();
        let (appended, appended_records) = scope.new_collection::<Observation, isize>();
        let mut stats_input = StatsInput::new();
        let records = track_records(upserts.to_stream(scope), records);
        let observations = records.clone().flat_map(RecordState::observed).concat(appended_records);
        if let Some(options) = views {
            monitor(observations.clone(), options, &collected.views, probe);
        }
        let counts = error_counts(observations);
        collect_at_worker_zero(counts, stats_input.to_stream(scope), &collected.rows, &collected.loaded, probe);
        // One `()` per malformed record; their multiplicities add up to how many there are.
        let sink = collected.malformed.clone();
        records
            .filter(RecordState::is_malformed)
            .inner
            .exchange(|_| 0)
            .inspect(move |(_, _time, diff)| *sink.borrow_mut() += diff)
            .probe_with(probe);
        (Inputs { upserts, appended }, stats_input)
    })
}

/// Only worker 0 feeds changes; the others keep their share of the state until it stops, pass
/// on a stop asked of their process, and write their state when worker 0 asks for a checkpoint.
fn hold_state_until_stopped(
    worker: &mut Worker,
    inputs: Inputs,
    probe: &ProbeHandle<u64>,
    votes: &mut StopVotes,
    mut checkpointer: Option<&mut Checkpointer>,
    options: &FollowOptions,
) {
    drop(inputs);
    while !probe.done() {
        worker.step_or_park(Some(STOP_CHECK));
        votes.vote_if(&options.stop);
        if let Some(checkpointer) = checkpointer.as_mut() {
            checkpointer.serve(worker.index());
        }
    }
}

fn report_loaded(loaded: &LoadStats, started: Instant, as_of: SystemTime, options: &FollowOptions) {
    eprintln!(
        "loaded {} records in {:.2}s ({} skipped, {} deleted) as of {}; following changes every {} ms",
        loaded.records,
        started.elapsed().as_secs_f64(),
        loaded.skipped,
        loaded.deleted,
        rfc3339(as_of),
        options.poll_interval.as_millis()
    );
    for example in &loaded.skipped_examples {
        eprintln!("  skipped {example}");
    }
}

/// Stop requests: a worker of any process whose stop flag is set (Ctrl-C, SIGTERM) sends its
/// process's index to worker 0, which stops the whole cluster after its current round. The
/// requests travel in a dataflow of their own, whose frontier nothing waits for.
struct StopVotes {
    input: InputHandle<u64, CapacityContainerBuilder<Vec<u16>>>,
    process: u16,
    sent: bool,
    /// At worker 0: the first process that asked.
    asked_by: WorkerCell<Option<u16>>,
}

impl StopVotes {
    fn new(worker: &mut Worker, process: u16) -> Self {
        let asked_by: WorkerCell<Option<u16>> = Default::default();
        let sink = asked_by.clone();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<u16>>>::new();
            input.to_stream(scope).exchange(|_| 0).inspect(move |process: &u16| {
                sink.borrow_mut().get_or_insert(*process);
            });
            input
        });
        StopVotes { input, process, sent: false, asked_by }
    }

    fn vote_if(&mut self, stop: &AtomicBool) {
        if !self.sent && stop.load(Ordering::SeqCst) {
            self.input.send(self.process);
            // Only closing the time flushes the exchange towards worker 0; nothing waits for it.
            self.input.advance_to(1);
            self.sent = true;
        }
    }

    fn asked_by(&self) -> Option<u16> {
        *self.asked_by.borrow()
    }
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
    let planned = distribute_plan(worker, source);
    let mut sent = 0usize;
    let loaded = start_failure.map_or(planned, Err).and_then(|ranges| {
        ranges.iter().try_for_each(|range| {
            source.scan_range(range, progress, |document| {
                let id = document_id(document);
                let reading = read_document(document);
                stats.account(&reading, || id.clone());
                // Malformed records are kept too, so that the sidecar's count of them stays exact.
                if let Some(state) = RecordState::of(&reading, options.windowing()) {
                    inputs.upserts.send((digest(&id), Some(state)));
                    sent += 1;
                    if sent.is_multiple_of(LOAD_STEP_EVERY) {
                        worker.step();
                    }
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
    windowing: Option<Windowing>,
    inputs: &mut Inputs,
    stats: &mut LoadStats,
    progress: &Progress,
) -> (Option<Feed>, Result<()>) {
    let share = Share { index: worker.index(), peers: worker.peers() };
    let measured = from_worker_zero(worker, |peers| Ok(vec![file::complete_len(path)?; peers]));
    let len = match measured.map(|lengths| lengths.first().copied()) {
        Ok(Some(len)) => len,
        Ok(None) => return (None, Err(anyhow::anyhow!("worker 0 did not measure the file"))),
        Err(err) => return (None, Err(err)),
    };
    let mut loader = Loader::new(windowing);
    let loaded = file::load_lines(path, share, len, &mut loader, progress);
    let (counts, loaded_stats) = loader.take();
    counts.into_iter().for_each(|(observation, diff)| inputs.appended.update(observation, diff));
    stats.merge(&loaded_stats);
    let feed = (worker.index() == 0).then(|| Feed::File(Tail::new(path, len), windowing));
    (feed, loaded)
}

/// Where worker 0 finds the changes after the initial load, and the views' windows, if any.
enum Feed {
    Mongo(ChangePoller),
    File(Tail, Option<Windowing>),
}

/// What one successful poll found.
struct Polled {
    /// Records (or lines) that changed.
    changed: usize,
    /// Appended lines that could not be counted.
    malformed_lines: u64,
}

impl Feed {
    fn with_windowing(mut self, windowing: Option<Windowing>) -> Self {
        match &mut self {
            Feed::Mongo(poller) => poller.windowing = windowing,
            Feed::File(_, current) => *current = windowing,
        }
        self
    }

    /// Sends what changed since the last call into `inputs`, at their current round. `None`:
    /// this poll failed and the next one tries again. An error is fatal: the CSV can no longer
    /// be kept exact.
    fn poll(&mut self, inputs: &mut Inputs) -> Result<Option<Polled>> {
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
                        let failing_s = poller.since_last_poll().as_secs_f64();
                        if bounded::is_stall(&err) {
                            tracing::warn!(failing_s, "MongoDB stalled: {err:#}; polling again");
                        } else {
                            tracing::warn!(failing_s, "{err:#}; polling again");
                        }
                        return Ok(None);
                    }
                };
                poller.prune();
                let changed = upserts.len();
                let malformed: HashMap<String, String> = malformed.into_iter().collect();
                for (id, observation) in upserts {
                    let state = match malformed.get(&id) {
                        Some(reason) => {
                            tracing::warn!(%id, "changed record not counted: {reason}");
                            Some(RecordState::Malformed)
                        }
                        None => observation.map(RecordState::from),
                    };
                    inputs.upserts.send((digest(&id), state));
                }
                Ok(Some(Polled { changed, malformed_lines: 0 }))
            }
            Feed::File(tail, windowing) => {
                let mut loader = Loader::new(*windowing);
                tail.read_appended(&mut loader)?;
                let (counts, stats) = loader.take();
                for example in &stats.skipped_examples {
                    tracing::warn!("appended line not counted: {example}");
                }
                counts.into_iter().for_each(|(observation, diff)| inputs.appended.update(observation, diff));
                Ok(Some(Polled { changed: stats.records as usize, malformed_lines: stats.skipped }))
            }
        }
    }

    /// How far the change log has been read, for a checkpoint.
    fn log_position(&self) -> Option<LogPosition> {
        match self {
            Feed::Mongo(poller) => Some(poller.position()),
            Feed::File(..) => None,
        }
    }

    /// How far the changes have been read, for the sidecar.
    fn position(&self) -> Position {
        match self {
            Feed::Mongo(poller) => Position::ChangeLog { watermark: rfc3339_ms(poller.watermark()) },
            Feed::File(tail, _) => Position::File { offset: tail.offset() },
        }
    }
}

/// What worker 0 publishes: the table from the dataflow and what the sidecar says about it.
struct State<'a> {
    rows: &'a WorkerCell<Rows>,
    /// Malformed records in the dataflow (MongoDB).
    malformed: &'a WorkerCell<isize>,
    /// Malformed lines of a followed file.
    malformed_lines: u64,
    source: String,
    /// When the last completed poll (or the initial load) started.
    as_of: SystemTime,
    /// The views' rows, when they are on.
    views: Option<&'a ViewCells>,
}

impl State<'_> {
    fn table(&self) -> BTreeMap<String, Tally> {
        self.rows.borrow_mut().retain(|_, diff| *diff != 0);
        current_table(&self.rows.borrow())
    }

    /// Brings the views up to date with the last round; whether any changed.
    fn update_views(&self, views: &mut Option<Snapshot>) -> bool {
        match (self.views, views) {
            (Some(cells), Some(snapshot)) => cells.update(snapshot),
            _ => false,
        }
    }

    fn as_of(&self, table: &BTreeMap<String, Tally>, feed: &Feed) -> AsOf {
        let malformed = (*self.malformed.borrow()).max(0) as u64 + self.malformed_lines;
        AsOf { position: Some(feed.position()), ..AsOf::of(table, self.as_of, malformed, self.source.clone()) }
    }
}

/// Worker 0's checkpoint writer, and whether the state came from a full load (which is worth
/// saving at once).
struct Checkpoints<'a> {
    writer: &'a mut Checkpointer,
    after_load: bool,
}

impl Checkpoints<'_> {
    /// Between rounds: the record states then match how far the change log was read.
    fn write_if(&mut self, due: bool, worker: &mut Worker, feed: &Feed) {
        if let (true, Some(position)) = (due, feed.log_position()) {
            self.writer.write(worker, position);
        }
    }
}

/// Worker 0's loop: poll, feed one round, wait for it, rewrite the CSV when the table changed,
/// until this process or any other is asked to stop.
#[allow(clippy::too_many_arguments)] // one per part of the follower worker 0 drives
fn follow_changes(
    worker: &mut Worker,
    mut feed: Feed,
    inputs: &mut Inputs,
    mut state: State,
    probe: &ProbeHandle<u64>,
    votes: &StopVotes,
    mut checkpoints: Option<Checkpoints>,
    options: &FollowOptions,
) -> Result<()> {
    let output = &options.output;
    if let Some(checkpoints) = checkpoints.as_mut() {
        let after_load = checkpoints.after_load;
        checkpoints.write_if(after_load, worker, &feed);
    }
    let mut table = state.table();
    let mut sidecar = state.as_of(&table, &feed);
    // The views and alerts before the CSV, as after every round.
    let mut views = state.views.map(|_| Snapshot::default());
    state.update_views(&mut views);
    write_views(options, views.as_ref())?;
    update_alerts(options, views.as_ref(), state.as_of);
    output.write(&table, &sidecar)?;
    publish(options, &state, &table, views.as_ref());
    let mut sidecar_written = Instant::now();
    let mut next_status = Instant::now() + options.status_every;
    let mut changes_applied = 0u64;
    let stopping = || options.stop.load(Ordering::SeqCst) || votes.asked_by().is_some();
    while !stopping() {
        let deadline = Instant::now() + options.poll_interval;
        while Instant::now() < deadline && !stopping() {
            worker.step_or_park(Some(deadline.saturating_duration_since(Instant::now()).min(STOP_CHECK)));
        }
        if stopping() {
            break;
        }
        let polled_at = SystemTime::now();
        let Some(polled) = feed.poll(inputs)? else { continue };
        state.malformed_lines += polled.malformed_lines;
        if polled.changed > 0 {
            changes_applied += polled.changed as u64;
            let next = inputs.round() + 1;
            inputs.advance_to(next);
            worker.step_while(|| probe.less_than(&next));
            // A test makes worker 0 fail here (`FAILPOINTS=follow-after-round=panic`).
            fail::fail_point!("follow-after-round");
        }
        state.as_of = polled_at;
        // The views change only in a round, by the rows it changed.
        let views_changed = state.update_views(&mut views);
        if views_changed {
            write_views(options, views.as_ref())?;
        }
        let (settled, due) = tick_alerts(options);
        let alerts_changed = settled | ((views_changed || due) && update_alerts(options, views.as_ref(), state.as_of));
        let updated = state.table();
        let as_of = state.as_of(&updated, &feed);
        if updated != table {
            if options.print_changes {
                print_changes(&table, &updated)?;
            }
            output.write(&updated, &as_of)?;
            (table, sidecar, sidecar_written) = (updated, as_of, Instant::now());
            publish(options, &state, &table, views.as_ref());
        } else if as_of.malformed != sidecar.malformed || sidecar_written.elapsed() >= SIDECAR_REFRESH {
            output.write_sidecar(&as_of)?;
            (sidecar, sidecar_written) = (as_of, Instant::now());
            publish(options, &state, &table, views.as_ref());
        } else if views_changed || alerts_changed {
            publish(options, &state, &table, views.as_ref());
        }
        if !options.status_every.is_zero() && Instant::now() >= next_status {
            let errors: u64 = table.values().map(|t| t.incorrect).sum();
            let as_of = rfc3339(state.as_of);
            tracing::info!(producers = table.len(), errors, changes_applied, as_of, "following");
            next_status = Instant::now() + options.status_every;
        }
        if let Some(checkpoints) = checkpoints.as_mut() {
            let due = checkpoints.writer.due();
            checkpoints.write_if(due, worker, &feed);
        }
    }
    if let Some(checkpoints) = checkpoints.as_mut() {
        checkpoints.write_if(true, worker, &feed);
    }
    if let Some(alerter) = &options.alerter {
        alerter.lock().expect("the alerter is only used by worker 0").finish();
    }
    if let Some(process) = votes.asked_by().filter(|_| !options.stop.load(Ordering::SeqCst)) {
        eprintln!("process {process} was asked to stop; stopping every process of the cluster");
    }
    eprintln!("stopped; {} is up to date as of {}", output.path.display(), rfc3339(state.as_of));
    Ok(())
}

/// Announces what the alert evidence calls for; whether any alert changed.
fn update_alerts(options: &FollowOptions, views: Option<&Snapshot>, as_of: SystemTime) -> bool {
    let (Some(alerter), Some(views)) = (&options.alerter, views) else { return false };
    alerter.lock().expect("the alerter is only used by worker 0").update(&views.alerts, as_of)
}

/// Takes in what Kafka answered for alert events in flight: whether an alert changed, and whether
/// the alerts are due to be judged again (changes or not).
fn tick_alerts(options: &FollowOptions) -> (bool, bool) {
    options.alerter.as_ref().map_or((false, false), |alerter| alerter.lock().expect("worker 0 only").tick())
}

fn firing_alerts(options: &FollowOptions) -> Vec<FiringAlert> {
    options.alerter.as_ref().map(|alerter| alerter.lock().expect("worker 0 only").firing()).unwrap_or_default()
}

/// The board of the live page and API, with `--serve`.
fn publish(options: &FollowOptions, state: &State, table: &BTreeMap<String, Tally>, views: Option<&Snapshot>) {
    let Some(server) = &options.server else { return };
    server.publish(Board::new(Tables {
        counts: table,
        views,
        as_of: bson::DateTime::from_system_time(state.as_of).timestamp_millis(),
        source: state.source.clone(),
        window_ms: options.windowing().map(|windowing| windowing.width_ms),
        drift_alpha: options.views.as_ref().map_or(0.01, |views| views.drift_alpha),
        alerts: firing_alerts(options),
    }));
}

/// The view files, when views are on; before the CSV, so that a reader who sees the new counts
/// finds views at least as new.
fn write_views(options: &FollowOptions, snapshot: Option<&Snapshot>) -> Result<()> {
    match (snapshot, &options.views) {
        (Some(snapshot), Some(views)) => options.output.views.write(snapshot, views.drift_alpha),
        _ => Ok(()),
    }
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
