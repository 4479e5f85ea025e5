//! `InferredAt` as the readers find it: a BSON date in MongoDB; in a file, the extended JSON
//! that mongoexport writes (`{"$date": "2026-…Z"}`, `{"$date": {"$numberLong": "…"}}` or
//! `{"$date": 1764…}`), an RFC 3339 string, or milliseconds since the epoch.
//!
//! Readers keep the value borrowed and unparsed: only the views that need time parse it, so the
//! plain count pays nothing for it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A record's `InferredAt`, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Stamp<'a> {
    /// No `InferredAt` (or `null`): a pending record, or one written before the field existed.
    #[default]
    Absent,
    /// Milliseconds since the epoch: a BSON date, or a number.
    Millis(i64),
    /// An RFC 3339 string, parsed only when asked.
    Text(Cow<'a, str>),
    /// Anything else (a boolean, an array, an object that is not `{"$date": …}`).
    Unreadable,
}

impl Stamp<'_> {
    /// Milliseconds since the epoch (UTC), or `None` when absent or unreadable.
    pub fn millis(&self) -> Option<i64> {
        match self {
            Stamp::Millis(ms) => Some(*ms),
            Stamp::Text(text) => bson::DateTime::parse_rfc3339_str(text.as_ref()).ok().map(|t| t.timestamp_millis()),
            Stamp::Absent | Stamp::Unreadable => None,
        }
    }

    /// Whether the record carries a time at all, readable or not.
    pub fn is_present(&self) -> bool {
        !matches!(self, Stamp::Absent)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Stamp<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StampVisitor)
    }
}

struct StampVisitor;

impl<'de> Visitor<'de> for StampVisitor {
    type Value = Stamp<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a date")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Millis(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Stamp<'de>, E> {
        Ok(i64::try_from(v).map_or(Stamp::Unreadable, Stamp::Millis))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Unreadable)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Unreadable)
    }
    fn visit_unit<E>(self) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Absent)
    }
    fn visit_none<E>(self) -> Result<Stamp<'de>, E> {
        Ok(Stamp::Absent)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stamp<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Stamp::Unreadable)
    }
    /// `{"$date": …}` holds the date; any other object is not one.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stamp<'de>, A::Error> {
        let mut stamp = Stamp::Unreadable;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "$date" => stamp = map.next_value::<Stamp<'de>>()?,
                // The canonical form's inner `{"$numberLong": "…"}`.
                "$numberLong" => {
                    let digits = map.next_value::<Cow<'de, str>>()?;
                    stamp = digits.parse().map_or(Stamp::Unreadable, Stamp::Millis);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    return drain(map);
                }
            }
        }
        Ok(stamp)
    }
}

fn drain<'de, A: MapAccess<'de>>(mut map: A) -> Result<Stamp<'de>, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(Stamp::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(json: &str) -> Option<i64> {
        serde_json::from_str::<Stamp>(json).unwrap().millis()
    }

    #[test]
    fn every_form_mongoexport_and_producers_write() {
        let noon = Some(1_764_504_000_000); // 2025-11-30T12:00:00Z
        assert_eq!(millis(r#""2025-11-30T12:00:00Z""#), noon);
        assert_eq!(millis(r#""2025-11-30T13:00:00+01:00""#), noon);
        assert_eq!(millis(r#"{"$date":"2025-11-30T12:00:00.000Z"}"#), noon);
        assert_eq!(millis(r#"{"$date":{"$numberLong":"1764504000000"}}"#), noon);
        assert_eq!(millis(r#"{"$date":1764504000000}"#), noon);
        assert_eq!(millis("1764504000000"), noon);
        assert_eq!(millis(r#""2025-11-30T12:00:00.123Z""#), noon.map(|ms| ms + 123));
    }

    #[test]
    fn absent_and_unreadable_dates_have_no_time() {
        assert_eq!(serde_json::from_str::<Stamp>("null").unwrap(), Stamp::Absent);
        for json in [
            r#""yesterday""#,
            "true",
            "1.5",
            "[1]",
            r#"{"when":1}"#,
            r#"{"$date":"noon"}"#,
            r#"{"$date":{"$numberLong":"x"}}"#,
        ] {
            let stamp = serde_json::from_str::<Stamp>(json).unwrap();
            assert!(stamp.is_present(), "{json}");
            assert_eq!(stamp.millis(), None, "{json}");
        }
    }
}
