//! Sources hand the dataflow consolidated observations: a differential collection is a
//! multiset, so a million identical `(producer, truth, inferred)` triples are one update with
//! multiplicity a million. This keeps the dataflow's work proportional to distinct observations.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::record::Observation;

/// Accumulates observations keyed by their text, so that counting one costs one hash of the
/// three fields and one probe on borrowed text, with no allocation once the triple is known.
#[derive(Default)]
pub struct Consolidator {
    counts: HashTable<Counted>,
    hasher: FxBuildHasher,
}

/// One distinct observation and its multiplicity so far.
struct Counted {
    hash: u64,
    observation: Observation,
    diff: isize,
}

impl Consolidator {
    pub fn add(&mut self, producer_id: &str, ground_truth: &str, inferred: Option<&str>, diff: isize) {
        let mut state = self.hasher.build_hasher();
        (producer_id, ground_truth, inferred).hash(&mut state);
        let hash = state.finish();
        let same = |counted: &Counted| {
            let seen = &counted.observation;
            seen.producer_id == producer_id && seen.ground_truth == ground_truth && seen.inferred.as_deref() == inferred
        };
        match self.counts.find_mut(hash, same) {
            Some(counted) => counted.diff += diff,
            None => {
                let observation = Observation::new(producer_id, ground_truth, inferred);
                self.counts.insert_unique(hash, Counted { hash, observation, diff }, |counted| counted.hash);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The consolidated observations with their multiplicities; the consolidator is left empty.
    pub fn drain(&mut self) -> Vec<(Observation, isize)> {
        self.counts
            .drain()
            .filter(|counted| counted.diff != 0)
            .map(|counted| (counted.observation, counted.diff))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_observations_become_one_update() {
        let mut c = Consolidator::default();
        for _ in 0..1000 {
            c.add("p", "cat", Some("dog"), 1);
        }
        c.add("p", "cat", None, 1);
        c.add("q", "cat", None, 1);
        c.add("q", "cat", None, -1);
        let mut out = c.drain();
        out.sort();
        assert_eq!(
            out,
            vec![(Observation::new("p", "cat", None), 1), (Observation::new("p", "cat", Some("dog")), 1000),]
        );
        assert!(c.is_empty());
    }
}
