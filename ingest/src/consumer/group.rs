//! Group membership: what the engine does when Kafka moves partitions to or from this member.
//!
//! These callbacks run inside the read loop's `recv()`, on its task, so the offset tracker they
//! share with the loop is never locked across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::ConsumerMetrics;
use crate::offsets::{Commit, OffsetTracker};

/// How long an assignment waits for the group's committed offsets.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer's context: commits revoked partitions, starts an offset-tracking epoch per
/// assigned partition, and logs rebalances and failed commits.
pub struct EngineContext {
    pub metrics: Arc<ConsumerMetrics>,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// Counts assignments, so that the read loop pauses partitions that arrive while it is paused.
    assignments: AtomicU64,
}

impl EngineContext {
    pub fn new(metrics: Arc<ConsumerMetrics>) -> EngineContext {
        EngineContext { metrics, tracker: Arc::default(), assignments: AtomicU64::new(0) }
    }

    /// The number of assignments so far.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// Commits, synchronously and before the partitions go, what is done in each revoked
    /// partition, and forgets them: batches still running for them finish without committing.
    fn commit_revoked(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let commits: Vec<Commit> = {
            let mut tracker = lock(&self.tracker);
            revoked.elements().iter().filter_map(|e| tracker.revoked(e.topic(), e.partition())).collect()
        };
        if commits.is_empty() {
            return;
        }
        match to_list(&commits).and_then(|tpl| Ok(consumer.commit(&tpl, CommitMode::Sync).map(|()| tpl)?)) {
            Ok(tpl) => {
                self.metrics.commits.inc();
                tracing::info!("committed on revoke: {}", describe(&tpl));
            }
            Err(err) => {
                self.metrics.commit_errors.inc();
                tracing::warn!("commit on revoke failed ({err:#}): the new owner reads those records again");
            }
        }
    }

    /// Starts a new epoch for each assigned partition, knowing where the group stands in it.
    fn start_epochs(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let committed = match consumer.committed_offsets(assigned.clone(), COMMITTED_TIMEOUT) {
            Ok(tpl) => tpl,
            Err(err) => {
                tracing::warn!("cannot read the group's committed offsets ({err}): offsets skipped by a reset to the earliest are not detected for {}", describe(assigned));
                assigned.clone()
            }
        };
        let mut tracker = lock(&self.tracker);
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            tracker.assigned(element.topic(), element.partition(), offset);
        }
        self.assignments.fetch_add(1, Ordering::AcqRel);
    }
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!("partitions revoked: {}", describe(tpl));
                self.commit_revoked(consumer, tpl);
            }
            Rebalance::Assign(tpl) => tracing::info!("partitions assigned: {}", describe(tpl)),
            Rebalance::Error(err) => tracing::warn!("rebalance error: {err}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause through a revoke and a later re-assignment: a
            // partition paused, moved to another member and given back would never be read again.
            // Every assignment starts unpaused; the read loop pauses it again if it must.
            if let Err(err) = consumer.resume(tpl) {
                tracing::warn!("cannot resume the assigned partitions {}: {err}", describe(tpl));
            }
            self.start_epochs(consumer, tpl);
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

/// The tracker, even if a thread panicked while holding it (its state stays consistent: every
/// method finishes its update before returning).
pub fn lock(tracker: &Mutex<OffsetTracker>) -> MutexGuard<'_, OffsetTracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn to_list(commits: &[Commit]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

pub fn describe(tpl: &TopicPartitionList) -> String {
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
