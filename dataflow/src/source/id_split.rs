//! Split points between two string ids, for servers that read `_id` ranges through an index but
//! cannot sample (FerretDB v1 with scripts/ferretdb/id-range-pushdown.patch): the cuts are spread
//! evenly over the strings between the smallest and the largest id, read as numbers whose digits
//! are the characters after their common prefix, each position counting only the characters
//! between the two ids' characters there (so `producer-000` to `producer-099` counts in tens).
//! Any cuts give a correct split; even ones give balanced shares when ids spread evenly over
//! that range, as `producer/sequence` ids of producers that send alike do.

/// Characters after the common prefix that place a cut.
pub const DIGITS: usize = 6;

/// The position of `c` among all characters (surrogates skipped), in the order of UTF-8 bytes.
pub fn char_index(c: char) -> u32 {
    let code = c as u32;
    if code < 0xD800 {
        code
    } else {
        code - 0x800
    }
}

/// The character at `index` among all characters; indexes past the last give the last.
pub fn char_at(index: u32) -> char {
    let code = if index < 0xD800 { index } else { index + 0x800 };
    char::from_u32(code).unwrap_or(char::MAX)
}

/// The length in characters of the prefix that `a` and `b` share.
pub fn common_prefix_chars(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// `shares - 1` or fewer increasing cuts evenly spread over `[first, last]`.
pub fn even_cuts(first: &str, last: &str, shares: usize) -> Vec<String> {
    let skip = common_prefix_chars(first, last);
    let prefix: String = first.chars().take(skip).collect();
    let (low_chars, high_chars) = (digit_chars(first, skip), digit_chars(last, skip));
    let places: Vec<Place> =
        low_chars.iter().zip(&high_chars).map(|(&low, &high)| Place::spanning(low, high)).collect();
    let (low, high) = (number(&places, &low_chars), number(&places, &high_chars));
    let (span, shares_n) = (high.saturating_sub(low), shares as u128);
    let mut cuts: Vec<String> = (1..shares_n)
        .map(|i| low + span / shares_n * i + span % shares_n * i / shares_n)
        .map(|n| format!("{prefix}{}", text(&places, n)))
        .collect();
    cuts.sort();
    cuts.dedup();
    cuts
}

/// One digit position: the characters it counts, `lowest..=lowest + size - 1`, or none at all
/// past the end of both ids.
#[derive(Clone, Copy)]
struct Place {
    lowest: u32,
    size: u128,
    past_both: bool,
}

impl Place {
    /// The characters between the first and the last id's characters here. An absent character
    /// (a shorter id) counts as the smallest; NUL is never a digit, servers may cut a value there.
    fn spanning(low: Option<u32>, high: Option<u32>) -> Place {
        let (lowest, highest) = match (low, high) {
            (Some(a), Some(b)) => (a.min(b), a.max(b)),
            (None, Some(b)) => (1.min(b), b),
            (Some(a), None) => (a, a),
            (None, None) => (1, 1),
        };
        let lowest = lowest.max(1);
        Place { lowest, size: (highest.max(lowest) - lowest) as u128 + 1, past_both: low.is_none() && high.is_none() }
    }

    fn digit(&self, c: Option<u32>) -> u128 {
        c.map_or(0, |c| (c.saturating_sub(self.lowest) as u128).min(self.size - 1))
    }
}

/// The characters at the digit positions: `DIGITS` after the first `skip`, `None` past the end.
fn digit_chars(id: &str, skip: usize) -> Vec<Option<u32>> {
    let mut chars = id.chars().skip(skip);
    (0..DIGITS).map(|_| chars.next().map(char_index)).collect()
}

/// The digit characters as a mixed-radix number (at most `DIGITS` places of 21 bits: fits).
fn number(places: &[Place], chars: &[Option<u32>]) -> u128 {
    places.iter().zip(chars).fold(0, |n, (place, &c)| n * place.size + place.digit(c))
}

/// The characters of a mixed-radix number.
fn text(places: &[Place], mut n: u128) -> String {
    let mut chars = vec![None; places.len()];
    for (slot, place) in chars.iter_mut().zip(places).rev() {
        *slot = (!place.past_both).then(|| char_at(place.lowest + (n % place.size) as u32));
        n /= place.size;
    }
    chars.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_indexes_skip_the_surrogates_and_keep_the_order() {
        for c in ['\0', 'a', '\u{D7FF}', '\u{E000}', '\u{FFFF}', char::MAX] {
            assert_eq!(char_at(char_index(c)), c);
        }
        assert_eq!(char_index('\u{E000}'), char_index('\u{D7FF}') + 1);
        assert_eq!(char_index(char::MAX), 0x11_0000 - 0x800 - 1);
    }

    #[test]
    fn producer_ids_are_cut_between_producers_in_equal_numbers() {
        let cuts = even_cuts("producer-000/0", "producer-099/9999", 2);
        assert_eq!(cuts.len(), 1);
        assert!(cuts[0].as_str() > "producer-049" && cuts[0].as_str() < "producer-050", "{:?}", cuts[0]);
        let cuts = even_cuts("producer-000/0", "producer-099/9999", 4);
        assert!(cuts[0].as_str() > "producer-024" && cuts[0].as_str() < "producer-025", "{:?}", cuts[0]);
        assert!(cuts[2].as_str() > "producer-074" && cuts[2].as_str() < "producer-075", "{:?}", cuts[2]);
        assert!(cuts.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn cuts_lie_between_the_ends_and_increase_for_any_text() {
        let ends = [("", "z"), ("a", "a\u{1}"), ("a\"b", "a\\"), ("é", "😀x"), ("\u{D7FF}", "\u{E000}"), ("x", "x")];
        for (first, last) in ends {
            for shares in [2, 3, 7] {
                let cuts = even_cuts(first, last, shares);
                assert!(cuts.len() < shares);
                assert!(cuts.windows(2).all(|pair| pair[0] < pair[1]), "{first:?}..{last:?}: {cuts:?}");
                for cut in &cuts {
                    assert!(!cut.contains('\0'));
                    // Ends that differ only below U+0002 may put a cut past `last`: an empty share.
                    if !last.contains('\u{1}') {
                        assert!(first <= cut.as_str() && cut.as_str() <= last, "{first:?}..{last:?}: {cut:?}");
                    }
                }
            }
        }
    }
}
