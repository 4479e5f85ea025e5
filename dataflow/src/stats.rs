//! What a source reports besides observations: records read, records skipped and why.

use serde::{Deserialize, Serialize};

/// How many skipped records are named in the summary.
const EXAMPLES_KEPT: usize = 5;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Records read, skipped ones included.
    pub records: u64,
    /// Records with a missing or mistyped field, not counted.
    pub skipped: u64,
    /// The first few skipped records: `id: reason`.
    pub skipped_examples: Vec<String>,
    /// Tombstones (`Deleted: true`) read and left out of the counts.
    pub deleted: u64,
    /// With views that need time: inferred records without a readable `InferredAt`. They are
    /// counted, and in the confusion counts, but in no window.
    pub untimed: u64,
    /// A source that failed says why here, so that process 0 never writes a partial CSV.
    pub failure: Option<String>,
}

impl LoadStats {
    pub fn skip(&mut self, id: impl FnOnce() -> String, reason: &str) {
        self.skipped += 1;
        if self.skipped_examples.len() < EXAMPLES_KEPT {
            self.skipped_examples.push(format!("{}: {reason}", id()));
        }
    }

    pub fn merge(&mut self, other: &LoadStats) {
        self.records += other.records;
        self.skipped += other.skipped;
        self.deleted += other.deleted;
        self.untimed += other.untimed;
        for example in &other.skipped_examples {
            if self.skipped_examples.len() < EXAMPLES_KEPT {
                self.skipped_examples.push(example.clone());
            }
        }
        if self.failure.is_none() {
            self.failure = other.failure.clone();
        }
    }
}
