//! The record's field names, written once.
//!
//! [`wire_name!`] is the table from a field's Rust name to its name on the wire (Kafka message,
//! MongoDB document, JSON export, CSV logs). [`record_struct!`] declares a struct whose fields
//! take their serde names from that table, so a reader that wants its own view of a record (a
//! borrowed projection, a CSV row) never spells a wire name itself. serde's `rename` takes only
//! a string literal, so the table hands the name back to the struct macro as one.

/// The wire name of a record field, as a string literal: `wire_name!(producer_id)` is
/// `"ProducerID"`. An unknown field name does not compile.
///
/// With a continuation (`wire_name!(field, record_struct ...)`) it calls `record_struct!` back
/// with the literal; fields not in the table come back unnamed and keep their Rust name.
#[macro_export]
macro_rules! wire_name {
    (doc_id $($then:tt)*) => { $crate::__named! { "_id" $($then)* } };
    (id $($then:tt)*) => { $crate::__named! { "ID" $($then)* } };
    (producer_id $($then:tt)*) => { $crate::__named! { "ProducerID" $($then)* } };
    (ground_truth $($then:tt)*) => { $crate::__named! { "GroundTruth" $($then)* } };
    (data $($then:tt)*) => { $crate::__named! { "Data" $($then)* } };
    // Producers and logs carry times as milliseconds since the epoch, documents as BSON dates.
    (sent_at $($then:tt)*) => { $crate::__named! { "SentAt" $($then)* } };
    (sent_at_ms $($then:tt)*) => { $crate::wire_name! { sent_at $($then)* } };
    (inferred $($then:tt)*) => { $crate::__named! { "Inferred" $($then)* } };
    (inferred_at $($then:tt)*) => { $crate::__named! { "InferredAt" $($then)* } };
    (inferred_at_ms $($then:tt)*) => { $crate::wire_name! { inferred_at $($then)* } };
    (model_id $($then:tt)*) => { $crate::__named! { "ModelId" $($then)* } };
    (stored_at $($then:tt)*) => { $crate::__named! { "StoredAt" $($then)* } };
    (updated_at $($then:tt)*) => { $crate::__named! { "UpdatedAt" $($then)* } };
    (digest $($then:tt)*) => { $crate::__named! { "Digest" $($then)* } };
    (deleted $($then:tt)*) => { $crate::__named! { "Deleted" $($then)* } };
    // Not a record field (e.g. a log's own column): the struct keeps the Rust name.
    ($other:ident, record_struct $($state:tt)*) => { $crate::record_struct! { @unnamed $($state)* } };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __named {
    ($wire:literal) => { $wire };
    ($wire:literal, record_struct $($state:tt)*) => { $crate::record_struct! { @named $wire $($state)* } };
}

/// Declares a struct whose fields are record fields named by [`wire_name!`]: write the struct
/// as usual (attributes, derives, a lifetime), without `rename`. For example
///
/// ```
/// iot_schema::record_struct! {
///     #[derive(serde::Deserialize)]
///     pub struct Labels<'a> {
///         pub producer_id: &'a str,
///         #[serde(default)]
///         pub inferred: Option<&'a str>,
///     }
/// }
/// let labels: Labels = serde_json::from_str(r#"{"ProducerID":"p","Inferred":"cat","ID":1}"#).unwrap();
/// assert_eq!((labels.producer_id, labels.inferred), ("p", Some("cat")));
/// ```
#[macro_export]
macro_rules! record_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident $(<$lifetime:lifetime>)? { $($fields:tt)* }) => {
        $crate::record_struct!(@next [$(#[$meta])* $vis struct $name $(<$lifetime>)?] [] $($fields)*);
    };
    // Every field named: emit the struct.
    (@next [$($head:tt)*] [$($done:tt)*]) => {
        $($head)* { $($done)* }
    };
    // Look the next field's wire name up; the table calls back with `@named` or `@unnamed`.
    (@next $head:tt $done:tt $(#[$attr:meta])* $vis:vis $field:ident : $ty:ty $(, $($rest:tt)*)?) => {
        $crate::wire_name!($field, record_struct $head $done [$(#[$attr])* $vis $field: $ty] [$($($rest)*)?]);
    };
    (@named $wire:literal $head:tt [$($done:tt)*] [$($field:tt)*] [$($rest:tt)*]) => {
        $crate::record_struct!(@next $head [$($done)* #[serde(rename = $wire)] $($field)*,] $($rest)*);
    };
    (@unnamed $head:tt [$($done:tt)*] [$($field:tt)*] [$($rest:tt)*]) => {
        $crate::record_struct!(@next $head [$($done)* $($field)*,] $($rest)*);
    };
}

#[cfg(test)]
mod tests {
    crate::record_struct! {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Row<'a> {
            producer_id: &'a str,
            /// Milliseconds: the same wire name as `sent_at`.
            sent_at_ms: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            inferred: Option<&'a str>,
            latency_ms: i64,
        }
    }

    #[test]
    fn fields_take_their_wire_names_and_others_keep_theirs() {
        let row = Row { producer_id: "p", sent_at_ms: 5, inferred: None, latency_ms: 7 };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, r#"{"ProducerID":"p","SentAt":5,"latency_ms":7}"#);
        let back: Row =
            serde_json::from_str(r#"{"ProducerID":"q","SentAt":1,"Inferred":"cat","latency_ms":2}"#).unwrap();
        assert_eq!((back.producer_id, back.sent_at_ms, back.inferred, back.latency_ms), ("q", 1, Some("cat"), 2));
    }

    #[test]
    fn the_field_constants_come_from_the_same_table() {
        assert_eq!(crate::field::SENT_AT, crate::wire_name!(sent_at_ms));
        assert_eq!(crate::field::INFERRED_AT, crate::wire_name!(inferred_at_ms));
        assert_eq!(crate::field::DOC_ID, "_id");
    }
}
