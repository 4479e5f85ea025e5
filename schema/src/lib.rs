//! The one definition of an iot-dataflow record, shared by every crate.
//!
//! A record travels as an [`ImageMessage`] on Kafka topic [`TOPIC_IMAGES`] and lives as an
//! [`InferenceDoc`] in MongoDB (`iot.inferences`), keyed by [`doc_id`] so that a redelivered
//! message can never create a second document. The inference service's HTTP request and
//! response types are in [`infer`].

use serde::{Deserialize, Serialize};

pub mod exit;
pub mod infer;
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

/// Field names of the MongoDB document (and of the Kafka message where they overlap).
pub mod field {
    pub const DOC_ID: &str = "_id";
    pub const ID: &str = "ID";
    pub const PRODUCER_ID: &str = "ProducerID";
    pub const GROUND_TRUTH: &str = "GroundTruth";
    pub const DATA: &str = "Data";
    pub const SENT_AT: &str = "SentAt";
    pub const INFERRED: &str = "Inferred";
    pub const INFERRED_AT: &str = "InferredAt";
    pub const MODEL_ID: &str = "ModelId";
    pub const STORED_AT: &str = "StoredAt";
    /// Last write time, maintained by every writer (see `docs/write-contract.md`).
    pub const UPDATED_AT: &str = "UpdatedAt";
    /// The content digest of the message a record was first written from (see
    /// `iot_schema::write::content_digest` and `docs/write-contract.md`).
    pub const DIGEST: &str = "Digest";
    /// Set instead of deleting, so that pollers can see deletions (see `docs/write-contract.md`).
    pub const DELETED: &str = "Deleted";
    /// In a change-log entry: the `_id` of the record that was written.
    pub const CHANGED_RECORD: &str = "Record";
    /// In a change-log entry: when the write happened, by the server's clock.
    pub const CHANGED_AT: &str = "ChangedAt";
}

/// The MongoDB `_id` of a record: `<ProducerID>/<ID>`.
pub fn doc_id(producer_id: &str, id: i64) -> String {
    format!("{producer_id}/{id}")
}

/// A labelled image as a producer sends it to Kafka, compatible with the original pipeline:
/// `{"ID": 7, "ProducerID": "cam-1", "GroundTruth": "cat", "Data": "<base64 JPEG or PNG>"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageMessage {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "ProducerID")]
    pub producer_id: String,
    #[serde(rename = "GroundTruth")]
    pub ground_truth: String,
    /// Base64 of the encoded image (JPEG or PNG).
    #[serde(rename = "Data")]
    pub data: String,
    /// Milliseconds since the Unix epoch when the producer sent it; absent in the original
    /// pipeline's messages, so optional.
    #[serde(rename = "SentAt", default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
}

impl ImageMessage {
    pub fn doc_id(&self) -> String {
        doc_id(&self.producer_id, self.id)
    }
}

/// A record as stored in MongoDB, `iot.inferences`. Fields a writer has not set yet are `None`
/// and absent from the document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceDoc {
    #[serde(rename = "_id")]
    pub doc_id: String,
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "ProducerID")]
    pub producer_id: String,
    #[serde(rename = "GroundTruth")]
    pub ground_truth: String,
    /// The label the model gave; absent until the infer-consumer has written it.
    #[serde(rename = "Inferred", default, skip_serializing_if = "Option::is_none")]
    pub inferred: Option<String>,
    #[serde(rename = "ModelId", default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(rename = "SentAt", default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<bson::DateTime>,
    #[serde(rename = "StoredAt", default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<bson::DateTime>,
    #[serde(rename = "InferredAt", default, skip_serializing_if = "Option::is_none")]
    pub inferred_at: Option<bson::DateTime>,
    #[serde(rename = "UpdatedAt", default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<bson::DateTime>,
    /// The content digest of the message the record holds; absent in records written before it.
    #[serde(rename = "Digest", default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "Deleted", default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
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
}
