//! Error rate over time: judged and wrong records per producer per window of `InferredAt`.
//! A window in which a producer had no judged record has no row.

use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use timely::progress::Timestamp;

use crate::count::tally_by;
use crate::record::{Observation, Tally, Verdict};

/// `((producer, window start), tally)` for every window with a judged record. Pending records
/// have no time; inferred records without a readable one are in no window.
pub fn error_windows<'scope, T>(
    observations: VecCollection<'scope, T, Observation, isize>,
) -> VecCollection<'scope, T, ((String, i64), Tally), isize>
where
    T: Timestamp + Lattice + Ord,
{
    error_windows_of(observations.flat_map(windowed_verdict))
}

/// What the view reads of an observation: its producer, window and verdict, for a record in a window.
pub fn windowed_verdict(observation: Observation) -> Option<((String, i64), Verdict)> {
    let verdict = observation.verdict();
    observation.window.map(|window| ((observation.producer_id, window), verdict))
}

/// The tallies per window from `((producer, window start), verdict)` pairs.
pub fn error_windows_of<'scope, T>(
    verdicts: VecCollection<'scope, T, ((String, i64), Verdict), isize>,
) -> VecCollection<'scope, T, ((String, i64), Tally), isize>
where
    T: Timestamp + Lattice + Ord,
{
    tally_by("TallyByWindow", verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testing::{after_each_round, rows};

    const HOUR: i64 = 3_600_000;

    fn obs(producer: &str, truth: &str, inferred: Option<&str>) -> Observation {
        Observation::new(producer, truth, inferred)
    }

    fn row(producer: &str, window: i64, correct: u64, incorrect: u64) -> ((String, i64), Tally) {
        ((producer.to_owned(), window), Tally { correct, incorrect, pending: 0 })
    }

    #[test]
    fn windows_with_records_only_and_retractions_move_records_between_windows() {
        let rounds = vec![
            vec![
                (obs("a", "cat", Some("cat")).in_window(0), 3),
                (obs("a", "cat", Some("dog")).in_window(0), 1),
                // Two hours later; nothing in between.
                (obs("a", "cat", Some("dog")).in_window(2 * HOUR), 2),
                (obs("a", "cat", None), 5),
                (obs("a", "cat", Some("dog")), 7), // inferred, time unreadable
                (obs("b", "cat", None), 1),
            ],
            // A record is relabelled later: it leaves its old window for a new one.
            vec![
                (obs("a", "cat", Some("dog")).in_window(0), -1),
                (obs("a", "cat", Some("cat")).in_window(3 * HOUR), 1),
            ],
            // Everything of window 2h is deleted.
            vec![(obs("a", "cat", Some("dog")).in_window(2 * HOUR), -2)],
        ];
        let snapshots = after_each_round(error_windows, rounds);
        assert_eq!(rows(&snapshots[0]), [row("a", 0, 3, 1), row("a", 2 * HOUR, 0, 2)]);
        assert_eq!(rows(&snapshots[1]), [row("a", 0, 3, 0), row("a", 2 * HOUR, 0, 2), row("a", 3 * HOUR, 1, 0)]);
        assert_eq!(rows(&snapshots[2]), [row("a", 0, 3, 0), row("a", 3 * HOUR, 1, 0)]);
    }
}
