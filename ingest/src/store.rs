//! MongoDB writes. Every update comes from `iot_schema::write` (the write contract); this module
//! only decides how to send many of them at once, bounds each in time, and tells an ID collision
//! from an insert race.
//!
//! A batch is sent as concurrent single-document `update_one(..).upsert(true)` calls, not as one
//! multi-statement `update` command: FerretDB 1.24 (SQLite) as released hangs a database for good
//! once the `update` commands in flight on it hold 100 statements between them, which the two
//! consumer groups' batches did. `scripts/setup` builds FerretDB with a fix (docs/follow.md,
//! "FerretDB"); single-document upserts work on any server.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, Document};
use iot_schema::field;
use iot_schema::write::{Upsert, Write};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::task::JoinSet;

use crate::args::MongoArgs;

/// Server error code of a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// How often one upsert is tried again at once after losing an insert race.
const DUPLICATE_KEY_ATTEMPTS: u32 = 3;

/// What one write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record (and its change-log entry) are written.
    Stored,
    /// The record holds another message's content (`stored` is its digest): nothing was written.
    Collision { stored: String },
}

/// A MongoDB operation that got no answer within the operation timeout.
#[derive(Debug, thiserror::Error)]
#[error("MongoDB did not answer {what} within {} ms", .limit.as_millis())]
pub struct Stalled {
    what: String,
    limit: Duration,
}

/// Whether `err` (or what caused it) is a [`Stalled`] operation.
pub fn is_stall(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Stalled>())
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    collection: String,
    concurrency: usize,
    op_timeout: Duration,
}

impl Store {
    /// A client for `args`; nothing is contacted until the first operation.
    pub async fn open(args: &MongoArgs) -> Result<Store> {
        let shown = iot_schema::redact::uri(&args.mongo_uri);
        let mut options =
            ClientOptions::parse(&args.mongo_uri).await.with_context(|| format!("invalid MongoDB URI {shown}"))?;
        let op_timeout = Duration::from_millis(args.mongo_op_timeout_ms.max(1));
        options.server_selection_timeout.get_or_insert(op_timeout.min(Duration::from_secs(10)));
        options.app_name.get_or_insert_with(|| "iot-ingest".to_owned());
        let client = Client::with_options(options).context("cannot create a MongoDB client")?;
        Ok(Store {
            db: client.database(&args.db),
            collection: args.collection.clone(),
            concurrency: args.write_concurrency.max(1) as usize,
            op_timeout,
        })
    }

    pub fn collection(&self) -> Collection<Document> {
        self.db.collection(&self.collection)
    }

    /// The change log `dataflow count --follow` reads (`iot_schema::write::change_log`).
    pub fn change_log(&self) -> Collection<Document> {
        self.db.collection(&iot_schema::write::change_log(&self.collection))
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The longest wait for one operation (`--mongo-op-timeout-ms`).
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Runs one driver operation, giving up with [`Stalled`] after the operation timeout: a hung
    /// server must fail the write (which is then retried), not block it for ever. Dropping the
    /// driver's future closes its connection.
    async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        op: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<mongodb::error::Result<T>, Stalled> {
        tokio::time::timeout(self.op_timeout, op.into_future())
            .await
            .map_err(|_| Stalled { what: what(), limit: self.op_timeout })
    }

    /// Creates the indexes the write contract relies on; a no-op when they exist. One
    /// `createIndexes` per index: FerretDB 1.24 drops the connection (a server-side panic) when
    /// one command names several indexes that already exist.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let indexes = [
            (self.collection(), iot_schema::write::INDEXED_FIELDS),
            (self.change_log(), iot_schema::write::CHANGE_LOG_INDEXED_FIELDS),
        ];
        for (collection, fields) in indexes {
            for field in fields {
                let model = IndexModel::builder().keys(doc! { *field: 1 }).build();
                let what = || format!("the creation of the {field} index on {}", collection.namespace());
                self.bounded(what, collection.create_index(model))
                    .await?
                    .with_context(|| format!("cannot create the {field} index on {}", collection.namespace()))?;
            }
        }
        Ok(())
    }

    /// Applies writes from `iot_schema::write`, `concurrency` at a time, each as its record's
    /// upsert followed by its change-log entry. Returns, in the order of `writes`, what each did
    /// once MongoDB acknowledged every one. The first failure (a stall included) fails the call,
    /// which the caller retries as a whole: the upserts are idempotent, and a collision is found
    /// again.
    pub async fn upsert_all(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut outcomes = vec![Applied::Stored; writes.len()];
        let mut running = JoinSet::new();
        let mut first_error = None;
        for (index, write) in writes.iter().enumerate() {
            while running.len() >= self.concurrency {
                collect(running.join_next().await, &mut outcomes, &mut first_error);
            }
            let (store, write) = (self.clone(), write.clone());
            running.spawn(async move { (index, store.apply(&write).await) });
        }
        while let Some(done) = running.join_next().await {
            collect(Some(done), &mut outcomes, &mut first_error);
        }
        first_error.map_or(Ok(outcomes), Err)
    }

    /// One write: the record, then (unless it collided) its change-log entry.
    async fn apply(&self, write: &Write) -> Result<Applied> {
        let applied = self.upsert_record(write).await?;
        if applied == Applied::Stored {
            self.upsert_change(&write.change).await?;
        }
        Ok(applied)
    }

    /// The record's upsert. A duplicate key means the `_id` exists but the filter did not match
    /// it: either another writer inserted it a moment ago (an insert race: trying again updates
    /// it), or it holds another message's content (its digest differs from the write's): a
    /// collision, written nowhere.
    async fn upsert_record(&self, write: &Write) -> Result<Applied> {
        let Upsert { filter, update } = &write.record;
        let records = self.collection();
        let mut attempt = 1;
        loop {
            let what = || format!("the upsert of {}", write.doc_id());
            match self.bounded(what, records.update_one(filter.clone(), update.clone()).upsert(true)).await? {
                Ok(_) => return Ok(Applied::Stored),
                Err(err) if is_duplicate_key(&err) => {
                    if let Some(stored) = self.other_content(write).await? {
                        return Ok(Applied::Collision { stored });
                    }
                    if attempt >= DUPLICATE_KEY_ATTEMPTS {
                        return Err(err).with_context(|| format!("upsert of {filter} failed"));
                    }
                    attempt += 1;
                }
                Err(err) => return Err(err).with_context(|| format!("upsert of {filter} failed")),
            }
        }
    }

    /// The digest of the record `write` targets, if it holds content other than the write's.
    async fn other_content(&self, write: &Write) -> Result<Option<String>> {
        let Some(ours) = write.digest() else { return Ok(None) };
        let records = self.collection();
        let find = records.find_one(iot_schema::write::by_doc_id(write.doc_id())).projection(doc! { field::DIGEST: 1 });
        let what = || format!("the digest read of {}", write.doc_id());
        let stored = self.bounded(what, find).await?.with_context(|| format!("cannot read {}", write.doc_id()))?;
        let stored = stored.as_ref().and_then(|doc| doc.get_str(field::DIGEST).ok());
        Ok(stored.filter(|theirs| *theirs != ours).map(str::to_owned))
    }

    /// A change-log entry; its `_id` is fixed per write, so a retried write rewrites it.
    async fn upsert_change(&self, change: &Upsert) -> Result<()> {
        let Upsert { filter, update } = change;
        let changes = self.change_log();
        let what = || format!("the change-log upsert {filter}");
        self.bounded(what, changes.update_one(filter.clone(), update.clone()).upsert(true))
            .await?
            .with_context(|| format!("change-log upsert of {filter} failed"))?;
        Ok(())
    }
}

fn collect(
    done: Option<Result<(usize, Result<Applied>), tokio::task::JoinError>>,
    outcomes: &mut [Applied],
    first_error: &mut Option<anyhow::Error>,
) {
    match done {
        Some(Ok((index, Ok(applied)))) => outcomes[index] = applied,
        Some(Ok((_, Err(err)))) => {
            first_error.get_or_insert(err);
        }
        Some(Err(join)) => {
            first_error.get_or_insert(anyhow::anyhow!("an upsert task failed: {join}"));
        }
        None => {}
    }
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}
