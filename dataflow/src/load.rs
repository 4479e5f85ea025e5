//! The one step every source takes per record. A source turns each record into a [`Reading`]
//! (count it, a tombstone, or malformed and why); the [`Loader`] counts it or leaves it out and
//! keeps the [`LoadStats`], so that the batch job and `--follow` report records alike whatever
//! they came from.

use std::borrow::Cow;

use crate::consolidate::Consolidator;
use crate::record::Observation;
use crate::stats::LoadStats;

/// What one record says, borrowed from where it was read.
#[derive(Debug, PartialEq)]
pub enum Reading<'a> {
    /// A record to count.
    Counted { producer_id: &'a str, ground_truth: &'a str, inferred: Option<&'a str> },
    /// `Deleted: true`: the record is kept (so pollers see the deletion) but not counted.
    Tombstone,
    /// A missing or mistyped field: not counted, reported with the reason.
    Malformed(Cow<'static, str>),
}

impl Reading<'_> {
    /// The observation to count, for a counted record.
    pub fn observation(&self) -> Option<Observation> {
        match self {
            Reading::Counted { producer_id, ground_truth, inferred } => {
                Some(Observation::new(producer_id, ground_truth, *inferred))
            }
            Reading::Tombstone | Reading::Malformed(_) => None,
        }
    }
}

impl LoadStats {
    /// Accounts for one record read. `name` names it in the report, and is only called when the
    /// record is malformed: building names for the millions of good records would cost more
    /// than reading them.
    #[inline]
    pub fn account(&mut self, reading: &Reading<'_>, name: impl FnOnce() -> String) {
        self.records += 1;
        match reading {
            Reading::Counted { .. } => {}
            Reading::Tombstone => self.deleted += 1,
            Reading::Malformed(reason) => self.skip(name, reason),
        }
    }
}

/// Turns readings into consolidated observations and load statistics.
#[derive(Default)]
pub struct Loader {
    pub counts: Consolidator,
    pub stats: LoadStats,
}

impl Loader {
    /// Counts one record, or leaves it out and says why; see [`LoadStats::account`] for `name`.
    #[inline]
    pub fn load(&mut self, reading: Reading<'_>, name: impl FnOnce() -> String) {
        self.stats.account(&reading, name);
        if let Reading::Counted { producer_id, ground_truth, inferred } = reading {
            self.counts.add(producer_id, ground_truth, inferred, 1);
        }
    }

    /// The consolidated observations and the statistics, leaving the loader empty.
    pub fn take(&mut self) -> (Vec<(Observation, isize)>, LoadStats) {
        (self.counts.drain(), std::mem::take(&mut self.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reading_is_counted_left_out_or_reported() {
        let mut loader = Loader::default();
        let named = |name: &'static str| move || name.to_owned();
        let counted = Reading::Counted { producer_id: "p", ground_truth: "cat", inferred: Some("dog") };
        loader.load(counted, || unreachable!("only malformed records are named"));
        loader.load(Reading::Tombstone, named("p/2"));
        loader.load(Reading::Malformed("GroundTruth is missing".into()), named("p/3"));
        let (observations, stats) = loader.take();
        assert_eq!(observations, [(Observation::new("p", "cat", Some("dog")), 1)]);
        assert_eq!((stats.records, stats.deleted, stats.skipped), (3, 1, 1));
        assert_eq!(stats.skipped_examples, ["p/3: GroundTruth is missing"]);
        assert_eq!(loader.take().1, LoadStats::default());
    }
}
