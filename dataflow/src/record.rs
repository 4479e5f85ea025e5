//! What the dataflow counts: one observation per stored record, and the per-producer tally.

use serde::{Deserialize, Serialize};

/// What the views read of a stored record: the three fields that decide whether the model was
/// right, and when it answered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Observation {
    pub producer_id: String,
    pub ground_truth: String,
    /// `None` until the record has been inferred.
    pub inferred: Option<String>,
    /// The start of the window (milliseconds since the epoch, UTC) that holds the record's
    /// `InferredAt`. `None` for a pending record, one without a readable `InferredAt`, and in
    /// every run with no view that needs time: records of one window are one observation, so
    /// the collection stays as small as the distinct (producer, class, class, window) tuples.
    pub window: Option<i64>,
}

impl Observation {
    pub fn new(producer_id: &str, ground_truth: &str, inferred: Option<&str>) -> Self {
        Observation {
            producer_id: producer_id.to_owned(),
            ground_truth: ground_truth.to_owned(),
            inferred: inferred.map(str::to_owned),
            window: None,
        }
    }

    /// The same observation, inferred in the window that starts at `window` (ms).
    pub fn in_window(self, window: i64) -> Self {
        Observation { window: Some(window), ..self }
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::of(&self.ground_truth, self.inferred.as_deref())
    }
}

/// Tumbling windows of `InferredAt`, aligned to the epoch: `1h` windows start on the hour and
/// `1d` windows at midnight, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Windowing {
    pub width_ms: i64,
}

impl Windowing {
    /// Windows of `width`; `None` for a width under one millisecond or past what `i64` holds.
    pub fn new(width: std::time::Duration) -> Option<Self> {
        let width_ms = i64::try_from(width.as_millis()).ok().filter(|ms| *ms > 0)?;
        Some(Windowing { width_ms })
    }

    /// The start of the window that holds `at` (both in ms since the epoch).
    pub fn start_of(&self, at: i64) -> i64 {
        at.div_euclid(self.width_ms) * self.width_ms
    }
}

/// How one record judges the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Correct,
    Incorrect,
    /// Not inferred yet: neither right nor wrong.
    Pending,
}

impl Verdict {
    pub fn of(ground_truth: &str, inferred: Option<&str>) -> Verdict {
        match inferred {
            None => Verdict::Pending,
            Some(label) if label == ground_truth => Verdict::Correct,
            Some(_) => Verdict::Incorrect,
        }
    }
}

/// Per-producer counts of each verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tally {
    pub correct: u64,
    pub incorrect: u64,
    pub pending: u64,
}

impl Tally {
    /// Builds a tally from verdicts with their multiplicities, as a differential `reduce` sees them.
    pub fn from_counts<'a>(verdicts: impl IntoIterator<Item = (&'a Verdict, isize)>) -> Self {
        let mut tally = Tally::default();
        for (verdict, count) in verdicts {
            // A well-formed collection never has a negative multiplicity; clamp rather than wrap.
            let count = count.max(0) as u64;
            match verdict {
                Verdict::Correct => tally.correct += count,
                Verdict::Incorrect => tally.incorrect += count,
                Verdict::Pending => tally.pending += count,
            }
        }
        tally
    }

    /// Records whose inference can be judged.
    pub fn judged(&self) -> u64 {
        self.correct + self.incorrect
    }

    /// Share of judged records that were wrong; `None` when nothing was judged yet.
    pub fn error_rate(&self) -> Option<f64> {
        (self.judged() > 0).then(|| self.incorrect as f64 / self.judged() as f64)
    }

    pub fn add(&mut self, other: &Tally) {
        self.correct += other.correct;
        self.incorrect += other.incorrect;
        self.pending += other.pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(Observation::new("p", "cat", Some("cat")).verdict(), Verdict::Correct);
        assert_eq!(Observation::new("p", "cat", Some("dog")).verdict(), Verdict::Incorrect);
        assert_eq!(Observation::new("p", "cat", Some("Cat")).verdict(), Verdict::Incorrect);
        assert_eq!(Observation::new("p", "cat", None).verdict(), Verdict::Pending);
    }

    #[test]
    fn error_rate_is_over_judged_records_only() {
        let tally = Tally { correct: 3, incorrect: 1, pending: 10 };
        assert_eq!(tally.error_rate(), Some(0.25));
        assert_eq!(Tally { pending: 2, ..Tally::default() }.error_rate(), None);
    }
}
