//! The computation itself: a pure function from observations to per-producer tallies.
//!
//! It knows nothing of files, MongoDB or CSV; the batch job and `--follow` feed it the same way,
//! and differential dataflow keeps its output current as observations are added or retracted.

use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use timely::progress::Timestamp;

use crate::consolidate::sum_by_hash;
use crate::record::{Observation, Tally, Verdict};

/// Per-producer tallies of correct, incorrect and pending records.
pub fn error_counts<'scope, T>(
    observations: VecCollection<'scope, T, Observation, isize>,
) -> VecCollection<'scope, T, (String, Tally), isize>
where
    T: Timestamp + Lattice + Ord,
{
    tally_by_producer(observations.map(producer_verdict))
}

/// What the count reads of an observation: its producer and verdict.
pub fn producer_verdict(observation: Observation) -> (String, Verdict) {
    let verdict = observation.verdict();
    (observation.producer_id, verdict)
}

/// Per-producer tallies from `(producer, verdict)` pairs: all the counting needs of a record,
/// which is what the follower keeps of each.
pub fn tally_by_producer<'scope, T>(
    verdicts: VecCollection<'scope, T, (String, Verdict), isize>,
) -> VecCollection<'scope, T, (String, Tally), isize>
where
    T: Timestamp + Lattice + Ord,
{
    tally_by("TallyByProducer", verdicts)
}

/// One tally per key from `(key, verdict)` pairs.
pub fn tally_by<'scope, T, K>(
    name: &str,
    verdicts: VecCollection<'scope, T, (K, Verdict), isize>,
) -> VecCollection<'scope, T, (K, Tally), isize>
where
    T: Timestamp + Lattice + Ord,
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable + std::hash::Hash,
{
    sum_by_hash(verdicts).reduce_named(name, |_key, verdicts, tally| {
        tally.push((Tally::from_counts(verdicts.iter().map(|(v, n)| (*v, *n))), 1))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::views::testing::after_each_round;

    /// Runs `error_counts` over several rounds of updates and returns the tallies after each.
    fn tallies_after_each_round(rounds: Vec<Vec<(Observation, isize)>>) -> Vec<BTreeMap<String, Tally>> {
        let snapshots = after_each_round(error_counts, rounds);
        snapshots.iter().map(|rows| rows.keys().cloned().collect()).collect()
    }

    fn obs(producer: &str, truth: &str, inferred: Option<&str>) -> Observation {
        Observation::new(producer, truth, inferred)
    }

    fn tally(correct: u64, incorrect: u64, pending: u64) -> Tally {
        Tally { correct, incorrect, pending }
    }

    #[test]
    fn empty_input_gives_no_rows() {
        assert_eq!(tallies_after_each_round(vec![vec![]]), vec![BTreeMap::new()]);
    }

    #[test]
    fn counts_per_producer_including_one_with_every_record_wrong() {
        let round = vec![
            (obs("a", "cat", Some("cat")), 1),
            (obs("a", "cat", Some("dog")), 1),
            (obs("a", "dog", None), 1),
            (obs("b", "cat", Some("dog")), 1),
            (obs("b", "ship", Some("truck")), 2),
            (obs("c", "frog", Some("frog")), 5),
        ];
        let result = tallies_after_each_round(vec![round]).pop().unwrap();
        assert_eq!(
            result,
            BTreeMap::from([
                ("a".to_owned(), tally(1, 1, 1)),
                ("b".to_owned(), tally(0, 3, 0)),
                ("c".to_owned(), tally(5, 0, 0)),
            ])
        );
    }

    #[test]
    fn retracting_an_observation_and_adding_its_new_version_updates_the_tally() {
        let rounds = vec![
            vec![(obs("a", "cat", None), 1), (obs("a", "dog", Some("dog")), 1)],
            // The pending record gets a wrong label; the correct one is deleted.
            vec![(obs("a", "cat", None), -1), (obs("a", "cat", Some("dog")), 1), (obs("a", "dog", Some("dog")), -1)],
            // The last record goes too: the producer disappears.
            vec![(obs("a", "cat", Some("dog")), -1)],
        ];
        let snapshots = tallies_after_each_round(rounds);
        assert_eq!(snapshots[0], BTreeMap::from([("a".to_owned(), tally(1, 0, 1))]));
        assert_eq!(snapshots[1], BTreeMap::from([("a".to_owned(), tally(0, 1, 0))]));
        assert_eq!(snapshots[2], BTreeMap::new());
    }
}
