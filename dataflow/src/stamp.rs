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
            Stamp::Text(text) => utc_millis(text)
                .or_else(|| bson::DateTime::parse_rfc3339_str(text.as_ref()).ok().map(|t| t.timestamp_millis())),
            Stamp::Absent | Stamp::Unreadable => None,
        }
    }

    /// Whether the record carries a time at all, readable or not.
    pub fn is_present(&self) -> bool {
        !matches!(self, Stamp::Absent)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` from 1970 on, in ms, read without the general RFC 3339
/// parser: the form mongoexport and the producers write, read per record by every view that
/// needs time. `None` for any other form (an offset, a leap second, more than nine digits of
/// fraction, an earlier year), which the general parser then reads.
fn utc_millis(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let (date_time, rest) = bytes.split_at_checked(19)?;
    let fraction = match rest {
        [b'Z'] => &[][..],
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) && fraction.iter().all(u8::is_ascii_digit) => {
            fraction
        }
        _ => return None,
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, separator)| date_time[at] != separator) {
        return None;
    }
    let number = |from: usize, to: usize| digits(&date_time[from..to]);
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    // Milliseconds are the fraction's first three digits: later ones are truncated, as the
    // general parser's millisecond timestamp does from 1970 on.
    let mut millis = 0;
    for position in 0..3 {
        millis = millis * 10 + fraction.get(position).map_or(0, |digit| i64::from(digit - b'0'));
    }
    let seconds = days_from_epoch(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000 + millis)
}

/// The value of ASCII decimal digits; `None` if any is not one.
fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0, |value, byte| byte.is_ascii_digit().then(|| value * 10 + i64::from(byte - b'0')))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`, for years from 1970 on).
fn days_from_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    /// The `...Z` fast path and the general parser agree on every form, valid or not.
    #[test]
    fn utc_dates_read_as_the_general_parser_reads_them() {
        let general = |text: &str| bson::DateTime::parse_rfc3339_str(text).ok().map(|t| t.timestamp_millis());
        let mut texts = vec![
            "1970-01-01T00:00:00Z".to_owned(),
            "1969-12-31T23:59:59.999Z".to_owned(),
            "2024-02-29T12:00:00Z".to_owned(),
            "2023-02-29T12:00:00Z".to_owned(),
            "2100-02-29T00:00:00Z".to_owned(),
            "2000-02-29T23:59:59.5Z".to_owned(),
            "2026-04-31T00:00:00Z".to_owned(),
            "2026-11-30T24:00:00Z".to_owned(),
            "2026-11-30T23:60:00Z".to_owned(),
            "2026-12-31T23:59:60Z".to_owned(),
            "2026-11-30T12:00:00.123456789Z".to_owned(),
            "2026-11-30T12:00:00.1234567891Z".to_owned(),
            "2026-11-30T12:00:00.Z".to_owned(),
            "2026-11-30T12:00:00.12aZ".to_owned(),
            "2026-11-30t12:00:00z".to_owned(),
            "2026-11-30 12:00:00Z".to_owned(),
            "2026-11-30T12:00:00+00:00".to_owned(),
            "2026-1-30T12:00:00Z".to_owned(),
            "+026-11-30T12:00:00Z".to_owned(),
            "9999-12-31T23:59:59.999Z".to_owned(),
            "2026-11-30T12:00:00".to_owned(),
            "2026-11-30T12:00:00ZZ".to_owned(),
        ];
        // Every day of four years (a leap year, a century) at a time that moves through the day.
        let mut day = bson::DateTime::parse_rfc3339_str("1999-12-30T00:00:00Z").unwrap().timestamp_millis();
        for step in 0..4 * 366 {
            day += 86_400_000 + 3_723_017 * (step % 3);
            texts.push(bson::DateTime::from_millis(day).try_to_rfc3339_string().unwrap());
        }
        for text in &texts {
            let fast = utc_millis(text);
            assert!(fast.is_none() || fast == general(text), "{text}: {fast:?} vs {:?}", general(text));
            assert_eq!(Stamp::Text(text.as_str().into()).millis(), general(text), "{text}");
        }
        assert_eq!(utc_millis("2026-11-30T12:00:00.123456789Z"), general("2026-11-30T12:00:00.123Z"));
        assert!(texts.iter().filter(|text| utc_millis(text).is_some()).count() > 4 * 366);
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
