//! Sources hand the dataflow consolidated observations: a differential collection is a
//! multiset, so a million identical `(producer, truth, inferred, window)` tuples are one update
//! with multiplicity a million. This keeps the dataflow's work proportional to distinct observations.
//!
//! The batch job goes further: no view reads a whole observation, so its loader sums what each
//! view reads of them instead ([`Consolidator::for_views`]), and its dataflow gets those sums,
//! bounded by (producer, window, label) and (producer, class, class) rather than by records.

use rustc_hash::FxHashMap;

use crate::record::{Observation, Verdict};
use crate::views::drift::Reference;

const NONE: u32 = u32::MAX;
const NO_WINDOW: i64 = i64::MIN;

/// Accumulates observations by interned strings, so that counting one costs a few hash lookups
/// on borrowed text and no allocation.
#[derive(Default)]
pub struct Consolidator {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
    sums: Sums,
}

enum Sums {
    /// Whole observations, for a reader that needs them (the follower keeps them per record).
    Observations(FxHashMap<(u32, u32, u32, i64), isize>),
    /// Only what the count and the views read.
    Views(ViewSums),
}

impl Default for Sums {
    fn default() -> Self {
        Sums::Observations(FxHashMap::default())
    }
}

/// What the count and each view read of the observations, by interned names: the projections of
/// [`crate::count::producer_verdict`], [`crate::views::ViewInputs::of`] and [`Verdict::of`].
#[derive(Default)]
struct ViewSums {
    /// The drift's reference when the views are on: without them only the verdicts are kept.
    reference: Option<Reference>,
    /// Per producer: one lookup per record finds all of its sums.
    producers: FxHashMap<u32, ProducerSums>,
}

/// One producer's sums in one share of the records.
#[derive(Default)]
struct ProducerSums {
    /// Records per [`Verdict`], in its order.
    verdicts: [isize; 3],
    /// `(truth, label)` of inferred records.
    labelled: FxHashMap<(u32, u32), isize>,
    /// Per window, how many records were right and wrong.
    windowed: FxHashMap<i64, Judged>,
    /// The labels of the windows that may count for the drift.
    drift: Option<DriftShare>,
}

#[derive(Clone, Copy, Default)]
struct Judged {
    correct: isize,
    incorrect: isize,
}

const VERDICTS: [Verdict; 3] = [Verdict::Correct, Verdict::Incorrect, Verdict::Pending];

impl ViewSums {
    fn add(&mut self, producer: u32, truth: u32, inferred: u32, window: i64) {
        // Names are interned once each: equal ids are equal names.
        let verdict = match inferred {
            NONE => Verdict::Pending,
            label if label == truth => Verdict::Correct,
            _ => Verdict::Incorrect,
        };
        let sums = self.producers.entry(producer).or_default();
        sums.verdicts[verdict as usize] += 1;
        let Some(reference) = &self.reference else { return };
        if inferred == NONE {
            return;
        }
        *sums.labelled.entry((truth, inferred)).or_default() += 1;
        if window != NO_WINDOW {
            let judged = sums.windowed.entry(window).or_default();
            match verdict {
                Verdict::Correct => judged.correct += 1,
                _ => judged.incorrect += 1,
            }
            sums.drift.get_or_insert_with(|| DriftShare::new(window)).add(window, inferred, reference);
        }
    }
}

/// One producer's labels per window in one share of the records, kept only for the windows that
/// may count for its drift ([`Reference::may_count`]) given the first and latest windows seen so
/// far. Records are only ever added, so a window once left out never counts again: an earlier
/// first window ends the first period earlier, and the latest only moves later.
struct DriftShare {
    first: i64,
    latest: i64,
    labels: FxHashMap<(i64, u32), isize>,
}

impl DriftShare {
    fn new(window: i64) -> Self {
        DriftShare { first: window, latest: window, labels: FxHashMap::default() }
    }

    fn add(&mut self, window: i64, label: u32, reference: &Reference) {
        if window < self.first || window > self.latest {
            (self.first, self.latest) = (self.first.min(window), self.latest.max(window));
            let (first, latest) = (self.first, self.latest);
            self.labels.retain(|(window, _), _| reference.may_count(*window, first, latest));
        }
        if reference.may_count(window, self.first, self.latest) {
            *self.labels.entry((window, label)).or_default() += 1;
        }
    }
}

/// The sums of [`Consolidator::for_views`], named, one iterator per input of the batch dataflow.
pub struct ViewRows<'a> {
    pub verdicts: Summed<'a, (String, Verdict)>,
    pub labelled: Summed<'a, (String, String, String)>,
    pub windowed_verdicts: Summed<'a, ((String, i64), Verdict)>,
    pub window_labels: Summed<'a, (String, (i64, String))>,
}

/// Rows with their multiplicities, one at a time.
pub type Summed<'a, D> = Box<dyn Iterator<Item = (D, isize)> + 'a>;

impl Consolidator {
    /// Sums only what the count reads of each observation and, when the views are on (with the
    /// drift's `reference`), what each view reads: see [`Consolidator::drain_view_rows`].
    pub fn for_views(reference: Option<Reference>) -> Self {
        Consolidator { sums: Sums::Views(ViewSums { reference, ..ViewSums::default() }), ..Consolidator::default() }
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    /// Counts one record.
    pub fn add(&mut self, producer_id: &str, ground_truth: &str, inferred: Option<&str>, window: Option<i64>) {
        let (producer, truth) = (self.intern(producer_id), self.intern(ground_truth));
        let inferred = inferred.map_or(NONE, |label| self.intern(label));
        let window = window.unwrap_or(NO_WINDOW);
        match &mut self.sums {
            Sums::Observations(counts) => *counts.entry((producer, truth, inferred, window)).or_default() += 1,
            Sums::Views(sums) => sums.add(producer, truth, inferred, window),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.sums {
            Sums::Observations(counts) => counts.is_empty(),
            Sums::Views(sums) => sums.producers.is_empty(),
        }
    }

    /// The consolidated observations with their multiplicities; the consolidator is left empty.
    pub fn drain(&mut self) -> Vec<(Observation, isize)> {
        self.drain_lazily().collect()
    }

    /// The same, one at a time: a caller that feeds them on need not hold them all at once.
    /// A consolidator made [`Consolidator::for_views`] keeps no observations and yields none.
    pub fn drain_lazily(&mut self) -> impl Iterator<Item = (Observation, isize)> + '_ {
        let counts = match &mut self.sums {
            Sums::Observations(counts) => std::mem::take(counts),
            Sums::Views(_) => FxHashMap::default(),
        };
        let names = &self.names;
        let name = move |id: u32| names[id as usize].clone();
        counts.into_iter().filter(|(_, diff)| *diff != 0).map(move |((producer, truth, inferred, window), diff)| {
            let inferred = (inferred != NONE).then(|| name(inferred));
            let window = (window != NO_WINDOW).then_some(window);
            (Observation { producer_id: name(producer), ground_truth: name(truth), inferred, window }, diff)
        })
    }

    /// What [`Consolidator::for_views`] summed, named; the consolidator is left empty. One made
    /// by `default()` yields nothing here.
    ///
    /// Of the drift's input, only the windows that may count are kept ([`Reference::may_count`]):
    /// a producer's first period and latest window rather than every window.
    pub fn drain_view_rows(&mut self) -> ViewRows<'_> {
        let sums = match &mut self.sums {
            Sums::Views(sums) => {
                std::mem::replace(sums, ViewSums { reference: sums.reference.clone(), ..Default::default() })
            }
            Sums::Observations(_) => ViewSums::default(),
        };
        let (mut verdicts, mut labelled, mut windowed_verdicts, mut window_labels) = Default::default();
        for (producer, sums) in sums.producers {
            let ProducerSums { verdicts: counts, labelled: labels, windowed, drift } = sums;
            extend(&mut verdicts, VERDICTS.into_iter().zip(counts).map(|(verdict, n)| ((producer, verdict), n)));
            extend(&mut labelled, labels.into_iter().map(|((truth, label), n)| ((producer, truth, label), n)));
            extend(
                &mut windowed_verdicts,
                windowed.into_iter().flat_map(|(window, judged)| {
                    [
                        ((producer, window, Verdict::Correct), judged.correct),
                        ((producer, window, Verdict::Incorrect), judged.incorrect),
                    ]
                }),
            );
            let labels = drift.map(|share| share.labels).unwrap_or_default();
            extend(&mut window_labels, labels.into_iter().map(|((window, label), n)| ((producer, window, label), n)));
        }
        let names = &self.names;
        let name = move |id: u32| names[id as usize].clone();
        ViewRows {
            verdicts: named(verdicts, move |(producer, verdict)| (name(producer), verdict)),
            labelled: named(labelled, move |(producer, truth, label)| (name(producer), name(truth), name(label))),
            windowed_verdicts: named(windowed_verdicts, move |(producer, window, verdict)| {
                ((name(producer), window), verdict)
            }),
            window_labels: named(window_labels, move |(producer, window, label)| {
                (name(producer), (window, name(label)))
            }),
        }
    }
}

/// Adds the rows other than zero.
fn extend<K>(rows: &mut Vec<(K, isize)>, more: impl Iterator<Item = (K, isize)>) {
    rows.extend(more.filter(|(_, n)| *n != 0));
}

/// The rows of `sums` other than zero, named by `name`.
fn named<'a, K: 'a, D>(sums: impl IntoIterator<Item = (K, isize)> + 'a, name: impl Fn(K) -> D + 'a) -> Summed<'a, D> {
    Box::new(sums.into_iter().filter(|(_, diff)| *diff != 0).map(move |(key, diff)| (name(key), diff)))
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
            c.add("p", "cat", Some("dog"), None);
        }
        c.add("p", "cat", None, None);
        c.add("p", "cat", Some("dog"), Some(3_600_000));
        c.add("p", "cat", Some("dog"), Some(3_600_000));
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

    const HOUR: i64 = 3_600_000;
    const HOURS_2: Reference = Reference::FirstPeriod { length_ms: 2 * HOUR };

    /// Each share keeps fewer windows of the drift's input, and the drift of what they keep is the
    /// drift of everything.
    #[test]
    fn the_drift_of_each_shares_windows_that_may_count_is_the_drift_of_all() {
        use std::collections::{BTreeMap, BTreeSet};
        use std::sync::Arc;

        use crate::views::drift::{label_drift, window_label};
        use crate::views::testing::after_each_round;

        let fixed = Reference::Fixed(Arc::new(BTreeMap::from([(None, BTreeMap::from([("cat".to_owned(), 3)]))])));
        for reference in [HOURS_2, fixed] {
            let mut shares =
                [Consolidator::for_views(Some(reference.clone())), Consolidator::for_views(Some(reference.clone()))];
            let (producers, labels) = (["a", "b", "c"], ["cat", "dog", "ship"]);
            let mut state = 99u64;
            let mut pick = |n: usize| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) as usize % n
            };
            let mut observations = Vec::new();
            for _ in 0..3_000 {
                let (producer, label, window) = (producers[pick(3)], labels[pick(3)], pick(24) as i64 * HOUR);
                shares[pick(2)].add(producer, "cat", Some(label), Some(window));
                observations.push((Observation::new(producer, "cat", Some(label)).in_window(window), 1));
            }
            let kept: Vec<(Observation, isize)> = shares
                .iter_mut()
                .flat_map(|share| share.drain_view_rows().window_labels.collect::<Vec<_>>())
                .map(|((producer, (window, label)), diff)| {
                    (Observation::new(&producer, "cat", Some(&label)).in_window(window), diff)
                })
                .collect();
            let every: BTreeSet<_> = observations.iter().filter_map(|(o, _)| window_label(o.clone())).collect();
            assert!(kept.len() < every.len() / 2, "{} of {}", kept.len(), every.len());
            let drift = |rounds: Vec<(Observation, isize)>| {
                let reference = reference.clone();
                after_each_round(move |observations| label_drift(observations, reference.clone()), vec![rounds])
            };
            assert_eq!(drift(kept), drift(observations));
        }
    }

    /// The batch job's sums are exactly what each view reads of the observations.
    #[test]
    fn view_sums_are_the_views_projections_of_the_observations() {
        use std::collections::BTreeMap;
        use std::fmt::Debug;

        use crate::count::producer_verdict;
        use crate::views::{confusion, drift, windows};

        let (mut whole, mut summed, mut plain) =
            (Consolidator::default(), Consolidator::for_views(Some(HOURS_2)), Consolidator::for_views(None));
        let (producers, classes) = (["a", "b", "c"], ["cat", "dog", "ship", ""]);
        let mut state = 12_345u64;
        let mut pick = |n: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        for _ in 0..5_000 {
            let (producer, truth) = (producers[pick(3)], classes[pick(4)]);
            let inferred = (pick(5) > 0).then(|| classes[pick(4)]);
            let window = (inferred.is_some() && pick(4) > 0).then(|| pick(6) as i64 * 3_600_000);
            for c in [&mut whole, &mut summed, &mut plain] {
                c.add(producer, truth, inferred, window);
            }
        }
        let observations = whole.drain();
        fn sums<D: Ord + Debug>(rows: impl Iterator<Item = (D, isize)>) -> BTreeMap<D, isize> {
            let mut sums = BTreeMap::new();
            rows.for_each(|(row, diff)| *sums.entry(row).or_default() += diff);
            sums.retain(|_, diff| *diff != 0);
            sums
        }
        fn projected<D: Ord + Debug, I: IntoIterator<Item = D>>(
            observations: &[(Observation, isize)],
            project: impl Fn(Observation) -> I,
        ) -> BTreeMap<D, isize> {
            sums(observations.iter().flat_map(|(o, diff)| project(o.clone()).into_iter().map(move |row| (row, *diff))))
        }

        let verdicts = projected(&observations, |o| [producer_verdict(o)]);
        assert_eq!(verdicts.len(), 9, "three producers, three verdicts");
        {
            let rows = summed.drain_view_rows();
            assert_eq!(sums(rows.verdicts), verdicts);
            assert_eq!(sums(rows.labelled), projected(&observations, confusion::labelled));
            assert_eq!(sums(rows.windowed_verdicts), projected(&observations, windows::windowed_verdict));
            // The drift's input keeps each producer's first, second and latest window (of six).
            let mut kept = projected(&observations, drift::window_label);
            kept.retain(|(_, (window, _)), _| [0, HOUR, 5 * HOUR].contains(window));
            assert_eq!(sums(rows.window_labels), kept);
        }
        assert!(summed.is_empty());

        let rows = plain.drain_view_rows();
        assert_eq!(sums(rows.verdicts), verdicts);
        assert_eq!(rows.labelled.count() + rows.windowed_verdicts.count() + rows.window_labels.count(), 0);
    }
}
