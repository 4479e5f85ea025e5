//! What the dataflow counts: one observation per stored record, and the per-producer tally.

use serde::{Deserialize, Serialize};

/// The three fields of a stored record that decide whether the model was right.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Observation {
    pub producer_id: String,
    pub ground_truth: String,
    /// `None` until the record has been inferred.
    pub inferred: Option<String>,
}

impl Observation {
    pub fn new(producer_id: &str, ground_truth: &str, inferred: Option<&str>) -> Self {
        Observation {
            producer_id: producer_id.to_owned(),
            ground_truth: ground_truth.to_owned(),
            inferred: inferred.map(str::to_owned),
        }
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::of(&self.ground_truth, self.inferred.as_deref())
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
