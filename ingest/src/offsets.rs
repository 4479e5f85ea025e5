//! Which Kafka offsets may be committed: per partition, only up to the first record that has not
//! been durably handled yet, however the handling of later records overtakes it.
//!
//! A record may be received twice (after a rebalance, or a restart before a commit): each
//! reception must be handled before the offset counts as done. Offsets need not be contiguous
//! (Kafka leaves gaps), so the tracker never assumes `offset + 1` is the next record.
//!
//! Each assignment of a partition is an [`Epoch`]. A revoked partition is forgotten; work that
//! started under an earlier epoch and finishes later is ignored, so it can never move the
//! commit of a partition that moved away and came back.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// A message's place in Kafka.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One assignment of one partition to this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

/// `(topic, partition, next offset to read)`, as sent in an offset commit.
pub type Commit = (String, i32, i64);

/// What the tracker makes of a record read from Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The assignment it was read under: completions must name it.
    pub epoch: Epoch,
    /// Offsets that were expected next but skipped over: a retention reset when Kafka no longer
    /// holds them, else compaction or transaction markers.
    pub gap: Option<Range<i64>>,
}

#[derive(Debug)]
struct PartitionOffsets {
    epoch: Epoch,
    /// Offsets received and not yet handled, with how many receptions are still open.
    open: BTreeMap<i64, u32>,
    /// The highest offset received in this epoch.
    max_seen: Option<i64>,
    /// The last offset handed out for commit (the next offset to read).
    committed: Option<i64>,
    /// The offset the next record should have: the group's committed offset at assignment,
    /// then one past the last record read.
    expected: Option<i64>,
}

impl PartitionOffsets {
    fn new(epoch: Epoch, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets { epoch, open: BTreeMap::new(), max_seen: None, committed, expected: committed }
    }

    /// The next offset to read once everything handled so far is safe: the first open offset, or
    /// one past the highest offset seen when nothing is open.
    fn safe_point(&self) -> Option<i64> {
        match self.open.keys().next() {
            Some(first_open) => Some(*first_open),
            None => self.max_seen.map(|max| max + 1),
        }
    }

    /// The safe point, if it is past what was committed.
    fn advanced(&self) -> Option<i64> {
        self.safe_point().filter(|point| self.committed.is_none_or(|done| *point > done))
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionOffsets>,
    epochs: u64,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    fn next_epoch(&mut self) -> Epoch {
        self.epochs += 1;
        Epoch(self.epochs)
    }

    /// A partition was assigned to this member; `committed` is the group's committed offset for
    /// it, if there is one. Starts a new epoch: nothing of an earlier assignment carries over.
    pub fn assigned(&mut self, topic: &str, partition: i32, committed: Option<i64>) -> Epoch {
        let epoch = self.next_epoch();
        self.partitions.insert((topic.to_owned(), partition), PartitionOffsets::new(epoch, committed));
        epoch
    }

    /// A partition was revoked: returns the offset to commit for it now, synchronously, and
    /// forgets it. That is its safe point (never below what was committed) whenever something
    /// was read from it, even if an asynchronous commit already sent it: that one may not have
    /// reached Kafka before the new owner asks where to start.
    pub fn revoked(&mut self, topic: &str, partition: i32) -> Option<Commit> {
        let part = self.partitions.remove(&(topic.to_owned(), partition))?;
        let point = part.safe_point()?.max(part.committed.unwrap_or(i64::MIN));
        Some((topic.to_owned(), partition, point))
    }

    /// Whether `epoch` is still the current assignment of the record's partition.
    pub fn is_current(&self, pos: &Position, epoch: Epoch) -> bool {
        self.partitions.get(&(pos.topic.clone(), pos.partition)).is_some_and(|part| part.epoch == epoch)
    }

    /// A record was read from Kafka: it blocks commits at its offset until `completed`.
    pub fn received(&mut self, pos: &Position) -> Received {
        let key = (pos.topic.clone(), pos.partition);
        if !self.partitions.contains_key(&key) {
            // Read without an assignment callback (a manual assignment): start an epoch now.
            self.assigned(&pos.topic, pos.partition, None);
        }
        let part = self.partitions.get_mut(&key).expect("inserted above");
        // Without a known committed offset, the first record read is where the group's
        // committed position stands: committing it again would say nothing new.
        part.committed.get_or_insert(pos.offset);
        let gap = part.expected.filter(|expected| pos.offset > *expected).map(|expected| expected..pos.offset);
        part.expected = Some(part.expected.map_or(pos.offset + 1, |expected| expected.max(pos.offset + 1)));
        *part.open.entry(pos.offset).or_insert(0) += 1;
        part.max_seen = Some(part.max_seen.map_or(pos.offset, |max| max.max(pos.offset)));
        Received { epoch: part.epoch, gap }
    }

    /// A record read under `epoch` was durably handled (written, or dead-lettered). Completing an
    /// offset that is not open (already completed by an earlier reception), or one of an earlier
    /// assignment, changes nothing.
    pub fn completed(&mut self, pos: &Position, epoch: Epoch) {
        let Some(part) = self.partitions.get_mut(&(pos.topic.clone(), pos.partition)) else {
            return;
        };
        if part.epoch != epoch {
            return;
        }
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

    /// Offsets to commit now: the partitions whose safe point moved forward since the last call.
    /// A safe point never moves back.
    pub fn take_commits(&mut self) -> Vec<Commit> {
        let mut commits = Vec::new();
        for ((topic, partition), part) in &mut self.partitions {
            if let Some(point) = part.advanced() {
                part.committed = Some(point);
                commits.push((topic.clone(), *partition, point));
            }
        }
        commits.sort();
        commits
    }

    /// Every partition's last safe point, advanced or not: what a final commit sends.
    pub fn all_commits(&mut self) -> Vec<Commit> {
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

    /// Receives `offsets` of `partition`; returns the epoch they were read under.
    fn receive(t: &mut OffsetTracker, partition: i32, offsets: impl IntoIterator<Item = i64>) -> Epoch {
        let mut epoch = None;
        for o in offsets {
            epoch = Some(t.received(&at(partition, o)).epoch);
        }
        epoch.expect("at least one offset")
    }

    fn complete(t: &mut OffsetTracker, epoch: Epoch, partition: i32, offsets: impl IntoIterator<Item = i64>) {
        for o in offsets {
            t.completed(&at(partition, o), epoch);
        }
    }

    #[test]
    fn commits_only_up_to_the_first_unfinished_record() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, 0..5);
        assert_eq!(t.take_commits(), [], "nothing handled yet");
        // Records 1, 3 and 4 finish first: nothing can be committed past 0.
        complete(&mut t, e, 0, [1, 3, 4]);
        assert_eq!(t.take_commits(), []);
        complete(&mut t, e, 0, [0]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 2)]);
        complete(&mut t, e, 0, [2]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 5)]);
        assert_eq!(t.open_count(), 0);
        assert_eq!(t.take_commits(), [], "nothing new to commit");
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        receive(&mut t, 0, [10]);
        let e1 = receive(&mut t, 1, [20]);
        assert_eq!(t.take_commits(), []);
        complete(&mut t, e1, 1, [20]);
        assert_eq!(t.take_commits(), [("t".into(), 1, 21)]);
        assert_eq!(t.all_commits(), [("t".into(), 0, 10), ("t".into(), 1, 21)]);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [3, 7, 8]);
        complete(&mut t, e, 0, [3, 7, 8]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 9)]);
    }

    #[test]
    fn a_redelivered_record_must_be_handled_again_before_moving_past_it() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [5, 6]);
        // The same offset arrives again while the first copy is in flight.
        receive(&mut t, 0, [5]);
        complete(&mut t, e, 0, [5, 6]);
        assert_eq!(t.take_commits(), [], "one copy of offset 5 is still in flight");
        complete(&mut t, e, 0, [5]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 7)]);
    }

    #[test]
    fn the_commit_point_never_moves_back() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [9]);
        complete(&mut t, e, 0, [9]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 10)]);
        // A stale redelivery of an older offset must not rewind the committed position.
        receive(&mut t, 0, [4]);
        assert_eq!(t.take_commits(), []);
        assert_eq!(t.all_commits(), [("t".into(), 0, 10)]);
    }

    #[test]
    fn completing_unknown_offsets_is_harmless() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [1]);
        t.completed(&at(3, 1), e);
        t.completed(&at(0, 2), e);
        assert_eq!(t.open_count(), 1);
        assert_eq!(t.take_commits(), []);
        assert_eq!(t.all_commits(), [("t".into(), 0, 1)]);
    }

    #[test]
    fn a_revoked_partition_gives_its_safe_point_and_is_forgotten() {
        let mut t = OffsetTracker::new();
        t.assigned("t", 0, Some(100));
        t.assigned("t", 1, Some(7));
        let e = receive(&mut t, 0, 100..110);
        // 100..104 are done, 104 is still in flight, later ones are done too.
        complete(&mut t, e, 0, (100..104).chain(105..110));
        assert_eq!(t.revoked("t", 0), Some(("t".into(), 0, 104)), "the first record not done");
        assert_eq!(t.revoked("t", 0), None, "forgotten");
        assert_eq!(t.revoked("t", 1), None, "nothing read: nothing to commit");
        assert_eq!(t.all_commits(), [], "revoked partitions are never committed again");
        // In-flight work of the revoked partition finishes after the revoke: ignored.
        complete(&mut t, e, 0, [104]);
        assert_eq!(t.take_commits(), []);
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn a_revoke_commits_again_what_an_asynchronous_commit_may_not_have_delivered() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [5]);
        complete(&mut t, e, 0, [5]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 6)]);
        assert_eq!(t.revoked("t", 0), Some(("t".into(), 0, 6)));
    }

    #[test]
    fn a_revoke_never_commits_below_what_was_committed() {
        let mut t = OffsetTracker::new();
        let e = receive(&mut t, 0, [9]);
        complete(&mut t, e, 0, [9]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 10)]);
        // A stale redelivery of offset 4 is still open when the partition goes.
        receive(&mut t, 0, [4]);
        assert_eq!(t.revoked("t", 0), Some(("t".into(), 0, 10)));
    }

    #[test]
    fn work_of_an_earlier_assignment_never_rewinds_a_partition_that_came_back() {
        let mut t = OffsetTracker::new();
        t.assigned("t", 0, Some(100));
        let old = receive(&mut t, 0, 100..120);
        complete(&mut t, old, 0, 100..110);
        assert_eq!(t.revoked("t", 0), Some(("t".into(), 0, 110)));
        // Another member handled 110..300 and committed 300; the partition comes back.
        let new = t.assigned("t", 0, Some(300));
        assert_ne!(new, old);
        assert_eq!(receive(&mut t, 0, [300, 301]), new);
        // The old batches (110..120) finish only now: they must not commit 110..120.
        complete(&mut t, old, 0, 110..120);
        assert_eq!(t.take_commits(), [], "nothing of the new epoch is done");
        assert_eq!(t.all_commits(), [("t".into(), 0, 300)], "the group's position, not an old one");
        // Nor may they complete the new epoch's receptions of the same offsets.
        let again = t.assigned("t", 0, Some(110));
        receive(&mut t, 0, [110, 111]);
        complete(&mut t, old, 0, [110, 111]);
        assert_eq!(t.take_commits(), []);
        complete(&mut t, again, 0, [110, 111]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 112)]);
    }

    #[test]
    fn records_of_a_revoked_epoch_are_no_longer_current() {
        let mut t = OffsetTracker::new();
        let old = receive(&mut t, 0, [1]);
        assert!(t.is_current(&at(0, 1), old));
        t.revoked("t", 0);
        assert!(!t.is_current(&at(0, 1), old));
        let new = t.assigned("t", 0, None);
        assert!(!t.is_current(&at(0, 1), old));
        assert!(t.is_current(&at(0, 1), new));
    }

    #[test]
    fn offsets_skipped_after_the_committed_position_are_a_gap() {
        let mut t = OffsetTracker::new();
        t.assigned("t", 0, Some(10));
        // Retention deleted 10..15 before the group read them: the reset reads 15 next.
        assert_eq!(t.received(&at(0, 15)).gap, Some(10..15));
        assert_eq!(t.received(&at(0, 16)).gap, None);
        assert_eq!(t.received(&at(0, 20)).gap, Some(17..20), "a skip while reading, e.g. after a pause");
        assert_eq!(t.received(&at(0, 12)).gap, None, "a redelivery of an older offset is no gap");
        assert_eq!(t.received(&at(0, 21)).gap, None);
    }

    #[test]
    fn a_group_without_a_committed_offset_has_no_gap_where_it_starts() {
        let mut t = OffsetTracker::new();
        t.assigned("t", 0, None);
        assert_eq!(t.received(&at(0, 500)).gap, None);
        assert_eq!(t.received(&at(0, 501)).gap, None);
        // Reading without an assignment callback behaves the same.
        assert_eq!(t.received(&at(1, 42)).gap, None);
    }

    #[test]
    fn a_known_committed_offset_is_what_the_first_commit_must_pass() {
        let mut t = OffsetTracker::new();
        t.assigned("t", 0, Some(50));
        assert_eq!(t.all_commits(), [("t".into(), 0, 50)]);
        let e = receive(&mut t, 0, [50]);
        complete(&mut t, e, 0, [50]);
        assert_eq!(t.take_commits(), [("t".into(), 0, 51)]);
    }
}
