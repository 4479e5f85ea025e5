//! The `db-consumer`: stores each record's metadata in MongoDB.

use std::sync::Arc;

use anyhow::Result;
use clap::Parser;

use super::{Handled, Handler};
use crate::args::{ConsumerArgs, KafkaArgs, MongoArgs};
use crate::backoff::Backoff;
use crate::message::Parsed;
use crate::metrics::ConsumerMetrics;
use crate::shutdown::CancellationToken;
use crate::store::Store;

/// Upserts each image record's metadata into MongoDB by `_id`, committing Kafka offsets only
/// after MongoDB acknowledged the writes.
#[derive(Clone, Debug, Parser)]
#[command(name = "db-consumer", version)]
pub struct DbConsumerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Kafka consumer group.
    #[arg(long, env = "IOT_GROUP", default_value = "iot-db-consumer")]
    pub group: String,
    /// Records per batch of upserts.
    #[arg(long, env = "IOT_BATCH_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,
    /// Batches of upserts in flight at once.
    #[arg(long, env = "IOT_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub in_flight: u64,
}

pub struct MetadataWriter {
    store: Store,
    backoff: Backoff,
    metrics: Arc<ConsumerMetrics>,
}

impl Handler for MetadataWriter {
    async fn handle(&self, batch: Vec<Parsed>, shutdown: &CancellationToken) -> Vec<Handled> {
        let stored_at = bson::DateTime::now();
        let writes: Vec<_> = batch.iter().map(|p| iot_schema::write::store_metadata(&p.msg, stored_at)).collect();
        match super::write_durably(&self.store, &writes, &self.metrics, self.backoff.clone(), shutdown).await {
            Ok(written) => batch.into_iter().map(|p| written.outcome(p)).collect(),
            Err(_) => batch.into_iter().map(|p| Handled::Abandoned(p.inbound.pos)).collect(),
        }
    }
}

pub async fn run(args: DbConsumerArgs, metrics: Arc<ConsumerMetrics>, shutdown: CancellationToken) -> Result<()> {
    let store = super::open_store(&args.consumer, &args.mongo, &metrics, &shutdown).await?;
    let handler = Arc::new(MetadataWriter { store, backoff: args.consumer.backoff(), metrics: metrics.clone() });
    let settings = super::EngineSettings {
        group: args.group.clone(),
        batch_size: args.batch_size as usize,
        in_flight: args.in_flight as usize,
        consumer: args.consumer.clone(),
    };
    super::run(&args.kafka, settings, handler, metrics, shutdown).await
}
