//! MongoDB writes. Every update comes from `iot_schema::write` (the write contract); this module
//! only decides how to send many of them at once.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database, IndexModel};

use crate::args::MongoArgs;

/// Most statements per `update` command: keeps each command far below MongoDB's 16 MiB limit.
const MAX_STATEMENTS_PER_COMMAND: usize = 1000;

#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    collection: String,
}

impl Store {
    /// A client for `args`; nothing is contacted until the first operation.
    pub async fn open(args: &MongoArgs) -> Result<Store> {
        let mut options = ClientOptions::parse(&args.mongo_uri)
            .await
            .with_context(|| format!("invalid MongoDB URI {}", args.mongo_uri))?;
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        options
            .app_name
            .get_or_insert_with(|| "iot-ingest".to_owned());
        let client = Client::with_options(options).context("cannot create a MongoDB client")?;
        Ok(Store {
            db: client.database(&args.db),
            collection: args.collection.clone(),
        })
    }

    pub fn collection(&self) -> Collection<Document> {
        self.db.collection(&self.collection)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the indexes the write contract relies on; a no-op when they exist. One
    /// `createIndexes` per index: FerretDB 1.24 drops the connection (a server-side panic) when
    /// one command names several indexes that already exist.
    pub async fn ensure_indexes(&self) -> Result<()> {
        for field in iot_schema::write::INDEXED_FIELDS {
            let model = IndexModel::builder().keys(doc! { *field: 1 }).build();
            self.collection()
                .create_index(model)
                .await
                .with_context(|| {
                    format!(
                        "cannot create the {field} index on {}.{}",
                        self.db.name(),
                        self.collection
                    )
                })?;
        }
        Ok(())
    }

    /// Applies `(filter, update)` pairs from `iot_schema::write` as upserts, in as few round
    /// trips as possible: one unordered `update` command per 1000 statements (a single
    /// `update_one` each would cost a round trip per record). Returns once MongoDB acknowledged
    /// every statement; any write error fails the whole call, which the caller retries (the
    /// upserts are idempotent).
    pub async fn upsert_all(&self, writes: &[(Document, Document)]) -> Result<()> {
        for chunk in writes.chunks(MAX_STATEMENTS_PER_COMMAND) {
            let updates: Vec<Document> = chunk
                .iter()
                .map(|(filter, update)| {
                    doc! { "q": filter, "u": update, "upsert": true, "multi": false }
                })
                .collect();
            let command = doc! { "update": &self.collection, "updates": updates, "ordered": false };
            let reply = self
                .db
                .run_command(command)
                .await
                .context("MongoDB update failed")?;
            check_update_reply(&reply, chunk.len())?;
        }
        Ok(())
    }
}

/// An `update` reply can say ok:1 and still carry per-statement errors.
fn check_update_reply(reply: &Document, statements: usize) -> Result<()> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(first) = errors.first() {
            bail!(
                "{} of {statements} upserts failed, first: {first}",
                errors.len()
            );
        }
    }
    if let Ok(error) = reply.get_document("writeConcernError") {
        bail!("write concern error: {error}");
    }
    // `n` counts matched plus upserted documents: one per statement when all went through.
    let n = reply
        .get_i32("n")
        .map(i64::from)
        .or_else(|_| reply.get_i64("n"))
        .unwrap_or(-1);
    if n != statements as i64 {
        bail!("MongoDB acknowledged {n} of {statements} upserts: {reply}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_reply_passes() {
        assert!(check_update_reply(&doc! { "n": 3, "nModified": 1, "ok": 1.0 }, 3).is_ok());
        assert!(check_update_reply(&doc! { "n": 3_i64, "ok": 1.0 }, 3).is_ok());
    }

    #[test]
    fn write_errors_fail_the_batch() {
        let reply = doc! { "n": 1, "ok": 1.0, "writeErrors": [{ "index": 1, "code": 11000, "errmsg": "dup" }] };
        let err = check_update_reply(&reply, 2).unwrap_err().to_string();
        assert!(err.contains("1 of 2 upserts failed"), "{err}");
    }

    #[test]
    fn a_short_count_fails_the_batch() {
        assert!(check_update_reply(&doc! { "n": 1, "ok": 1.0 }, 2).is_err());
        assert!(
            check_update_reply(&doc! { "ok": 1.0, "writeConcernError": { "code": 64 } }, 0)
                .is_err()
        );
    }
}
