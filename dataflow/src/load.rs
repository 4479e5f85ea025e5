//! The one step every source takes per record. A source turns each record into a [`Reading`]
//! (count it, a tombstone, or malformed and why); the [`Loader`] counts it or leaves it out and
//! keeps the [`LoadStats`], so that the batch job and `--follow` report records alike whatever
//! they came from.

use std::borrow::Cow;

use crate::consolidate::Consolidator;
use crate::record::{Observation, Windowing};
use crate::stamp::Stamp;
use crate::stats::LoadStats;
use crate::views::ViewOptions;

/// What one record says, borrowed from where it was read.
#[derive(Debug, PartialEq)]
pub enum Reading<'a> {
    /// A record to count.
    Counted { producer_id: &'a str, ground_truth: &'a str, inferred: Option<&'a str>, inferred_at: Stamp<'a> },
    /// `Deleted: true`: the record is kept (so pollers see the deletion) but not counted.
    Tombstone,
    /// A missing or mistyped field: not counted, reported with the reason.
    Malformed(Cow<'static, str>),
}

impl<'a> Reading<'a> {
    /// A record to count, inferred or not, whose time nobody needs.
    pub fn counted(producer_id: &'a str, ground_truth: &'a str, inferred: Option<&'a str>) -> Self {
        Reading::Counted { producer_id, ground_truth, inferred, inferred_at: Stamp::Absent }
    }

    /// The observation to count, for a counted record; in its window when `windowing` is given
    /// and the record is inferred at a readable time.
    pub fn observation(&self, windowing: Option<Windowing>) -> Option<Observation> {
        match self {
            Reading::Counted { producer_id, ground_truth, inferred, inferred_at } => {
                let observation = Observation::new(producer_id, ground_truth, *inferred);
                Some(match window_of(windowing, *inferred, inferred_at) {
                    Some(window) => observation.in_window(window),
                    None => observation,
                })
            }
            Reading::Tombstone | Reading::Malformed(_) => None,
        }
    }
}

/// The window of an inferred record at a readable time.
fn window_of(windowing: Option<Windowing>, inferred: Option<&str>, inferred_at: &Stamp<'_>) -> Option<i64> {
    inferred?;
    Some(windowing?.start_of(inferred_at.millis()?))
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
    /// When some view needs time: the windows that inferred records fall into.
    pub windowing: Option<Windowing>,
}

impl Loader {
    pub fn new(windowing: Option<Windowing>) -> Self {
        Loader { windowing, ..Loader::default() }
    }

    /// A loader that sums only what the count and the `views`, if any, read of the records: all
    /// the batch job needs. See [`Consolidator::for_views`].
    pub fn for_views(views: Option<&ViewOptions>) -> Self {
        Loader {
            counts: Consolidator::for_views(views.map(|options| options.reference.clone())),
            windowing: views.map(|options| options.windowing),
            ..Loader::default()
        }
    }

    /// Counts one record, or leaves it out and says why; see [`LoadStats::account`] for `name`.
    #[inline]
    pub fn load(&mut self, reading: Reading<'_>, name: impl FnOnce() -> String) {
        self.stats.account(&reading, name);
        if let Reading::Counted { producer_id, ground_truth, inferred, inferred_at } = reading {
            let window = self.window(inferred, &inferred_at);
            self.counts.add(producer_id, ground_truth, inferred, window);
        }
    }

    /// The window of an inferred record, when windows are asked for; a record whose time
    /// cannot be read is still counted, in no window, and the statistics say how many.
    fn window(&mut self, inferred: Option<&str>, inferred_at: &Stamp<'_>) -> Option<i64> {
        let window = window_of(self.windowing, inferred, inferred_at);
        self.stats.untimed += u64::from(self.windowing.is_some() && inferred.is_some() && window.is_none());
        window
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
        let counted = Reading::counted("p", "cat", Some("dog"));
        loader.load(counted, || unreachable!("only malformed records are named"));
        loader.load(Reading::Tombstone, named("p/2"));
        loader.load(Reading::Malformed("GroundTruth is missing".into()), named("p/3"));
        let (observations, stats) = loader.take();
        assert_eq!(observations, [(Observation::new("p", "cat", Some("dog")), 1)]);
        assert_eq!((stats.records, stats.deleted, stats.skipped), (3, 1, 1));
        assert_eq!(stats.skipped_examples, ["p/3: GroundTruth is missing"]);
        assert_eq!(loader.take().1, LoadStats::default());
    }

    #[test]
    fn with_windows_inferred_records_fall_into_the_window_of_their_time() {
        let mut loader = Loader::new(Some(Windowing { width_ms: 3_600_000 }));
        let at = |ms: i64| Stamp::Millis(ms);
        let timed = |label, stamp| Reading::Counted {
            producer_id: "p",
            ground_truth: "cat",
            inferred: label,
            inferred_at: stamp,
        };
        loader.load(timed(Some("dog"), at(7_200_000 + 59 * 60_000)), String::new);
        loader.load(timed(Some("dog"), at(7_200_000)), String::new);
        loader.load(timed(Some("cat"), at(-1)), String::new);
        loader.load(timed(Some("cat"), Stamp::Text("noon".into())), String::new);
        loader.load(timed(None, at(0)), String::new);
        let (mut observations, stats) = loader.take();
        observations.sort();
        let dog = Observation::new("p", "cat", Some("dog"));
        let cat = Observation::new("p", "cat", Some("cat"));
        assert_eq!(
            observations,
            [
                (Observation::new("p", "cat", None), 1),
                (cat.clone(), 1),
                (cat.in_window(-3_600_000), 1),
                (dog.in_window(7_200_000), 2),
            ]
        );
        assert_eq!(stats.untimed, 1, "the unreadable time; a pending record has none to read");
    }
}
