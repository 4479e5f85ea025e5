//! The one definition of an iot-dataflow record, shared by every crate.
//!
//! A record travels as an [`ImageMessage`] on Kafka topic [`TOPIC_IMAGES`] and lives as an
//! [`InferenceDoc`] in MongoDB (`iot.inferences`), keyed by [`doc_id`] so that a redelivered
//! message can never create a second document. The inference service's HTTP request and
//! response types are in [`infer`]. The field names are written once, in [`record`]; a crate that
//! needs its own view of a record (a borrowed projection, a CSV row) declares it with
//! [`record_struct!`] and so never spells a wire name itself.

use serde::{Deserialize, Serialize};

pub mod alert;
pub mod exit;
pub mod infer;
pub mod monitor;
pub mod record;
pub mod redact;
pub mod write;

/// Default MongoDB database.
pub const DEFAULT_DB: &str = "iot";
/// Default MongoDB collection.
pub const DEFAULT_COLLECTION: &str = "inferences";
/// Kafka topic the producers write to.
pub const TOPIC_IMAGES: &str = "iot_images";
/// Kafka topic that receives messages the consumers could not handle, with the reason.
pub const TOPIC_DEAD_LETTERS: &str = "iot_images.dlq";

/// Field names of the MongoDB document (and of the Kafka message where they overlap), for
/// queries and raw documents; structs take theirs from the same table through [`record_struct!`].
pub mod field {
    pub const DOC_ID: &str = crate::wire_name!(doc_id);
    pub const ID: &str = crate::wire_name!(id);
    pub const PRODUCER_ID: &str = crate::wire_name!(producer_id);
    pub const GROUND_TRUTH: &str = crate::wire_name!(ground_truth);
    pub const DATA: &str = crate::wire_name!(data);
    pub const SENT_AT: &str = crate::wire_name!(sent_at);
    pub const INFERRED: &str = crate::wire_name!(inferred);
    pub const INFERRED_AT: &str = crate::wire_name!(inferred_at);
    pub const MODEL_ID: &str = crate::wire_name!(model_id);
    pub const STORED_AT: &str = crate::wire_name!(stored_at);
    /// Last write time, maintained by every writer (see `docs/write-contract.md`).
    pub const UPDATED_AT: &str = crate::wire_name!(updated_at);
    /// The content digest of the message a record was first written from (see
    /// `iot_schema::write::content_digest` and `docs/write-contract.md`).
    pub const DIGEST: &str = crate::wire_name!(digest);
    /// Set instead of deleting, so that pollers can see deletions (see `docs/write-contract.md`).
    pub const DELETED: &str = crate::wire_name!(deleted);
    /// In a change-log entry: the `_id` of the record that was written.
    pub const CHANGED_RECORD: &str = "Record";
    /// In a change-log entry: when the write happened, by the server's clock.
    pub const CHANGED_AT: &str = "ChangedAt";
}

/// The MongoDB `_id` of a record: `<ProducerID>/<ID>`.
pub fn doc_id(producer_id: &str, id: i64) -> String {
    format!("{producer_id}/{id}")
}

record_struct! {
    /// A labelled image as a producer sends it to Kafka, compatible with the original pipeline:
    /// `{"ID": 7, "ProducerID": "cam-1", "GroundTruth": "cat", "Data": "<base64 JPEG or PNG>"}`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ImageMessage {
        pub id: i64,
        pub producer_id: String,
        pub ground_truth: String,
        /// Base64 of the encoded image (JPEG or PNG).
        pub data: String,
        /// Milliseconds since the Unix epoch when the producer sent it; absent in the original
        /// pipeline's messages, so optional.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sent_at_ms: Option<i64>,
    }
}

impl ImageMessage {
    pub fn doc_id(&self) -> String {
        doc_id(&self.producer_id, self.id)
    }
}

record_struct! {
    /// A record as stored in MongoDB, `iot.inferences`. Fields a writer has not set yet are `None`
    /// and absent from the document.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct InferenceDoc {
        pub doc_id: String,
        pub id: i64,
        pub producer_id: String,
        pub ground_truth: String,
        /// The label the model gave; absent until the infer-consumer has written it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inferred: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sent_at: Option<bson::DateTime>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stored_at: Option<bson::DateTime>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inferred_at: Option<bson::DateTime>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub updated_at: Option<bson::DateTime>,
        /// The content digest of the message the record holds; absent in records written before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub digest: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub deleted: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_in_the_original_wire_format() {
        let wire = r#"{"ID":7,"ProducerID":"cam,1","GroundTruth":"cat","Data":"aGk="}"#;
        let msg: ImageMessage = serde_json::from_str(wire).unwrap();
        assert_eq!(msg.doc_id(), "cam,1/7");
        assert_eq!(msg.sent_at_ms, None);
        assert_eq!(serde_json::to_string(&msg).unwrap(), wire);
    }

    #[test]
    fn message_without_a_field_is_rejected() {
        let err = serde_json::from_str::<ImageMessage>(r#"{"ID":7,"ProducerID":"p","Data":""}"#).unwrap_err();
        assert!(err.to_string().contains("GroundTruth"), "{err}");
    }

    #[test]
    fn document_omits_fields_not_yet_written() {
        let doc = InferenceDoc {
            doc_id: doc_id("p", 1),
            id: 1,
            producer_id: "p".into(),
            ground_truth: "cat".into(),
            inferred: None,
            model_id: None,
            sent_at: None,
            stored_at: None,
            inferred_at: None,
            updated_at: None,
            digest: None,
            deleted: false,
        };
        let bson = bson::to_document(&doc).unwrap();
        let keys: Vec<_> = bson.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "ID", "ProducerID", "GroundTruth"]);
    }

    #[test]
    fn every_stored_field_has_its_wire_name() {
        let at = Some(bson::DateTime::from_millis(1));
        let doc = InferenceDoc {
            doc_id: doc_id("p", 1),
            id: 1,
            producer_id: "p".into(),
            ground_truth: "cat".into(),
            inferred: Some("dog".into()),
            model_id: Some("m".into()),
            sent_at: at,
            stored_at: at,
            inferred_at: at,
            updated_at: at,
            digest: Some("d".into()),
            deleted: true,
        };
        let bson = bson::to_document(&doc).unwrap();
        let keys: Vec<_> = bson.keys().map(String::as_str).collect();
        use field::*;
        let expected = [DOC_ID, ID, PRODUCER_ID, GROUND_TRUTH, INFERRED, MODEL_ID, SENT_AT, STORED_AT, INFERRED_AT];
        assert_eq!(keys[..9], expected);
        assert_eq!(keys[9..], [UPDATED_AT, DIGEST, DELETED]);
        assert_eq!(
            [ID, PRODUCER_ID, GROUND_TRUTH, INFERRED, SENT_AT, UPDATED_AT, DELETED],
            ["ID", "ProducerID", "GroundTruth", "Inferred", "SentAt", "UpdatedAt", "Deleted"]
        );
    }
}
