//! Finding changed records through the change log, which works on MongoDB and FerretDB alike.
//!
//! Every write appends an entry naming its record to the collection's change log, stamped
//! `ChangedAt` by the server's clock (the write contract, `iot_schema::write`). A poll reads the
//! entries with `ChangedAt >= watermark - settle` and fetches the records they name by `_id`,
//! so its cost follows the number of changes, not the size of the collection. The overlap catches
//! entries stamped before the previous poll but visible only after it, and entries that share a
//! millisecond; entries seen before are recognised by their `_id` and not acted on twice.
//!
//! The watermark never passes the server's clock: an entry stamped ahead of it (a client that
//! wrote `ChangedAt` itself, a server clock stepped back) is applied and reported, but a
//! watermark moved to its stamp would skip every entry written until the clock caught up.
//!
//! The log is pruned here: entries older than `retention` (and already read) are deleted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{doc, Bson, RawBsonRef, RawDocumentBuf};
use iot_schema::{field, write};
use mongodb::{Client, Collection};

use super::bounded;
use super::mongo::{counted_fields, describe_id, read_document, MongoSource};
use crate::checkpoint::Unusable;
use crate::load::Reading;
use crate::record::{Observation, Windowing};

/// A changed record's `_id` and new state: its observation, or `None` once deleted (or no
/// longer countable).
pub type ChangedRecord = (String, Option<Observation>);

/// One looked-up record, and why it cannot be counted if it cannot.
type Fetched = (ChangedRecord, Option<String>);

/// Records fetched at once after a poll; a burst's lookups overlap instead of queueing.
const FETCH_THREADS: usize = 8;
/// How often old log entries are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

pub struct ChangePoller {
    /// For error messages, without its password.
    server: String,
    client: Client,
    records: Collection<RawDocumentBuf>,
    log: Collection<RawDocumentBuf>,
    batch_size: u32,
    /// The longest one round trip may take before the poll counts as stalled.
    op_timeout: Duration,
    settle_ms: i64,
    retention: Duration,
    /// The newest `ChangedAt` seen so far.
    watermark_ms: i64,
    /// Log entries already acted on inside the overlap window: entry `_id` → `ChangedAt`.
    seen: HashMap<String, i64>,
    last_poll: Instant,
    last_prune: Option<Instant>,
    /// With views: the windows changed records fall into.
    pub windowing: Option<Windowing>,
}

/// How far a follower had read the change log; saved in a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    /// The newest `ChangedAt` acted on (milliseconds since the Unix epoch, server clock).
    pub watermark_ms: i64,
    /// Entries already acted on inside the overlap window: `(entry _id, ChangedAt)`.
    pub seen: Vec<(String, i64)>,
}

impl LogPosition {
    /// Whether a log pruned after `retention` still holds every entry a poll from this position
    /// needs (those from the watermark less the settle window) at server time `now_ms`.
    pub fn covered(&self, now_ms: i64, settle_ms: i64, retention: Duration) -> bool {
        now_ms - (self.watermark_ms - settle_ms) <= retention.as_millis() as i64
    }
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Changes {
    pub upserts: Vec<ChangedRecord>,
    /// `(_id, reason)` of changed documents that cannot be counted (they count as removed).
    pub malformed: Vec<(String, String)>,
}

impl ChangePoller {
    /// Starts from the server's current time minus `settle`, so that polling covers every write
    /// that lands while the initial load is still reading. Entries older than `retention` are
    /// pruned at once: the initial load reads their records' current state anyway.
    pub fn start(source: &MongoSource, settle: Duration, retention: Duration) -> Result<Self> {
        let client = source.client()?;
        let db = client.database(&source.db);
        let log = db.collection(&write::change_log(&source.collection));
        let server = iot_schema::redact::uri(&source.uri);
        let now = server_time(&client, &server, source.op_timeout)?;
        let settle_ms = settle.as_millis() as i64;
        let mut poller = ChangePoller {
            server,
            records: db.collection(&source.collection),
            log,
            client,
            batch_size: source.batch_size,
            op_timeout: source.op_timeout,
            settle_ms,
            retention: retention.max(settle * 2),
            watermark_ms: now.timestamp_millis() - settle_ms,
            seen: HashMap::new(),
            last_poll: Instant::now(),
            last_prune: None,
            windowing: None,
        };
        poller.prune_now();
        Ok(poller)
    }

    /// Where the change log was read to, for a checkpoint: the watermark and the entries already
    /// acted on inside the overlap window.
    pub fn position(&self) -> LogPosition {
        let mut seen: Vec<(String, i64)> = self.seen.iter().map(|(id, at)| (id.clone(), *at)).collect();
        seen.sort();
        LogPosition { watermark_ms: self.watermark_ms, seen }
    }

    /// Starts from a checkpoint's position instead of the present, when the retained log still
    /// holds every entry since it; otherwise says how far behind the checkpoint is.
    pub fn resume(
        source: &MongoSource,
        settle: Duration,
        retention: Duration,
        position: LogPosition,
    ) -> Result<Result<Self, Unusable>> {
        let mut poller = Self::start(source, settle, retention)?;
        let now_ms = poller.watermark_ms + poller.settle_ms;
        if !position.covered(now_ms, poller.settle_ms, poller.retention) {
            let behind_s = (now_ms - position.watermark_ms) / 1000;
            return Ok(Err(Unusable::LogGap { behind_s, retention_s: poller.retention.as_secs() }));
        }
        poller.watermark_ms = position.watermark_ms;
        poller.seen = position.seen.into_iter().collect();
        Ok(Ok(poller))
    }

    /// True when polls were so far apart that another follower may have pruned entries this one
    /// never read: the state can no longer be trusted to be complete.
    pub fn fell_behind(&self) -> bool {
        self.last_poll.elapsed() + Duration::from_millis(self.settle_ms as u64) > self.retention
    }

    /// How long since the last poll that succeeded.
    pub fn since_last_poll(&self) -> Duration {
        self.last_poll.elapsed()
    }

    /// The newest `ChangedAt` acted on, never past the server's clock: where the next poll reads
    /// from (less the settle window).
    pub fn watermark(&self) -> bson::DateTime {
        bson::DateTime::from_millis(self.watermark_ms)
    }

    pub fn poll(&mut self) -> Result<Changes> {
        let since = bson::DateTime::from_millis(self.watermark_ms - self.settle_ms);
        let started = Instant::now();
        let query = self
            .log
            .find(doc! { field::CHANGED_AT: { "$gte": since } })
            .projection(doc! { field::CHANGED_RECORD: 1, field::CHANGED_AT: 1 })
            .batch_size(self.batch_size)
            .max_time(self.op_timeout);
        let mut changed: HashMap<String, Bson> = HashMap::new();
        let mut changes = Changes::default();
        // Marked seen only once their records are fetched: a failed poll is simply redone.
        let mut new_entries = Vec::new();
        bounded::for_each(self.op_timeout, query, |entry| {
            let get = |name| entry.get(name).ok().flatten();
            let (Some(RawBsonRef::DateTime(at)), Some(record)) = (get(field::CHANGED_AT), get(field::CHANGED_RECORD))
            else {
                tracing::warn!(entry = %describe_id(get(field::DOC_ID)), "change-log entry without Record or ChangedAt ignored");
                return;
            };
            let entry_id = describe_id(get(field::DOC_ID));
            if self.seen.contains_key(&entry_id) {
                return; // acted on in the overlap of an earlier poll
            }
            new_entries.push((entry_id, at.timestamp_millis()));
            if let Ok(value) = Bson::try_from(record.to_raw_bson()) {
                changed.insert(describe_id(Some(record)), value);
            }
        })
        .context("reading the change log failed")?;
        changes.upserts = self.fetch(changed, &mut changes.malformed)?;
        if let Some(newest) = new_entries.iter().map(|(_, at_ms)| *at_ms).max() {
            self.advance_watermark(newest, &new_entries)?;
        }
        self.seen.extend(new_entries);
        let oldest_needed = self.watermark_ms - self.settle_ms;
        self.seen.retain(|_, at_ms| *at_ms >= oldest_needed);
        self.last_poll = started;
        Ok(changes)
    }

    /// Moves the watermark to the newest entry read, but never past the server's clock, read
    /// after the entries were: every honest entry is stamped before that, so only entries
    /// stamped ahead of it are held back (they are applied all the same, and remembered as seen).
    fn advance_watermark(&mut self, newest_ms: i64, new_entries: &[(String, i64)]) -> Result<()> {
        if newest_ms <= self.watermark_ms {
            return Ok(());
        }
        let now_ms = server_time(&self.client, &self.server, self.op_timeout)?.timestamp_millis();
        let ahead: Vec<i64> = new_entries.iter().map(|(_, at_ms)| at_ms - now_ms).filter(|ahead| *ahead > 0).collect();
        if let Some(furthest) = ahead.iter().max() {
            tracing::warn!(
                entries = ahead.len(),
                furthest_ahead_s = *furthest as f64 / 1000.0,
                "change-log entries stamped ahead of the server clock (written with a client clock, or the \
                 server clock went back); applied, but the watermark stays at the server clock"
            );
        }
        self.watermark_ms = self.watermark_ms.max(newest_ms.min(now_ms));
        Ok(())
    }

    /// The current state of each changed record, looked up by `_id` on a few connections at once.
    fn fetch(
        &self,
        changed: HashMap<String, Bson>,
        malformed: &mut Vec<(String, String)>,
    ) -> Result<Vec<ChangedRecord>> {
        let changed: Vec<(String, Bson)> = changed.into_iter().collect();
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let chunk = changed.len().div_ceil(FETCH_THREADS);
        let fetched: Vec<Result<Vec<Fetched>>> = std::thread::scope(|scope| {
            let lookups: Vec<_> = changed
                .chunks(chunk)
                .map(|ids| scope.spawn(move || ids.iter().map(|(id, value)| self.fetch_one(id, value)).collect()))
                .collect();
            lookups.into_iter().map(|lookup| lookup.join().expect("a record lookup panicked")).collect()
        });
        let mut upserts = Vec::with_capacity(changed.len());
        for result in fetched {
            for (upsert, problem) in result? {
                if let Some(reason) = problem {
                    malformed.push((upsert.0.clone(), reason));
                }
                upserts.push(upsert);
            }
        }
        Ok(upserts)
    }

    /// One record's state; a record that is gone (a hard delete) or a tombstone is `None`.
    fn fetch_one(&self, id: &str, value: &Bson) -> Result<Fetched> {
        let lookup = self
            .records
            .find_one(doc! { field::DOC_ID: value.clone() })
            .projection(counted_fields())
            .max_time(self.op_timeout);
        let document =
            bounded::call(self.op_timeout, lookup).with_context(|| format!("fetching changed record {id} failed"))?;
        let reading = document.as_deref().map(read_document);
        let observation = reading.as_ref().and_then(|reading| reading.observation(self.windowing));
        let problem = match reading {
            Some(Reading::Malformed(reason)) => Some(reason.into_owned()),
            _ => None,
        };
        Ok(((id.to_owned(), observation), problem))
    }

    /// Deletes old log entries now and then. Failing to is not fatal: the log only grows.
    pub fn prune(&mut self) {
        if self.last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            self.prune_now();
        }
    }

    fn prune_now(&mut self) {
        self.last_prune = Some(Instant::now());
        let pruned = server_time(&self.client, &self.server, self.op_timeout).and_then(|now| {
            // Never entries this follower has yet to read, whatever the retention.
            let cutoff =
                (now.timestamp_millis() - self.retention.as_millis() as i64).min(self.watermark_ms - self.settle_ms);
            let delete =
                self.log.delete_many(doc! { field::CHANGED_AT: { "$lt": bson::DateTime::from_millis(cutoff) } });
            let deleted = bounded::call(self.op_timeout, delete).context("pruning the change log failed")?;
            Ok(deleted.deleted_count)
        });
        match pruned {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned the change log"),
            Err(err) => tracing::warn!("{err:#}"),
        }
    }
}

/// The server's clock (`hello.localTime`), which `$currentDate` also uses.
fn server_time(client: &Client, server: &str, op_timeout: Duration) -> Result<bson::DateTime> {
    let hello = bounded::call(op_timeout, client.database("admin").run_command(doc! { "hello": 1 }))
        .with_context(|| format!("cannot reach MongoDB at {server}"))?;
    Ok(hello.get_datetime("localTime").copied().unwrap_or_else(|_| {
        tracing::warn!("the server does not report localTime; using this machine's clock");
        bson::DateTime::now()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_covered_only_while_the_log_still_holds_its_window() {
        let position = LogPosition { watermark_ms: 1_000_000, seen: vec![] };
        let retention = Duration::from_secs(600);
        // The next poll reads from the watermark less the 2 s settle window.
        assert!(position.covered(1_000_000 + 598_000, 2_000, retention));
        assert!(!position.covered(1_000_000 + 598_001, 2_000, retention));
    }
}
