//! Which Kafka offsets may be committed: per partition, only up to the first record that has not
//! been durably handled yet, however the handling of later records overtakes it.
//!
//! A record may be received twice (after a rebalance, or a restart before a commit): each
//! reception must be handled before the offset counts as done. Offsets need not be contiguous
//! (Kafka leaves gaps), so the tracker never assumes `offset + 1` is the next record.

use std::collections::{BTreeMap, HashMap};

/// A message's place in Kafka.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Offsets received and not yet handled, with how many receptions are still open.
    open: BTreeMap<i64, u32>,
    /// The highest offset ever received.
    max_seen: Option<i64>,
    /// The last offset handed out for commit (the next offset to read).
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// The next offset to read once everything handled so far is safe: the first open offset, or
    /// one past the highest offset seen when nothing is open.
    fn safe_point(&self) -> Option<i64> {
        match self.open.keys().next() {
            Some(first_open) => Some(*first_open),
            None => self.max_seen.map(|max| max + 1),
        }
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionOffsets>,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// A record was read from Kafka: it blocks commits at its offset until `completed`.
    pub fn received(&mut self, pos: &Position) {
        let part = self.partitions.entry((pos.topic.clone(), pos.partition)).or_default();
        // The first record read from a partition is where the group's committed position
        // already stands: committing it again would say nothing new.
        part.committed.get_or_insert(pos.offset);
        *part.open.entry(pos.offset).or_insert(0) += 1;
        part.max_seen = Some(part.max_seen.map_or(pos.offset, |max| max.max(pos.offset)));
    }

    /// A record was durably handled (written, or dead-lettered). Completing an offset that is
    /// not open (already completed by an earlier reception) changes nothing.
    pub fn completed(&mut self, pos: &Position) {
        let Some(part) = self.partitions.get_mut(&(pos.topic.clone(), pos.partition)) else {
            return;
        };
        if let Some(count) = part.open.get_mut(&pos.offset) {
            *count -= 1;
            if *count == 0 {
                part.open.remove(&pos.offset);
            }
        }
    }

    /// Number of receptions not handled yet, over all partitions.
    pub fn open_count(&self) -> usize {
        self.partitions.values().map(|p| p.open.values().map(|c| *c as usize).sum::<usize>()).sum()
    }

    /// Offsets to commit now `(topic, partition, next offset to read)`: the partitions whose
    /// safe point moved forward since the last call. A safe point never moves back.
    pub fn take_commits(&mut self) -> Vec<(String, i32, i64)> {
        let mut commits = Vec::new();
        for ((topic, partition), part) in &mut self.partitions {
            let Some(point) = part.safe_point() else {
                continue;
            };
            if part.committed.is_none_or(|done| point > done) {
                part.committed = Some(point);
                commits.push((topic.clone(), *partition, point));
            }
        }
        commits.sort();
        commits
    }

    /// Every partition's last safe point, advanced or not: what a final commit sends.
    pub fn all_commits(&mut self) -> Vec<(String, i32, i64)> {
        self.take_commits();
        let mut commits: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|((topic, partition), part)| part.committed.map(|offset| (topic.clone(), *partition, offset)))
            .collect();
        commits.sort();
        commits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position { topic: "t".into(), partition, offset }
    }

    #[test]
    fn commits_only_up_to_the_first_unfinished_record() {
        let mut t = OffsetTracker::new();
        for o in 0..5 {
            t.received(&at(0, o));
        }
        assert_eq!(t.take_commits(), [], "nothing handled yet");
        // Records 1, 3 and 4 finish first: nothing can be committed past 0.
        for o in [1, 3, 4] {
            t.completed(&at(0, o));
        }
        assert_eq!(t.take_commits(), []);
        t.completed(&at(0, 0));
        assert_eq!(t.take_commits(), [("t".into(), 0, 2)]);
        t.completed(&at(0, 2));
        assert_eq!(t.take_commits(), [("t".into(), 0, 5)]);
        assert_eq!(t.open_count(), 0);
        assert_eq!(t.take_commits(), [], "nothing new to commit");
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.received(&at(0, 10));
        t.received(&at(1, 20));
        assert_eq!(t.take_commits(), []);
        t.completed(&at(1, 20));
        assert_eq!(t.take_commits(), [("t".into(), 1, 21)]);
        assert_eq!(t.all_commits(), [("t".into(), 0, 10), ("t".into(), 1, 21)]);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        let mut t = OffsetTracker::new();
        for o in [3, 7, 8] {
            t.received(&at(0, o));
        }
        for o in [3, 7, 8] {
            t.completed(&at(0, o));
        }
        assert_eq!(t.take_commits(), [("t".into(), 0, 9)]);
    }

    #[test]
    fn a_redelivered_record_must_be_handled_again_before_moving_past_it() {
        let mut t = OffsetTracker::new();
        t.received(&at(0, 5));
        t.received(&at(0, 6));
        // After a rebalance the same offset arrives again while the first copy is in flight.
        t.received(&at(0, 5));
        t.completed(&at(0, 5));
        t.completed(&at(0, 6));
        assert_eq!(t.take_commits(), [], "one copy of offset 5 is still in flight");
        t.completed(&at(0, 5));
        assert_eq!(t.take_commits(), [("t".into(), 0, 7)]);
    }

    #[test]
    fn the_commit_point_never_moves_back() {
        let mut t = OffsetTracker::new();
        t.received(&at(0, 9));
        t.completed(&at(0, 9));
        assert_eq!(t.take_commits(), [("t".into(), 0, 10)]);
        // A stale redelivery of an older offset must not rewind the committed position.
        t.received(&at(0, 4));
        assert_eq!(t.take_commits(), []);
        assert_eq!(t.all_commits(), [("t".into(), 0, 10)]);
    }

    #[test]
    fn completing_unknown_offsets_is_harmless() {
        let mut t = OffsetTracker::new();
        t.completed(&at(3, 1));
        t.received(&at(0, 1));
        t.completed(&at(0, 2));
        assert_eq!(t.open_count(), 1);
        assert_eq!(t.take_commits(), []);
        assert_eq!(t.all_commits(), [("t".into(), 0, 1)]);
    }
}
