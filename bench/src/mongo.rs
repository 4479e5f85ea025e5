//! Loading generated records into MongoDB, the way the consumers leave them.

use anyhow::{Context, Result};
use bson::{doc, Document};
use iot_schema::field;
use iot_schema::write::{change_log, Upsert, Write};
use mongodb::sync::{Client, Database};

use crate::{generate, Answer, Spec};

/// Inserts `spec`'s records into `db.collection` in batches; returns the answer.
pub fn load(uri: &str, db: &str, collection: &str, spec: &Spec, progress: impl Fn(u64)) -> Result<Answer> {
    let client = Client::with_uri_str(uri).with_context(|| format!("cannot connect to {uri}"))?;
    let collection = client.database(db).collection::<Document>(collection);
    let mut batch = Vec::with_capacity(BATCH);
    let mut failure = None;
    let now = bson::DateTime::now();
    let answer = generate(spec, |record| {
        if failure.is_some() {
            return;
        }
        let mut document = doc! {
            field::DOC_ID: &record.doc_id,
            field::ID: record.id,
            field::PRODUCER_ID: record.producer_id,
            field::GROUND_TRUTH: record.ground_truth,
            field::UPDATED_AT: now,
        };
        if let Some(label) = record.inferred {
            document.insert(field::INFERRED, label);
        }
        if let Some(at) = &record.inferred_at {
            document.insert(field::INFERRED_AT, bson::DateTime::from_millis(at.ms));
        }
        batch.push(document);
        if batch.len() == BATCH {
            let n = batch.len() as u64;
            failure = collection.insert_many(batch.drain(..)).run().err();
            progress(n);
        }
    });
    if let Some(err) = failure {
        return Err(err).context("insert_many failed");
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        collection.insert_many(batch).run().context("insert_many failed")?;
        progress(n);
    }
    Ok(answer)
}

const BATCH: usize = 5_000;

/// Applies one write of the write contract to `db.collection`: the record, then its change-log
/// entry.
pub fn apply(db: &Database, collection: &str, write: &Write) -> Result<()> {
    let upsert = |collection: &str, Upsert { filter, update }: &Upsert| {
        db.collection::<Document>(collection)
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .run()
            .with_context(|| format!("upsert of {filter} into {collection} failed"))
    };
    upsert(collection, &write.record)?;
    upsert(&change_log(collection), &write.change)?;
    Ok(())
}
