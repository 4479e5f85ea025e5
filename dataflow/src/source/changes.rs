//! Finding changed records by polling `UpdatedAt`, which works on MongoDB and FerretDB alike.
//!
//! Every write stamps `UpdatedAt` with the server's clock (the write contract,
//! `iot_schema::write`). A poll asks for documents with `UpdatedAt >= watermark - settle`: the
//! overlap catches writes whose timestamp was taken before the previous poll but that became
//! visible after it, and writes that share a millisecond. Documents seen again unchanged are
//! recognised by a fingerprint and not passed on twice.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, RawBsonRef, RawDocumentBuf};
use iot_schema::field;
use mongodb::sync::Collection;

use super::mongo::{counted_fields, document_id, read_document, MongoSource, Reading};
use crate::record::Observation;

/// A record's new state: its observation, or `None` once deleted (or no longer countable).
pub type Upsert = (String, Option<Observation>);

pub struct ChangePoller {
    collection: Collection<RawDocumentBuf>,
    batch_size: u32,
    settle_ms: i64,
    /// The newest `UpdatedAt` seen so far.
    watermark_ms: i64,
    /// Fingerprints of what was passed on inside the overlap window, by `_id`.
    recent: HashMap<String, (i64, u64)>,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Changes {
    pub upserts: Vec<Upsert>,
    /// `(_id, reason)` of changed documents that cannot be counted (they count as removed).
    pub malformed: Vec<(String, String)>,
    /// The newest `UpdatedAt` among them, in ms since the epoch.
    pub newest_ms: Option<i64>,
}

impl ChangePoller {
    /// Starts from the server's current time minus `settle`, so that polling covers every write
    /// that lands while the initial load is still reading.
    pub fn start(source: &MongoSource, settle: Duration) -> Result<Self> {
        let collection = source.connect()?;
        let now = server_time(source)?;
        let settle_ms = settle.as_millis() as i64;
        Ok(ChangePoller {
            collection,
            batch_size: source.batch_size,
            settle_ms,
            watermark_ms: now.timestamp_millis() - settle_ms,
            recent: HashMap::new(),
        })
    }

    pub fn poll(&mut self) -> Result<Changes> {
        let since = bson::DateTime::from_millis(self.watermark_ms - self.settle_ms);
        let mut projection = counted_fields();
        projection.insert(field::UPDATED_AT, 1);
        let cursor = self
            .collection
            .find(doc! { field::UPDATED_AT: { "$gte": since } })
            .projection(projection)
            .batch_size(self.batch_size)
            .run()
            .context("polling for changes failed")?;
        let mut changes = Changes::default();
        for document in cursor {
            let document = document.context("polling for changes failed")?;
            let Some(RawBsonRef::DateTime(updated_at)) = document.get(field::UPDATED_AT).ok().flatten() else {
                continue;
            };
            let updated_ms = updated_at.timestamp_millis();
            let id = document_id(&document);
            let observation = match read_document(&document) {
                Reading::Counted { producer_id, ground_truth, inferred } => {
                    Some(Observation::new(producer_id, ground_truth, inferred))
                }
                Reading::Deleted => None,
                Reading::Malformed(reason) => {
                    changes.malformed.push((id.clone(), reason));
                    None
                }
            };
            let fingerprint = fingerprint(&observation);
            if self.recent.get(&id) == Some(&(updated_ms, fingerprint)) {
                continue; // seen in the overlap of an earlier poll
            }
            self.recent.insert(id.clone(), (updated_ms, fingerprint));
            changes.newest_ms = changes.newest_ms.max(Some(updated_ms));
            changes.upserts.push((id, observation));
        }
        if let Some(newest) = changes.newest_ms {
            self.watermark_ms = self.watermark_ms.max(newest);
        }
        let oldest_needed = self.watermark_ms - self.settle_ms;
        self.recent.retain(|_, (updated_ms, _)| *updated_ms >= oldest_needed);
        Ok(changes)
    }
}

fn fingerprint(observation: &Option<Observation>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    observation.hash(&mut hasher);
    hasher.finish()
}

/// The server's clock (`hello.localTime`), which `$currentDate` also uses.
pub fn server_time(source: &MongoSource) -> Result<bson::DateTime> {
    let client = mongodb::sync::Client::with_uri_str(&source.uri)?;
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .run()
        .with_context(|| format!("cannot reach MongoDB at {}", source.uri))?;
    Ok(hello.get_datetime("localTime").copied().unwrap_or_else(|_| {
        tracing::warn!("the server does not report localTime; using this machine's clock");
        bson::DateTime::now()
    }))
}
