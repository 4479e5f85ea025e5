//! The write contract: the only ways a record may be written to MongoDB.
//!
//! Every write is an upsert by `_id` that also stamps `UpdatedAt` with the *server's* clock
//! (`$currentDate`), so that `dataflow count --follow` can find every change by polling one
//! indexed field, on MongoDB and FerretDB alike. A delete is a tombstone (`Deleted: true`) for the
//! same reason: a hard delete leaves nothing behind to poll. `docs/write-contract.md` explains
//! the contract for clients in other languages; these functions are its Rust implementation.
//!
//! Each function returns `(filter, update)` for `update_one(filter, update)` with `upsert(true)`.

use bson::{doc, Document};

use crate::{field, ImageMessage};

/// Indexes the contract relies on: `UpdatedAt` for polling, `ProducerID` for per-device queries.
pub const INDEXED_FIELDS: &[&str] = &[field::UPDATED_AT, field::PRODUCER_ID];

/// A filter on one record.
pub fn by_doc_id(doc_id: &str) -> Document {
    doc! { field::DOC_ID: doc_id }
}

/// The fields every writer knows from the message alone. Writing them from either consumer
/// makes the document the same whichever consumer gets there first.
fn identity(msg: &ImageMessage) -> Document {
    doc! {
        field::ID: msg.id,
        field::PRODUCER_ID: &msg.producer_id,
        field::GROUND_TRUTH: &msg.ground_truth,
    }
}

fn stamped(set: Document) -> Document {
    doc! { "$set": set, "$currentDate": { field::UPDATED_AT: true } }
}

/// Store (or restore after a redelivery) a record's metadata, as the db-consumer does.
pub fn store_metadata(msg: &ImageMessage, stored_at: bson::DateTime) -> (Document, Document) {
    let mut set = identity(msg);
    if let Some(ms) = msg.sent_at_ms {
        set.insert(field::SENT_AT, bson::DateTime::from_millis(ms));
    }
    set.insert(field::STORED_AT, stored_at);
    (by_doc_id(&msg.doc_id()), stamped(set))
}

/// Record the model's label for a record, as the infer-consumer does.
pub fn store_inference(
    msg: &ImageMessage,
    inferred: &str,
    model_id: &str,
    inferred_at: bson::DateTime,
) -> (Document, Document) {
    let mut set = identity(msg);
    set.insert(field::INFERRED, inferred);
    set.insert(field::MODEL_ID, model_id);
    set.insert(field::INFERRED_AT, inferred_at);
    (by_doc_id(&msg.doc_id()), stamped(set))
}

/// Change (or set) the inferred label of an existing record, e.g. after a re-inference.
pub fn set_inferred(doc_id: &str, inferred: &str) -> (Document, Document) {
    (by_doc_id(doc_id), stamped(doc! { field::INFERRED: inferred }))
}

/// Delete a record: a tombstone that pollers see, instead of a hard delete they cannot.
pub fn mark_deleted(doc_id: &str) -> (Document, Document) {
    (by_doc_id(doc_id), stamped(doc! { field::DELETED: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> ImageMessage {
        ImageMessage {
            id: 3,
            producer_id: "cam-1".into(),
            ground_truth: "dog".into(),
            data: String::new(),
            sent_at_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn both_consumers_write_the_same_identity_and_stamp_updated_at() {
        let now = bson::DateTime::from_millis(1);
        let (f1, u1) = store_metadata(&message(), now);
        let (f2, u2) = store_inference(&message(), "cat", "m", now);
        assert_eq!(f1, f2);
        assert_eq!(f1, doc! { "_id": "cam-1/3" });
        for (key, value) in identity(&message()) {
            assert_eq!(u1.get_document("$set").unwrap().get(&key), Some(&value));
            assert_eq!(u2.get_document("$set").unwrap().get(&key), Some(&value));
        }
        for update in [u1, u2] {
            assert_eq!(update.get_document("$currentDate").unwrap(), &doc! { "UpdatedAt": true });
        }
    }

    #[test]
    fn only_the_infer_consumer_writes_inferred() {
        let now = bson::DateTime::from_millis(1);
        let (_, meta) = store_metadata(&message(), now);
        assert!(!meta.get_document("$set").unwrap().contains_key(field::INFERRED));
        let (_, inference) = store_inference(&message(), "cat", "m", now);
        assert_eq!(inference.get_document("$set").unwrap().get_str(field::INFERRED), Ok("cat"));
    }
}
