//! Sources hand the dataflow consolidated observations: a differential collection is a
//! multiset, so a million identical `(producer, truth, inferred)` triples are one update with
//! multiplicity a million. This keeps the dataflow's work proportional to distinct observations.

use rustc_hash::FxHashMap;

use crate::record::Observation;

const NONE: u32 = u32::MAX;

/// Accumulates observations by interned strings, so that counting one costs a few hash lookups
/// on borrowed text and no allocation.
#[derive(Default)]
pub struct Consolidator {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
    counts: FxHashMap<(u32, u32, u32), isize>,
}

impl Consolidator {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    pub fn add(&mut self, producer_id: &str, ground_truth: &str, inferred: Option<&str>, diff: isize) {
        let key =
            (self.intern(producer_id), self.intern(ground_truth), inferred.map_or(NONE, |label| self.intern(label)));
        *self.counts.entry(key).or_default() += diff;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The consolidated observations with their multiplicities; the consolidator is left empty.
    pub fn drain(&mut self) -> Vec<(Observation, isize)> {
        let names = &self.names;
        let name = |id: u32| names[id as usize].clone();
        let out = self
            .counts
            .drain()
            .filter(|(_, diff)| *diff != 0)
            .map(|((producer, truth, inferred), diff)| {
                let inferred = (inferred != NONE).then(|| name(inferred));
                (Observation { producer_id: name(producer), ground_truth: name(truth), inferred }, diff)
            })
            .collect();
        out
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
