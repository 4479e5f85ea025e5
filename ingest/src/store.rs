//! MongoDB writes. Every update comes from `iot_schema::write` (the write contract); this module
//! only decides how to send many of them at once.
//!
//! A batch is sent as concurrent single-document `update_one(..).upsert(true)` calls, not as one
//! multi-statement `update` command: FerretDB 1.24 (SQLite) as released hangs a database for good
//! once the `update` commands in flight on it hold 100 statements between them, which the two
//! consumer groups' batches did. `scripts/setup` builds FerretDB with a fix (docs/follow.md,
//! "FerretDB"); single-document upserts work on any server.

use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, Document};
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

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    collection: String,
    concurrency: usize,
}

impl Store {
    /// A client for `args`; nothing is contacted until the first operation.
    pub async fn open(args: &MongoArgs) -> Result<Store> {
        let mut options = ClientOptions::parse(&args.mongo_uri)
            .await
            .with_context(|| format!("invalid MongoDB URI {}", iot_schema::redact::uri(&args.mongo_uri)))?;
        options.server_selection_timeout.get_or_insert(Duration::from_secs(10));
        options.app_name.get_or_insert_with(|| "iot-ingest".to_owned());
        let client = Client::with_options(options).context("cannot create a MongoDB client")?;
        Ok(Store {
            db: client.database(&args.db),
            collection: args.collection.clone(),
            concurrency: args.write_concurrency.max(1) as usize,
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
                collection
                    .create_index(model)
                    .await
                    .with_context(|| format!("cannot create the {field} index on {}", collection.namespace()))?;
            }
        }
        Ok(())
    }

    /// Applies writes from `iot_schema::write`, `concurrency` at a time, each as its record's
    /// upsert followed by its change-log entry. Returns once MongoDB acknowledged every one; the
    /// first failure fails the call, which the caller retries as a whole (the upserts are
    /// idempotent).
    pub async fn upsert_all(&self, writes: &[Write]) -> Result<()> {
        let mut running = JoinSet::new();
        let mut first_error = None;
        let (records, changes) = (self.collection(), self.change_log());
        for write in writes {
            while running.len() >= self.concurrency {
                collect(running.join_next().await, &mut first_error);
            }
            let (records, changes, write) = (records.clone(), changes.clone(), write.clone());
            running.spawn(async move {
                upsert(&records, write.record).await?;
                upsert(&changes, write.change).await
            });
        }
        while let Some(done) = running.join_next().await {
            collect(Some(done), &mut first_error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn collect(done: Option<Result<Result<()>, tokio::task::JoinError>>, first_error: &mut Option<anyhow::Error>) {
    let outcome = match done {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(anyhow::anyhow!("an upsert task failed: {join}")),
        None => Ok(()),
    };
    if let Err(err) = outcome {
        first_error.get_or_insert(err);
    }
}

/// One upsert. Two writers upserting the same new `_id` at once can make one of them fail with
/// a duplicate key (the other inserted first); the document exists then, so trying again
/// updates it.
async fn upsert(collection: &Collection<Document>, upsert: Upsert) -> Result<()> {
    let Upsert { filter, update } = upsert;
    let mut attempt = 1;
    loop {
        match collection.update_one(filter.clone(), update.clone()).upsert(true).await {
            Ok(_) => return Ok(()),
            Err(err) if is_duplicate_key(&err) && attempt < DUPLICATE_KEY_ATTEMPTS => attempt += 1,
            Err(err) => return Err(err).with_context(|| format!("upsert of {filter} failed")),
        }
    }
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}
