//! The consumer engine both consumer groups share: read, batch, hand batches to a handler with
//! several in flight, dead-letter malformed records, and commit each partition only up to its
//! first record not yet durably handled.

pub mod db;
pub mod infer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{ConsumerArgs, KafkaArgs};
use crate::backoff::Backoff;
use crate::dlq::DeadLetters;
use crate::message::{Inbound, Malformed, Parsed};
use crate::metrics::Metrics;
use crate::offsets::{OffsetTracker, Position};
use crate::shutdown::Shutdown;

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
    fn handle(&self, batch: Vec<Parsed>, shutdown: &Shutdown) -> impl Future<Output = Vec<Handled>> + Send;
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

/// Logs rebalances and failed commits.
struct EngineContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => tracing::info!("partitions revoked: {}", describe(tpl)),
            Rebalance::Assign(tpl) => tracing::info!("partitions assigned: {}", describe(tpl)),
            Rebalance::Error(err) => tracing::warn!("rebalance error: {err}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!("committed {}", describe(offsets)),
            Err(err) => {
                self.metrics.commit_errors.inc();
                tracing::warn!("offset commit of {} failed: {err}", describe(offsets));
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}[{}]@{o}", e.topic(), e.partition()),
            _ => format!("{}[{}]", e.topic(), e.partition()),
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Everything a batch task needs besides the batch.
struct TaskKit<H> {
    handler: Arc<H>,
    decoder: crate::decode::Decoder,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

/// Runs a consumer group member until a shutdown: on shutdown it stops reading, lets in-flight
/// batches finish (up to the grace period), commits what is done and returns.
pub async fn run<H: Handler>(
    kafka: &KafkaArgs,
    settings: EngineSettings,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<()> {
    let config = crate::kafka::consumer_config(kafka, &settings.group, settings.consumer.session_timeout_ms);
    let consumer: StreamConsumer<EngineContext> = config
        .create_with_context(EngineContext { metrics: metrics.clone() })
        .map_err(|e| crate::kafka::creation_error(e, kafka))
        .with_context(|| format!("cannot create a Kafka consumer for {}", kafka.brokers))?;
    consumer.subscribe(&[kafka.topic.as_str()]).with_context(|| format!("cannot subscribe to {}", kafka.topic))?;
    let kit = Arc::new(TaskKit {
        handler,
        decoder: settings.consumer.decoder(),
        dead_letters: DeadLetters::new(kafka, &settings.consumer, &settings.group)?,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    tracing::info!(
        "consuming {} as group {} ({} records per batch, {} batches in flight)",
        kafka.topic,
        settings.group,
        settings.batch_size,
        settings.in_flight
    );

    let batch_size = settings.batch_size.max(1);
    let linger = Duration::from_millis(settings.consumer.batch_linger_ms);
    let mut tracker = OffsetTracker::new();
    let mut tasks: JoinSet<Vec<Position>> = JoinSet::new();
    let mut batch: Vec<Inbound> = Vec::with_capacity(batch_size);
    let mut deadline: Option<Instant> = None;
    let mut stop = shutdown.clone();
    let mut read_errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    loop {
        let room = tasks.len() < settings.in_flight.max(1);
        tokio::select! {
            biased;
            _ = stop.requested() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let done = joined.context("a batch task panicked")?;
                finish(&consumer, &mut tracker, &done, &metrics);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && room => {
                dispatch(&mut tasks, &kit, std::mem::take(&mut batch));
                deadline = None;
            }
            received = consumer.recv(), if room => match received {
                Ok(msg) => {
                    read_errors.reset();
                    let inbound = Inbound {
                        pos: Position { topic: msg.topic().to_owned(), partition: msg.partition(), offset: msg.offset() },
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec),
                    };
                    tracker.received(&inbound.pos);
                    metrics.received.inc();
                    batch.push(inbound);
                    if batch.len() >= batch_size {
                        dispatch(&mut tasks, &kit, std::mem::take(&mut batch));
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + linger);
                    }
                }
                Err(err) => {
                    let delay = read_errors.next_delay();
                    tracing::warn!("Kafka read error: {err}; reading again in {} ms", delay.as_millis());
                    tokio::time::sleep(delay).await;
                }
            },
        }
    }

    // Records read but not dispatched are simply not committed: they will be read again.
    tracing::info!("stopping: {} batch(es) in flight, {} record(s) not started", tasks.len(), batch.len());
    let grace = Duration::from_secs(settings.consumer.shutdown_grace_s);
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(done) => finish(&consumer, &mut tracker, &done, &metrics),
                Err(err) => tracing::error!("a batch task failed: {err}"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("{} batch(es) still busy after {grace:?}: left for redelivery", tasks.len());
        tasks.abort_all();
    }
    let final_commits = owned(&consumer, tracker.all_commits());
    if !final_commits.is_empty() {
        let tpl = to_list(&final_commits)?;
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::info!("final commit: {}", describe(&tpl)),
            Err(err) => tracing::warn!("final commit of {} failed: {err}", describe(&tpl)),
        }
    }
    consumer.unsubscribe();
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn dispatch<H: Handler>(tasks: &mut JoinSet<Vec<Position>>, kit: &Arc<TaskKit<H>>, batch: Vec<Inbound>) {
    if batch.is_empty() {
        return;
    }
    let kit = kit.clone();
    tasks.spawn(async move { handle_batch(&kit, batch).await });
}

/// Marks records done and commits the partitions whose safe point moved.
fn finish<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    tracker: &mut OffsetTracker,
    done: &[Position],
    metrics: &Metrics,
) {
    for pos in done {
        tracker.completed(pos);
    }
    let commits = owned(consumer, tracker.take_commits());
    if commits.is_empty() {
        return;
    }
    match to_list(&commits).and_then(|tpl| Ok(consumer.commit(&tpl, CommitMode::Async)?)) {
        Ok(()) => metrics.commits.inc(),
        Err(err) => {
            metrics.commit_errors.inc();
            tracing::warn!("cannot commit offsets: {err:#}");
        }
    }
}

/// Only the partitions this member holds now: committing a partition that moved to another
/// member could move its committed position back.
fn owned<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    commits: Vec<(String, i32, i64)>,
) -> Vec<(String, i32, i64)> {
    let Ok(assignment) = consumer.assignment() else {
        return Vec::new();
    };
    commits.into_iter().filter(|(topic, partition, _)| assignment.find_partition(topic, *partition).is_some()).collect()
}

fn to_list(commits: &[(String, i32, i64)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// One batch: parse every record, dead-letter the malformed ones, let the handler do the rest.
/// Returns the positions that are done (written or dead-lettered).
async fn handle_batch<H: Handler>(kit: &TaskKit<H>, batch: Vec<Inbound>) -> Vec<Position> {
    let mut done = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    for inbound in batch {
        match kit.decoder.parse(inbound.payload.as_deref()).await {
            Ok(msg) => good.push(Parsed { inbound, msg }),
            Err(reason) => dead_letter(kit, &inbound, &reason, &mut done).await,
        }
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
    if kit.dead_letters.send(inbound, reason, &kit.shutdown).await.is_ok() {
        kit.metrics.dead_lettered.inc();
        done.push(inbound.pos.clone());
    }
}

/// Upserts a batch's `writes`, retrying (the upserts are idempotent) until MongoDB
/// acknowledged them or a shutdown comes.
pub async fn write_durably(
    store: &crate::store::Store,
    writes: &[iot_schema::write::Write],
    metrics: &Metrics,
    backoff: Backoff,
    shutdown: &Shutdown,
) -> Result<(), crate::backoff::ShutdownRequested> {
    let mut attempt = 0u64;
    crate::backoff::retry("MongoDB upsert", backoff, shutdown, || {
        attempt += 1;
        if attempt > 1 {
            metrics.mongo_retries.inc();
        }
        async {
            let started = std::time::Instant::now();
            let result = store.upsert_all(writes).await;
            if result.is_ok() {
                metrics.mongo_write_seconds.inc_by(started.elapsed().as_secs_f64());
                metrics.mongo_batches.inc();
                metrics.written.inc_by(writes.len() as u64);
            }
            result.map_err(|e| format!("{e:#}"))
        }
    })
    .await
}

/// Creates the contract's indexes, waiting for MongoDB if it is not up yet.
pub async fn prepare_store(store: &crate::store::Store, backoff: Backoff, shutdown: &Shutdown) -> Result<()> {
    crate::backoff::retry("creating MongoDB indexes", backoff, shutdown, || async {
        store.ensure_indexes().await.map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|_| anyhow::anyhow!("stopped before MongoDB answered"))
}
