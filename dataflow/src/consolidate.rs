//! Sources hand the dataflow consolidated observations: a differential collection is a
//! multiset, so a million identical `(producer, truth, inferred, window)` tuples are one update
//! with multiplicity a million. This keeps the dataflow's work proportional to distinct observations.

use rustc_hash::FxHashMap;

use crate::record::Observation;

const NONE: u32 = u32::MAX;
const NO_WINDOW: i64 = i64::MIN;

/// Accumulates observations by interned strings, so that counting one costs a few hash lookups
/// on borrowed text and no allocation.
#[derive(Default)]
pub struct Consolidator {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
    counts: FxHashMap<(u32, u32, u32, i64), isize>,
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

    pub fn add(
        &mut self,
        producer_id: &str,
        ground_truth: &str,
        inferred: Option<&str>,
        window: Option<i64>,
        diff: isize,
    ) {
        let key = (
            self.intern(producer_id),
            self.intern(ground_truth),
            inferred.map_or(NONE, |label| self.intern(label)),
            window.unwrap_or(NO_WINDOW),
        );
        *self.counts.entry(key).or_default() += diff;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The consolidated observations with their multiplicities; the consolidator is left empty.
    pub fn drain(&mut self) -> Vec<(Observation, isize)> {
        self.drain_lazily().collect()
    }

    /// The same, one at a time: a caller that feeds them on need not hold them all at once.
    pub fn drain_lazily(&mut self) -> impl Iterator<Item = (Observation, isize)> + '_ {
        let names = &self.names;
        let name = move |id: u32| names[id as usize].clone();
        self.counts.drain().filter(|(_, diff)| *diff != 0).map(move |((producer, truth, inferred, window), diff)| {
            let inferred = (inferred != NONE).then(|| name(inferred));
            let window = (window != NO_WINDOW).then_some(window);
            (Observation { producer_id: name(producer), ground_truth: name(truth), inferred, window }, diff)
        })
    }
}

/// Adds up equal updates of each time on this worker with a hash map, before they reach an
/// operator that sorts them.
///
/// A view's first step projects the observations (say, onto `(producer, truth, label)`), which
/// makes many of them equal; the arrangement behind `reduce` and `count` would sort every one
/// of them, comparing strings, before adding them up. Summing them here first leaves it only the
/// distinct ones. Updates of a time are held until the input has passed it, as any consolidation
/// must; they stay on the worker that made them.
pub fn sum_by_hash<'scope, T, D>(
    collection: differential_dataflow::VecCollection<'scope, T, D, isize>,
) -> differential_dataflow::VecCollection<'scope, T, D, isize>
where
    T: timely::progress::Timestamp + Ord,
    D: differential_dataflow::Data + std::hash::Hash,
{
    use std::collections::BTreeMap;

    use differential_dataflow::AsCollection;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::Capability;

    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(D, T, isize)>>, _, _, _>(
            Pipeline,
            "SumByHash",
            |_capability, _info| {
                let mut held: BTreeMap<T, (Capability<T>, FxHashMap<D, isize>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (datum, time, diff) in data.drain(..) {
                            let (_, sums) = held.entry(time.clone()).or_insert_with(|| {
                                (capability.delayed(&time, output.output_index()), FxHashMap::default())
                            });
                            *sums.entry(datum).or_default() += diff;
                        }
                    });
                    let frontier = frontier.frontier();
                    while let Some(entry) = held.first_entry().filter(|entry| !frontier.less_equal(entry.key())) {
                        let (time, (capability, sums)) = entry.remove_entry();
                        let mut session = output.session(&capability);
                        for (datum, diff) in sums.into_iter().filter(|(_, diff)| *diff != 0) {
                            session.give((datum, time.clone(), diff));
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_observations_become_one_update() {
        let mut c = Consolidator::default();
        for _ in 0..1000 {
            c.add("p", "cat", Some("dog"), None, 1);
        }
        c.add("p", "cat", None, None, 1);
        c.add("p", "cat", Some("dog"), Some(3_600_000), 2);
        c.add("q", "cat", None, None, 1);
        c.add("q", "cat", None, None, -1);
        let mut out = c.drain();
        out.sort();
        assert_eq!(
            out,
            vec![
                (Observation::new("p", "cat", None), 1),
                (Observation::new("p", "cat", Some("dog")), 1000),
                (Observation::new("p", "cat", Some("dog")).in_window(3_600_000), 2),
            ]
        );
        assert!(c.is_empty());
    }
}
