//! MongoDB writes. Every update comes from `iot_schema::write` (the write contract); this module
//! only decides how to send many of them at once, bounds each in time, and tells an ID collision
//! from an insert race.
//!
//! A batch is sent as two multi-statement `update` commands, one for the records and one for
//! their change-log entries, instead of a round trip per upsert. FerretDB 1.24 (SQLite) as
//! released hangs a database for good once the `update` commands in flight on it hold 100
//! statements between them, and loses concurrent updates of one document; `scripts/setup` builds
//! FerretDB with a fix for both (docs/follow.md, "the `update-atomic` patch"), which this module
//! relies on. The driver's `bulkWrite` needs MongoDB 8, so the `update` command is sent as is.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{doc, Document};
use iot_schema::field;
use iot_schema::write::{Upsert, Write};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::task::JoinSet;

use crate::args::MongoArgs;
use crate::metrics::{Stage, Stages};

/// Server error code of a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// How often one upsert is tried again at once after losing an insert race.
const DUPLICATE_KEY_ATTEMPTS: u32 = 3;
/// Upserts in one `update` command: far below MongoDB's 100,000 statements and 16 MiB per
/// command for the consumers' small documents, and it bounds one command's time on a slow server.
pub const STATEMENTS_PER_COMMAND: usize = 1_000;

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
    stages: Option<Stages>,
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
            stages: None,
        })
    }

    /// The same store, timing its writes in `stages` (`write_records`, `write_changes`).
    pub fn with_stages(self, stages: Stages) -> Store {
        Store { stages: Some(stages), ..self }
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

    /// Applies writes from `iot_schema::write`: the records' upserts as one unordered `update`
    /// command, then, for the records stored, their change-log entries as another (up to
    /// [`STATEMENTS_PER_COMMAND`] statements each). Returns, in the order of `writes`, what each
    /// did once MongoDB acknowledged every one. The first failure (a stall included) fails the
    /// call, which the caller retries as a whole: the upserts are idempotent, and a collision is
    /// found again.
    pub async fn upsert_all(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(STATEMENTS_PER_COMMAND) {
            let applied = self.timed(Stage::WriteRecords, self.upsert_records(chunk)).await?;
            let changes = chunk.iter().zip(&applied).filter(|(_, a)| **a == Applied::Stored).map(|(w, _)| &w.change);
            self.timed(Stage::WriteChanges, self.update_many(&self.change_log(), changes))
                .await?
                .require_all("change-log")?;
            outcomes.extend(applied);
        }
        Ok(outcomes)
    }

    /// The records' upserts in one command. When any statement fails (a duplicate key: an
    /// insert race or an ID collision, which rule 8 of the contract tells apart by reading the
    /// record), the batch is written again one upsert at a time: servers differ in what an
    /// unordered command does after an error (FerretDB 1.24 stops at the first one and reports
    /// the wrong index), and every upsert is idempotent.
    async fn upsert_records(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let reply = self.update_many(&self.collection(), writes.iter().map(|w| &w.record)).await?;
        if reply.all_applied() {
            return Ok(vec![Applied::Stored; writes.len()]);
        }
        if let Some(other) = reply.errors.iter().find(|e| e.code != DUPLICATE_KEY) {
            anyhow::bail!(
                "upsert into {} failed: {} (code {})",
                self.collection().namespace(),
                other.message,
                other.code
            );
        }
        tracing::debug!("{} of a bulk upsert of {} records: writing them one by one", reply, writes.len());
        self.upsert_one_by_one(writes).await
    }

    /// One `update` command holding every upsert of `upserts`, unordered.
    async fn update_many<'a>(
        &self,
        collection: &Collection<Document>,
        upserts: impl Iterator<Item = &'a Upsert>,
    ) -> Result<BulkReply> {
        let statements: Vec<Document> =
            upserts.map(|Upsert { filter, update }| doc! { "q": filter, "u": update, "upsert": true }).collect();
        let sent = statements.len();
        if sent == 0 {
            return Ok(BulkReply { sent, acknowledged: 0, errors: Vec::new() });
        }
        let command = doc! { "update": collection.name(), "updates": statements, "ordered": false };
        let what = || format!("an update of {sent} upserts on {}", collection.namespace());
        let reply = self
            .bounded(what, self.db.run_command(command))
            .await?
            .with_context(|| format!("update of {sent} upserts on {} failed", collection.namespace()))?;
        BulkReply::read(&reply, sent).with_context(|| format!("update on {}", collection.namespace()))
    }

    /// Every record's upsert on its own, `concurrency` at a time.
    async fn upsert_one_by_one(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut outcomes = vec![Applied::Stored; writes.len()];
        let mut running = JoinSet::new();
        let mut first_error = None;
        for (index, write) in writes.iter().enumerate() {
            while running.len() >= self.concurrency {
                collect(running.join_next().await, &mut outcomes, &mut first_error);
            }
            let (store, write) = (self.clone(), write.clone());
            running.spawn(async move { (index, store.upsert_record(&write).await) });
        }
        while let Some(done) = running.join_next().await {
            collect(Some(done), &mut outcomes, &mut first_error);
        }
        first_error.map_or(Ok(outcomes), Err)
    }

    /// Runs `op`, timing it as `stage` when the store reports its stages.
    async fn timed<T>(&self, stage: Stage, op: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let result = op.await;
        if let Some(stages) = &self.stages {
            stages.observe(stage, started.elapsed());
        }
        result
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
}

/// What the server said about one `update` command.
#[derive(Debug)]
struct BulkReply {
    sent: usize,
    /// `n`: statements that matched a document or inserted one.
    acknowledged: usize,
    errors: Vec<StatementError>,
}

#[derive(Debug)]
struct StatementError {
    code: i32,
    message: String,
}

impl BulkReply {
    /// Reads an `update` reply (`n`, `writeErrors`, `writeConcernError`) for `sent` statements.
    fn read(reply: &Document, sent: usize) -> Result<BulkReply> {
        if let Ok(concern) = reply.get_document("writeConcernError") {
            anyhow::bail!("the write concern failed: {concern}");
        }
        let acknowledged = match reply.get("n") {
            Some(bson::Bson::Int32(n)) => usize::try_from(*n).unwrap_or(0),
            Some(bson::Bson::Int64(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let errors = match reply.get_array("writeErrors") {
            Ok(errors) => errors.iter().filter_map(bson::Bson::as_document).map(StatementError::read).collect(),
            Err(_) => Vec::new(),
        };
        Ok(BulkReply { sent, acknowledged, errors })
    }

    /// Every statement matched or inserted its document. An upsert always does one or the other
    /// unless it failed, so a short count without errors is treated as a failure too.
    fn all_applied(&self) -> bool {
        self.errors.is_empty() && self.acknowledged == self.sent
    }

    /// Fails unless every statement was applied.
    fn require_all(&self, what: &str) -> Result<()> {
        match self.all_applied() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("{what} {self}")),
        }
    }
}

impl std::fmt::Display for BulkReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "update: {} of {} upserts acknowledged", self.acknowledged, self.sent)?;
        if let Some(first) = self.errors.first() {
            write!(f, ", {} failed (first: {}, code {})", self.errors.len(), first.message, first.code)?;
        }
        Ok(())
    }
}

impl StatementError {
    fn read(error: &Document) -> StatementError {
        let code = match error.get("code") {
            Some(bson::Bson::Int32(code)) => *code,
            Some(bson::Bson::Int64(code)) => i32::try_from(*code).unwrap_or(i32::MAX),
            _ => 0,
        };
        StatementError { code, message: error.get_str("errmsg").unwrap_or("no message").to_owned() }
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
