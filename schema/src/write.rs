//! The write contract: the only ways a record may be written to MongoDB.
//!
//! Every write is two upserts, applied in this order:
//!
//! 1. the record itself, by `_id`, which also stamps `UpdatedAt` with the server's clock;
//! 2. an entry in the record collection's change log ([`change_log`]): a new document naming the
//!    record and stamped `ChangedAt` by the server's clock.
//!
//! `dataflow count --follow` polls the change log, which stays small, and fetches the records it
//! names by `_id`. Both are cheap on MongoDB and on FerretDB, whose SQLite backend can use no index
//! but `_id` (polling `UpdatedAt` on the records themselves would scan the whole collection).
//! A delete is a tombstone (`Deleted: true`), so that the record's history stays readable; a hard
//! delete followed by its change-log entry is seen too.
//!
//! A write made from a message ([`store_metadata`], [`store_inference`]) also carries the message's
//! [`content_digest`]: the first such write stores it in the record, and later ones only match a
//! record holding the same digest (or none). A second message with the same `_id` but other
//! content therefore fails with a duplicate-key error instead of mixing its fields into the
//! first one's record: an ID collision, which the writer reports. `docs/write-contract.md`
//! explains the contract for clients in other languages; these functions are its Rust
//! implementation.

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use sha2::{Digest, Sha256};

use crate::{field, ImageMessage};

/// Indexes the contract relies on in the record collection: `UpdatedAt` for readers that want
/// recent records, `ProducerID` for per-device queries.
pub const INDEXED_FIELDS: &[&str] = &[field::UPDATED_AT, field::PRODUCER_ID];

/// Indexes of the change log: `ChangedAt`, which followers poll.
pub const CHANGE_LOG_INDEXED_FIELDS: &[&str] = &[field::CHANGED_AT];

/// The change log of collection `C` is `C_changes`.
pub const CHANGE_LOG_SUFFIX: &str = "_changes";

/// The change log of a record collection.
pub fn change_log(collection: &str) -> String {
    format!("{collection}{CHANGE_LOG_SUFFIX}")
}

/// `update_one(filter, update).upsert(true)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Upsert {
    pub filter: Document,
    pub update: Document,
}

/// One write to a record: apply [`Write::record`] to the record collection, then, once it is
/// acknowledged, [`Write::change`] to its [`change_log`]. Retrying a whole `Write` is safe: both
/// are idempotent upserts (the change entry's `_id` is fixed when the `Write` is made).
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub record: Upsert,
    pub change: Upsert,
}

impl Write {
    /// A write to whatever the record holds (a correction, a tombstone).
    fn new(doc_id: &str, set: Document) -> Write {
        Write {
            record: Upsert { filter: by_doc_id(doc_id), update: stamped(set, field::UPDATED_AT) },
            change: change_entry(doc_id),
        }
    }

    /// A write of what a message says: it claims the record for the message's content, and
    /// matches no record that holds another message's content.
    fn from_message(msg: &ImageMessage, mut set: Document) -> Write {
        let (doc_id, digest) = (msg.doc_id(), content_digest(msg));
        set.insert(field::DIGEST, &digest);
        Write {
            record: Upsert { filter: by_doc_id_and_digest(&doc_id, &digest), update: stamped(set, field::UPDATED_AT) },
            change: change_entry(&doc_id),
        }
    }

    /// The `_id` of the record written.
    pub fn doc_id(&self) -> &str {
        self.record.filter.get_str(field::DOC_ID).unwrap_or_default()
    }

    /// The content digest the write claims the record for, if it is a write from a message.
    pub fn digest(&self) -> Option<&str> {
        self.record.update.get_document("$set").ok()?.get_str(field::DIGEST).ok()
    }
}

/// The content digest of a message: SHA-256, in lowercase hex, over its `ProducerID`, `ID`,
/// `GroundTruth`, `SentAt` and `Data`, in that order, each as text (`ID` and `SentAt` in
/// decimal, `SentAt` empty when absent, `Data` the base64 text as sent) preceded by its length in
/// bytes as an 8-byte big-endian integer. Two copies of one message have the same digest; two
/// messages that share an `_id` but differ in anything else do not.
pub fn content_digest(msg: &ImageMessage) -> String {
    let id = msg.id.to_string();
    let sent_at = msg.sent_at_ms.map(|ms| ms.to_string()).unwrap_or_default();
    let parts = [&msg.producer_id, &id, &msg.ground_truth, &sent_at, &msg.data];
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The change-log entry for a write to `doc_id` that is not made through [`Write`], such as a
/// hard delete.
pub fn change_entry(doc_id: &str) -> Upsert {
    Upsert {
        filter: doc! { field::DOC_ID: ObjectId::new() },
        update: stamped(doc! { field::CHANGED_RECORD: doc_id }, field::CHANGED_AT),
    }
}

/// A filter on one record.
pub fn by_doc_id(doc_id: &str) -> Document {
    doc! { field::DOC_ID: doc_id }
}

/// A filter on one record that holds the content with `digest`, or no digest yet (a new record,
/// or one written before digests). `$in` with `null` matches a missing field on MongoDB and on
/// FerretDB alike; an upsert that matches nothing tries to insert `_id` and fails with a
/// duplicate key when the record holds other content.
pub fn by_doc_id_and_digest(doc_id: &str, digest: &str) -> Document {
    doc! { field::DOC_ID: doc_id, field::DIGEST: { "$in": [digest, Bson::Null] } }
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

/// `$set` plus the server's clock in `clock_field`.
fn stamped(set: Document, clock_field: &str) -> Document {
    doc! { "$set": set, "$currentDate": { clock_field: true } }
}

/// Store (or restore after a redelivery) a record's metadata, as the db-consumer does.
pub fn store_metadata(msg: &ImageMessage, stored_at: bson::DateTime) -> Write {
    let mut set = identity(msg);
    if let Some(ms) = msg.sent_at_ms {
        set.insert(field::SENT_AT, bson::DateTime::from_millis(ms));
    }
    set.insert(field::STORED_AT, stored_at);
    Write::from_message(msg, set)
}

/// Record the model's label for a record, as the infer-consumer does.
pub fn store_inference(msg: &ImageMessage, inferred: &str, model_id: &str, inferred_at: bson::DateTime) -> Write {
    let mut set = identity(msg);
    set.insert(field::INFERRED, inferred);
    set.insert(field::MODEL_ID, model_id);
    set.insert(field::INFERRED_AT, inferred_at);
    Write::from_message(msg, set)
}

/// Change (or set) the inferred label of an existing record, e.g. after a re-inference.
pub fn set_inferred(doc_id: &str, inferred: &str) -> Write {
    Write::new(doc_id, doc! { field::INFERRED: inferred })
}

/// Delete a record: a tombstone, which keeps the record readable for audits.
pub fn mark_deleted(doc_id: &str) -> Write {
    Write::new(doc_id, doc! { field::DELETED: true })
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

    fn set_of(write: &Write) -> &Document {
        write.record.update.get_document("$set").unwrap()
    }

    #[test]
    fn both_consumers_write_the_same_identity_and_stamp_updated_at() {
        let now = bson::DateTime::from_millis(1);
        let meta = store_metadata(&message(), now);
        let inference = store_inference(&message(), "cat", "m", now);
        assert_eq!(meta.record.filter, inference.record.filter);
        let digest = content_digest(&message());
        assert_eq!(meta.record.filter, doc! { "_id": "cam-1/3", "Digest": { "$in": [&digest, Bson::Null] } });
        for (key, value) in identity(&message()) {
            assert_eq!(set_of(&meta).get(&key), Some(&value));
            assert_eq!(set_of(&inference).get(&key), Some(&value));
        }
        for write in [meta, inference] {
            assert_eq!(write.record.update.get_document("$currentDate").unwrap(), &doc! { "UpdatedAt": true });
        }
    }

    #[test]
    fn both_consumers_claim_the_record_for_the_same_content() {
        let now = bson::DateTime::from_millis(1);
        let digest = content_digest(&message());
        for write in [store_metadata(&message(), now), store_inference(&message(), "cat", "m", now)] {
            assert_eq!(write.digest(), Some(digest.as_str()));
            assert_eq!(set_of(&write).get_str(field::DIGEST), Ok(digest.as_str()));
        }
        // Writes that are not made from a message neither claim nor check the content.
        for write in [set_inferred("cam-1/3", "cat"), mark_deleted("cam-1/3")] {
            assert_eq!(write.digest(), None);
            assert_eq!(write.record.filter, doc! { "_id": "cam-1/3" });
        }
    }

    #[test]
    fn the_digest_is_the_documented_sha256_of_the_message() {
        // The example of docs/write-contract.md, whose Python recipe gives these values.
        let mut example = ImageMessage {
            id: 1042,
            producer_id: "cam-7".into(),
            ground_truth: "cat".into(),
            data: "aGk=".into(),
            sent_at_ms: Some(1_764_012_345_678),
        };
        assert_eq!(content_digest(&example), "3c56bdf142a4361627a5c83e95ab108240bbeff8ee7623fe004425f7490c2954");
        example.sent_at_ms = None;
        example.data = String::new();
        (example.id, example.producer_id, example.ground_truth) = (3, "cam-1".into(), "dog".into());
        assert_eq!(content_digest(&example), "14898e1a843fe5c9b4a3b50fed3f14aef913ef1614be47e5c3d330486d3d5469");
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let base = content_digest(&message());
        let changes: [fn(&mut ImageMessage); 5] = [
            |m| m.producer_id.push('x'),
            |m| m.id += 1,
            |m| m.ground_truth = "cat".into(),
            |m| m.sent_at_ms = Some(m.sent_at_ms.unwrap() + 1),
            |m| m.data = "aGk=".into(),
        ];
        for change in changes {
            let mut other = message();
            change(&mut other);
            assert_ne!(content_digest(&other), base, "{other:?}");
        }
        assert_eq!(content_digest(&message()), base, "a copy of the message has its digest");
    }

    #[test]
    fn field_boundaries_are_part_of_the_digest() {
        let mut a = message();
        let mut b = message();
        (a.producer_id, a.ground_truth) = ("cam-1".into(), "dog".into());
        (b.producer_id, b.ground_truth) = ("cam-1d".into(), "og".into());
        assert_ne!(content_digest(&a), content_digest(&b));
    }

    #[test]
    fn only_the_infer_consumer_writes_inferred() {
        let now = bson::DateTime::from_millis(1);
        assert!(!set_of(&store_metadata(&message(), now)).contains_key(field::INFERRED));
        assert_eq!(set_of(&store_inference(&message(), "cat", "m", now)).get_str(field::INFERRED), Ok("cat"));
    }

    #[test]
    fn every_write_logs_a_fresh_server_stamped_change_naming_its_record() {
        let writes = [set_inferred("cam-1/3", "cat"), mark_deleted("cam-1/3"), set_inferred("cam-1/3", "cat")];
        for write in &writes {
            assert_eq!(write.doc_id(), "cam-1/3");
            assert!(write.change.filter.get_object_id(field::DOC_ID).is_ok());
            assert_eq!(write.change.update.get_document("$set").unwrap(), &doc! { "Record": "cam-1/3" });
            assert_eq!(write.change.update.get_document("$currentDate").unwrap(), &doc! { "ChangedAt": true });
        }
        assert_ne!(writes[0].change.filter, writes[2].change.filter, "each write has its own entry");
        assert_eq!(change_log("inferences"), "inferences_changes");
    }
}
