//! One JSON record as the file source reads it, tolerant of anything a field may hold so that a
//! bad record is reported by its id instead of failing the whole load.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::load::Reading;
use crate::stamp::Stamp;

/// Any JSON value, keeping only what the counter needs.
#[derive(Debug, PartialEq)]
pub enum Value<'a> {
    Text(Cow<'a, str>),
    Integer(i64),
    Bool(bool),
    Null,
    /// A float, an array or an object: never a valid value for the fields we read.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
                Ok(Value::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'de>, E> {
                Ok(i64::try_from(v).map_or(Value::Other, Value::Integer))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
                Ok(Value::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<Value<'de>, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value<'de>, E> {
                Ok(Value::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Value::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Value::Other)
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

iot_schema::record_struct! {
    /// The fields of a stored record that the counter reads; every other field is skipped unparsed.
    #[derive(Debug, Deserialize)]
    pub struct JsonRecord<'a> {
        #[serde(borrow, default)]
        pub doc_id: Option<Value<'a>>,
        #[serde(borrow, default)]
        pub id: Option<Value<'a>>,
        #[serde(borrow, default)]
        pub producer_id: Option<Value<'a>>,
        #[serde(borrow, default)]
        pub ground_truth: Option<Value<'a>>,
        #[serde(borrow, default)]
        pub inferred: Option<Value<'a>>,
        #[serde(borrow, default)]
        pub inferred_at: Stamp<'a>,
        #[serde(borrow, default)]
        pub deleted: Option<Value<'a>>,
    }
}

fn text<'v>(value: &'v Option<Value<'_>>) -> Option<&'v str> {
    match value {
        Some(Value::Text(text)) => Some(text),
        _ => None,
    }
}

impl JsonRecord<'_> {
    /// A name for the record in reports: its `_id`, else `ProducerID/ID`, else `fallback`.
    pub fn name(&self, fallback: impl FnOnce() -> String) -> String {
        if let Some(doc_id) = text(&self.doc_id) {
            return doc_id.to_owned();
        }
        match (text(&self.producer_id), &self.id) {
            (Some(producer), Some(Value::Integer(id))) => iot_schema::doc_id(producer, *id),
            _ => fallback(),
        }
    }

    /// What the record says: counted, a tombstone, or why it cannot be counted.
    pub fn reading(&self) -> Reading<'_> {
        if matches!(self.deleted, Some(Value::Bool(true))) {
            return Reading::Tombstone;
        }
        let inferred = match &self.inferred {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(label)) => Ok(Some(&**label)),
            Some(_) => Err("Inferred is not a string"),
        };
        match (text(&self.producer_id), text(&self.ground_truth), inferred) {
            (None, _, _) => Reading::Malformed(missing_or_mistyped(&self.producer_id, "ProducerID").into()),
            (_, None, _) => Reading::Malformed(missing_or_mistyped(&self.ground_truth, "GroundTruth").into()),
            (_, _, Err(reason)) => Reading::Malformed(reason.into()),
            (Some(producer_id), Some(ground_truth), Ok(inferred)) => {
                Reading::Counted { producer_id, ground_truth, inferred, inferred_at: self.inferred_at.clone() }
            }
        }
    }
}

fn missing_or_mistyped(value: &Option<Value<'_>>, field: &'static str) -> &'static str {
    match (value, field) {
        (None | Some(Value::Null), "ProducerID") => "ProducerID is missing",
        (_, "ProducerID") => "ProducerID is not a string",
        (None | Some(Value::Null), _) => "GroundTruth is missing",
        _ => "GroundTruth is not a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::load::Loader;
    use crate::stats::LoadStats;

    fn count(line: &str) -> (Vec<(crate::record::Observation, isize)>, LoadStats) {
        let mut loader = Loader::default();
        let record: JsonRecord = serde_json::from_str(line).unwrap();
        loader.load(record.reading(), || record.name(|| "line 1".into()));
        loader.take()
    }

    #[test]
    fn reads_the_three_fields_and_ignores_the_rest() {
        let (obs, stats) = count(
            r#"{"_id":{"$oid":"x"},"ID":1,"ProducerID":"p\"1","GroundTruth":"cat","Data":[1,2],"Inferred":"dog"}"#,
        );
        assert_eq!(obs, vec![(crate::record::Observation::new("p\"1", "cat", Some("dog")), 1)]);
        assert_eq!(stats.records, 1);
        assert_eq!(stats.skipped, 0);
    }

    #[test]
    fn null_or_absent_inferred_is_pending() {
        for line in
            [r#"{"ProducerID":"p","GroundTruth":"cat","Inferred":null}"#, r#"{"ProducerID":"p","GroundTruth":"cat"}"#]
        {
            let (obs, _) = count(line);
            assert_eq!(obs, vec![(crate::record::Observation::new("p", "cat", None), 1)]);
        }
    }

    #[test]
    fn bad_records_are_skipped_with_their_id_and_reason() {
        let cases = [
            (r#"{"_id":"p/1","GroundTruth":"cat"}"#, "p/1: ProducerID is missing"),
            (r#"{"ID":2,"ProducerID":"p","GroundTruth":5}"#, "p/2: GroundTruth is not a string"),
            (r#"{"ProducerID":7,"GroundTruth":"cat"}"#, "line 1: ProducerID is not a string"),
            (r#"{"ProducerID":"p","GroundTruth":"cat","Inferred":3.5}"#, "line 1: Inferred is not a string"),
        ];
        for (line, expected) in cases {
            let (obs, stats) = count(line);
            assert!(obs.is_empty(), "{line}");
            assert_eq!(stats.skipped, 1);
            assert_eq!(stats.skipped_examples, vec![expected.to_owned()]);
        }
    }

    #[test]
    fn tombstones_are_not_counted() {
        let (obs, stats) = count(r#"{"ProducerID":"p","GroundTruth":"cat","Deleted":true}"#);
        assert!(obs.is_empty());
        assert_eq!((stats.records, stats.deleted, stats.skipped), (1, 1, 0));
    }
}
