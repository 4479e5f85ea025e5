//! The consumer engine both consumer groups share: read, batch, hand batches to a handler with
//! several in flight, dead-letter malformed records, and commit each partition only up to its
//! first record not yet durably handled.
//!
//! While every batch slot is busy (e.g. MongoDB stalls), the engine pauses its partitions but
//! keeps polling Kafka, so that it stays in its group; records already read wait in memory.

pub mod db;
mod group;
pub mod infer;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{ConsumerArgs, KafkaArgs};
use crate::backoff::Backoff;
use crate::dlq::DeadLetters;
use crate::message::{Inbound, Malformed, Parsed};
use crate::metrics::{ConsumerMetrics, Stage};
use crate::offsets::{Epoch, OffsetTracker, Position};
use crate::shutdown::CancellationToken;
use crate::store::{Applied, Store};
use group::{describe, lock, to_list, EngineContext};

/// What a handler did with one well-formed record.
#[derive(Debug)]
pub enum Handled {
    /// Durably written: its offset may be committed.
    Written(Position),
    /// The record is bad after all (e.g. the inference service refused it): dead-letter it.
    Rejected(Box<Parsed>, Malformed),
    /// Not done because a shutdown came first: it will be delivered again.
    Abandoned(Position),
}

/// The part that differs between the two consumers: what to do with a batch of good records.
pub trait Handler: Send + Sync + 'static {
    /// Handles every record of the batch, retrying failures until done or shut down.
    fn handle(&self, batch: Vec<Parsed>, shutdown: &CancellationToken) -> impl Future<Output = Vec<Handled>> + Send;
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub group: String,
    /// Records per handler call.
    pub batch_size: usize,
    /// Handler calls running at once.
    pub in_flight: usize,
    pub consumer: ConsumerArgs,
}

/// Everything a batch task needs besides the batch.
struct TaskKit<H> {
    handler: Arc<H>,
    decoder: crate::decode::Decoder,
    dead_letters: DeadLetters,
    metrics: Arc<ConsumerMetrics>,
    shutdown: CancellationToken,
}

/// A record read and not yet handed to a batch, with the assignment it was read under.
struct Pending {
    inbound: Inbound,
    epoch: Epoch,
    read_at: Instant,
}

/// What a batch task hands back: the records it finished, and the epoch of each partition in it.
struct Finished {
    epochs: HashMap<(String, i32), Epoch>,
    done: Vec<Position>,
}

type KafkaConsumer = StreamConsumer<EngineContext>;

/// A consumer group member: Kafka reader, batches in flight, offset tracker.
struct Engine<H> {
    consumer: Arc<KafkaConsumer>,
    kit: Arc<TaskKit<H>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Arc<ConsumerMetrics>,
    tasks: JoinSet<Finished>,
    pending: VecDeque<Pending>,
    /// When the oldest pending record must go out, full batch or not.
    deadline: Option<Instant>,
    /// Set while the assigned partitions are paused: the assignment count at the pause.
    paused: Option<u64>,
    batch_size: usize,
    in_flight: usize,
    linger: Duration,
    grace: Duration,
}

/// Runs a consumer group member until a shutdown: on shutdown it stops reading, lets in-flight
/// batches finish (up to the grace period), commits what is done and returns.
pub async fn run<H: Handler>(
    kafka: &KafkaArgs,
    settings: EngineSettings,
    handler: Arc<H>,
    metrics: Arc<ConsumerMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut engine = Engine::set_up(kafka, &settings, handler, metrics, shutdown.clone())?;
    engine.read_until_shutdown(shutdown).await?;
    engine.drain().await;
    engine.final_commit();
    Ok(())
}

impl<H: Handler> Engine<H> {
    /// Creates the Kafka clients and joins the group (the assignment comes with the first reads).
    fn set_up(
        kafka: &KafkaArgs,
        settings: &EngineSettings,
        handler: Arc<H>,
        metrics: Arc<ConsumerMetrics>,
        shutdown: CancellationToken,
    ) -> Result<Engine<H>> {
        let config = crate::kafka::consumer_config(kafka, &settings.group, settings.consumer.session_timeout_ms);
        let context = EngineContext::new(metrics.clone());
        let tracker = context.tracker.clone();
        let consumer: KafkaConsumer = config
            .create_with_context(context)
            .map_err(|e| crate::kafka::creation_error(e, kafka))
            .with_context(|| format!("cannot create a Kafka consumer for {}", kafka.brokers))?;
        consumer.subscribe(&[kafka.topic.as_str()]).with_context(|| format!("cannot subscribe to {}", kafka.topic))?;
        let kit = Arc::new(TaskKit {
            handler,
            decoder: settings.consumer.decoder(),
            dead_letters: DeadLetters::new(kafka, &settings.consumer, &settings.group)?,
            metrics: metrics.clone(),
            shutdown,
        });
        tracing::info!(
            "consuming {} as group {} ({} records per batch, {} batches in flight)",
            kafka.topic,
            settings.group,
            settings.batch_size,
            settings.in_flight
        );
        Ok(Engine {
            consumer: Arc::new(consumer),
            kit,
            tracker,
            metrics,
            tasks: JoinSet::new(),
            pending: VecDeque::new(),
            deadline: None,
            paused: None,
            batch_size: settings.batch_size.max(1),
            in_flight: settings.in_flight.max(1),
            linger: Duration::from_millis(settings.consumer.batch_linger_ms),
            grace: Duration::from_secs(settings.consumer.shutdown_grace_s),
        })
    }

    /// Reads, batches and commits until a shutdown is asked for. Kafka is polled all the time,
    /// even while no batch slot is free, so that the member keeps its place in the group.
    async fn read_until_shutdown(&mut self, stop: CancellationToken) -> Result<()> {
        let consumer = self.consumer.clone();
        let mut read_errors = ReadErrors::default();
        loop {
            self.dispatch_ready(false);
            self.apply_backpressure();
            let room = self.has_room();
            let waiting = Instant::now();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.finish(joined.context("a batch task panicked")?);
                }
                _ = sleep_until_opt(self.deadline), if self.deadline.is_some() && room => self.dispatch_ready(true),
                received = consumer.recv() => match received {
                    Ok(msg) => {
                        self.metrics.stages.observe(Stage::KafkaRead, waiting.elapsed());
                        read_errors.recovered();
                        self.accept(&msg);
                    }
                    Err(err) => read_errors.note(&err),
                },
            }
        }
    }

    /// Lets in-flight batches finish, up to the grace period. Records read but not dispatched
    /// are simply not committed: they will be read again.
    async fn drain(&mut self) {
        tracing::info!(
            "stopping: {} batch(es) in flight, {} record(s) not started",
            self.tasks.len(),
            self.pending.len()
        );
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok(finished) => self.finish(finished),
                    Err(err) => tracing::error!("a batch task failed: {err}"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("{} batch(es) still busy after {grace:?}: left for redelivery", self.tasks.len());
            self.tasks.abort_all();
        }
    }

    /// Commits every partition's safe point synchronously, then leaves the group.
    fn final_commit(&self) {
        let commits = lock(&self.tracker).all_commits();
        if !commits.is_empty() {
            match to_list(&commits).and_then(|tpl| Ok(self.consumer.commit(&tpl, CommitMode::Sync).map(|()| tpl)?)) {
                Ok(tpl) => tracing::info!("final commit: {}", describe(&tpl)),
                Err(err) => tracing::warn!("final commit failed: {err:#}"),
            }
        }
        self.consumer.unsubscribe();
    }

    fn has_room(&self) -> bool {
        self.tasks.len() < self.in_flight
    }

    /// Takes in a record read from Kafka.
    fn accept(&mut self, msg: &BorrowedMessage<'_>) {
        let inbound = Inbound {
            pos: Position { topic: msg.topic().to_owned(), partition: msg.partition(), offset: msg.offset() },
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
        };
        let received = lock(&self.tracker).received(&inbound.pos);
        if let Some(gap) = received.gap {
            self.check_for_lost_offsets(&inbound.pos, gap);
        }
        self.metrics.received.inc();
        self.pending.push_back(Pending { inbound, epoch: received.epoch, read_at: Instant::now() });
        self.deadline.get_or_insert_with(|| Instant::now() + self.linger);
    }

    /// Sends out full batches while there is room, and (once the linger time is over) the last,
    /// partial one. Records of partitions revoked since they were read are dropped: their new
    /// owner reads them again.
    fn dispatch_ready(&mut self, linger_over: bool) {
        while self.has_room() && (self.pending.len() >= self.batch_size || (linger_over && !self.pending.is_empty())) {
            let take = self.batch_size.min(self.pending.len());
            let batch: Vec<Pending> = self.pending.drain(..take).collect();
            self.dispatch(batch);
        }
        self.deadline = match self.pending.is_empty() {
            true => None,
            false if linger_over => Some(Instant::now() + self.linger),
            false => self.deadline,
        };
    }

    fn dispatch(&mut self, batch: Vec<Pending>) {
        let mut epochs = HashMap::new();
        let mut records = Vec::with_capacity(batch.len());
        if let Some(oldest) = batch.first() {
            self.metrics.stages.observe(Stage::BatchWait, oldest.read_at.elapsed());
        }
        {
            let tracker = lock(&self.tracker);
            for Pending { inbound, epoch, .. } in batch {
                if tracker.is_current(&inbound.pos, epoch) {
                    epochs.insert((inbound.pos.topic.clone(), inbound.pos.partition), epoch);
                    records.push(inbound);
                }
            }
        }
        if records.is_empty() {
            return;
        }
        let kit = self.kit.clone();
        self.tasks.spawn(async move { Finished { epochs, done: handle_batch(&kit, records).await } });
    }

    /// Marks a batch's records done and commits the partitions whose safe point moved.
    fn finish(&mut self, finished: Finished) {
        let commits = {
            let mut tracker = lock(&self.tracker);
            for pos in &finished.done {
                if let Some(epoch) = finished.epochs.get(&(pos.topic.clone(), pos.partition)) {
                    tracker.completed(pos, *epoch);
                }
            }
            tracker.take_commits()
        };
        if commits.is_empty() {
            return;
        }
        let started = Instant::now();
        let committed = to_list(&commits).and_then(|tpl| Ok(self.consumer.commit(&tpl, CommitMode::Async)?));
        self.metrics.stages.observe(Stage::Commit, started.elapsed());
        match committed {
            Ok(()) => self.metrics.commits.inc(),
            Err(err) => {
                self.metrics.commit_errors.inc();
                tracing::warn!("cannot commit offsets: {err:#}");
            }
        }
    }

    /// Pauses the assigned partitions while a whole round of batches waits for a slot, and
    /// resumes them once fewer than a batch wait. Paused partitions still answer the group's
    /// heartbeats and rebalances (the loop keeps polling), and nothing already read is dropped.
    fn apply_backpressure(&mut self) {
        let assignments = self.consumer.context().assignments();
        let pause_at = self.batch_size * self.in_flight.max(2);
        match self.paused {
            None if self.pending.len() >= pause_at => self.pause(assignments),
            Some(_) if self.pending.len() < self.batch_size => self.resume(),
            // Every assignment starts unpaused (see `group.rs`): pause the new one too.
            Some(paused_at) if paused_at != assignments => self.pause(assignments),
            _ => {}
        }
    }

    fn pause(&mut self, assignments: u64) {
        let paused = self.consumer.assignment().and_then(|partitions| self.consumer.pause(&partitions));
        match paused {
            Ok(()) => {
                self.metrics.pauses.inc();
                self.paused = Some(assignments);
                tracing::debug!("every batch slot busy, {} records waiting: reading paused", self.pending.len());
            }
            Err(err) => tracing::warn!("cannot pause reading: {err}"),
        }
    }

    fn resume(&mut self) {
        let resumed = self.consumer.assignment().and_then(|partitions| self.consumer.resume(&partitions));
        match resumed {
            Ok(()) => tracing::debug!("reading resumed"),
            Err(err) => tracing::warn!("cannot resume reading: {err}"),
        }
        self.paused = None;
    }

    /// Offsets were skipped before `pos`: if Kafka no longer holds them, retention deleted them
    /// before this group read them (the consumer reset to the earliest offset). Say so loudly;
    /// reading goes on from where it is. (A gap Kafka still holds is compaction or transaction
    /// markers: nothing lost.)
    fn check_for_lost_offsets(&self, pos: &Position, gap: std::ops::Range<i64>) {
        let (consumer, metrics) = (self.consumer.clone(), self.metrics.clone());
        let (topic, partition) = (pos.topic.clone(), pos.partition);
        // The watermark request blocks: keep it off the read loop.
        tokio::task::spawn_blocking(move || {
            match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)) {
                Ok((earliest, _)) if earliest > gap.start => {
                    let lost = earliest.min(gap.end) - gap.start;
                    metrics.offsets_skipped.with_label_values(&[topic.as_str(), &partition.to_string()]).inc_by(lost as u64);
                    tracing::error!(
                        topic = %topic,
                        partition,
                        skipped = lost,
                        "{topic}[{partition}]: offsets {}..{} were deleted by Kafka (retention) before this group read them: {lost} record(s) lost; reading goes on from offset {}",
                        gap.start,
                        gap.start + lost,
                        gap.end
                    );
                }
                Ok(_) => tracing::debug!("{topic}[{partition}]: offsets {gap:?} skipped (compaction or transaction markers)"),
                Err(err) => tracing::warn!(
                    "{topic}[{partition}]: offsets {gap:?} were skipped, and Kafka's earliest offset cannot be read to tell whether retention deleted them: {err}"
                ),
            }
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One batch: parse every record, dead-letter the malformed ones, let the handler do the rest.
/// Returns the positions that are done (written or dead-lettered).
async fn handle_batch<H: Handler>(kit: &TaskKit<H>, batch: Vec<Inbound>) -> Vec<Position> {
    let mut done = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    let mut bad = Vec::new();
    let started = Instant::now();
    for inbound in batch {
        match kit.decoder.parse(inbound).await {
            Some((inbound, Ok(msg))) => good.push(Parsed { inbound, msg }),
            Some((inbound, Err(reason))) => bad.push((inbound, reason)),
            None => tracing::debug!("shutting down: a record left for redelivery"),
        }
    }
    kit.metrics.stages.observe(Stage::Parse, started.elapsed());
    for (inbound, reason) in bad {
        dead_letter(kit, &inbound, &reason, &mut done).await;
    }
    if good.is_empty() {
        return done;
    }
    for handled in kit.handler.handle(good, &kit.shutdown).await {
        match handled {
            Handled::Written(pos) => done.push(pos),
            Handled::Rejected(parsed, reason) => dead_letter(kit, &parsed.inbound, &reason, &mut done).await,
            Handled::Abandoned(_) => {}
        }
    }
    done
}

async fn dead_letter<H>(kit: &TaskKit<H>, inbound: &Inbound, reason: &Malformed, done: &mut Vec<Position>) {
    let started = Instant::now();
    let sent = kit.dead_letters.send(inbound, reason, &kit.shutdown).await;
    kit.metrics.stages.observe(Stage::DeadLetter, started.elapsed());
    if sent.is_ok() {
        kit.metrics.dead_lettered.inc();
        done.push(inbound.pos.clone());
    }
}

/// What a batch's writes did: every record is stored except the ID collisions.
#[derive(Debug, Default)]
pub struct Written {
    /// `(_id, digest of the message)` → digest of the content the record holds.
    collided: HashMap<(String, String), String>,
}

impl Written {
    fn new(writes: &[iot_schema::write::Write], outcomes: Vec<Applied>, metrics: &ConsumerMetrics) -> Written {
        let mut collided = HashMap::new();
        for (write, applied) in writes.iter().zip(outcomes) {
            match applied {
                Applied::Stored => metrics.written.inc(),
                Applied::Collision { stored } => {
                    metrics.id_collisions.inc();
                    let digest = write.digest().unwrap_or_default();
                    tracing::warn!(
                        doc_id = write.doc_id(),
                        digest,
                        stored_digest = %stored,
                        "ID collision: record {} holds another message's content; this message is dead-lettered, not merged",
                        write.doc_id()
                    );
                    collided.insert((write.doc_id().to_owned(), digest.to_owned()), stored);
                }
            }
        }
        Written { collided }
    }

    /// What became of a record whose write was in the batch.
    pub fn outcome(&self, parsed: Parsed) -> Handled {
        if self.collided.is_empty() {
            return Handled::Written(parsed.inbound.pos);
        }
        let key = (parsed.msg.doc_id(), iot_schema::write::content_digest(&parsed.msg));
        match self.collided.get(&key) {
            Some(stored) => {
                let (doc_id, digest) = key;
                let reason = Malformed::IdCollision { doc_id, digest, stored: stored.clone() };
                Handled::Rejected(Box::new(parsed), reason)
            }
            None => Handled::Written(parsed.inbound.pos),
        }
    }
}

/// Upserts a batch's `writes`, retrying (the upserts are idempotent) until MongoDB
/// acknowledged them or a shutdown comes. A stalled or failing MongoDB shows in the log (each
/// retry says for how long writes have been failing) and in the stall metrics.
pub async fn write_durably(
    store: &Store,
    writes: &[iot_schema::write::Write],
    metrics: &ConsumerMetrics,
    backoff: Backoff,
    shutdown: &CancellationToken,
) -> Result<Written, crate::backoff::ShutdownRequested> {
    let mut attempt = 0u64;
    let outcomes = crate::backoff::retry("MongoDB write", backoff, shutdown, || {
        attempt += 1;
        if attempt > 1 {
            metrics.mongo_retries.inc();
        }
        write_once(store, writes, metrics)
    })
    .await?;
    Ok(Written::new(writes, outcomes, metrics))
}

async fn write_once(
    store: &Store,
    writes: &[iot_schema::write::Write],
    metrics: &ConsumerMetrics,
) -> Result<Vec<Applied>, String> {
    let started = std::time::Instant::now();
    match store.upsert_all(writes).await {
        Ok(outcomes) => {
            if let Some(stall) = metrics.stall_ended() {
                tracing::info!("MongoDB writes succeed again after {:.1} s", stall.as_secs_f64());
            }
            metrics.mongo_write_seconds.inc_by(started.elapsed().as_secs_f64());
            metrics.mongo_batches.inc();
            Ok(outcomes)
        }
        Err(err) => {
            metrics.stall_began(started);
            if crate::store::is_stall(&err) {
                metrics.mongo_stalls.inc();
            }
            let failing_for = metrics.stalled_for().unwrap_or_default();
            Err(format!("{err:#} (MongoDB writes failing for {:.1} s)", failing_for.as_secs_f64()))
        }
    }
}

/// What both consumers do before they read: serve their metrics (when asked to) and open
/// MongoDB with the contract's indexes, waiting for it if it is not up yet.
pub async fn open_store(
    consumer: &ConsumerArgs,
    mongo: &crate::args::MongoArgs,
    metrics: &Arc<ConsumerMetrics>,
    shutdown: &CancellationToken,
) -> Result<Store> {
    if let Some(addr) = consumer.metrics_listen {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let store = Store::open(mongo).await?.with_stages(metrics.stages.clone());
    prepare_store(&store, consumer.backoff(), shutdown).await?;
    Ok(store)
}

/// Creates the contract's indexes, waiting for MongoDB if it is not up yet.
async fn prepare_store(store: &Store, backoff: Backoff, shutdown: &CancellationToken) -> Result<()> {
    crate::backoff::retry("creating MongoDB indexes", backoff, shutdown, || async {
        store.ensure_indexes().await.map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|_| anyhow::anyhow!("stopped before MongoDB answered"))
}

/// Errors from reading Kafka: librdkafka reports them and reconnects by itself, so reading just
/// goes on. They queue up while a broker is down: sleeping after each one (as this loop once
/// did) drained that queue so slowly that a consumer stayed behind for minutes after the broker
/// was back. The log gets the first error, then one line per interval with a count.
#[derive(Default)]
struct ReadErrors {
    /// When the current run of errors began, and how many it holds.
    since: Option<(Instant, u64)>,
    last_logged: Option<Instant>,
}

impl ReadErrors {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, err: &rdkafka::error::KafkaError) {
        let now = Instant::now();
        let (since, count) = self.since.get_or_insert((now, 0));
        *count += 1;
        if self.last_logged.is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY) {
            tracing::warn!(
                "Kafka read error: {err} ({count} in {:.1} s); librdkafka reconnects by itself, reading goes on",
                now.duration_since(*since).as_secs_f64()
            );
            self.last_logged = Some(now);
        }
    }

    fn recovered(&mut self) {
        if let Some((since, count)) = self.since.take() {
            tracing::info!("Kafka reads work again after {:.1} s ({count} read errors)", since.elapsed().as_secs_f64());
            self.last_logged = None;
        }
    }
}
