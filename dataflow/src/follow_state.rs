//! The follower's per-record state, kept compact: one 20-byte hash-map entry per record.
//!
//! The counts and views need each record's observation (producer, truth, label and, with the
//! views, its window), or that it is malformed (for the sidecar's count of those). Records share
//! observations: a fleet has far fewer distinct (producer, truth, label, window) tuples than
//! records. So each worker interns the distinct states it has seen, and keeps, for the records
//! it owns, a map from a 128-bit digest of the record's `_id` to a 32-bit index of its state,
//! and nothing else: no `_id` text, no history. Records are routed to their owner by the
//! digest. A change replaces the entry and emits the retraction of the old state and the
//! addition of the new one; those are consolidated per round, so what flows on to the counts
//! and views is one update per state that moved, never one per record.
//!
//! **Digest.** xxh3-128 of the `_id` as text. Two of n distinct `_id`s share a digest with
//! probability at most n²/2¹²⁹ (the birthday bound): 1.5·10⁻²¹ at 10⁹ records. A collision
//! would merge two records into one, so it is not detected, but it is far less likely than an
//! undetected memory error, so it is treated as impossible.
//!
//! **Interning.** A state's index (and its strings') is local to the worker that owns the
//! record and never leaves it: what the operator sends on is the observation itself, once per
//! state and round. So indices need not agree between workers or processes, and no index can be
//! misread elsewhere. Interned states are never forgotten while the follower runs; there are
//! as many as distinct tuples, bounded by producers x classes x classes x windows.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::{self, Read, Write};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::load::Reading;
use crate::record::{Observation, Verdict, Windowing};
use crate::worker_zero::WorkerCell;

/// A record's identity in the follower: xxh3-128 of its `_id` as text.
pub type RecordDigest = u128;

pub fn digest(id: &str) -> RecordDigest {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// What a record contributes to the counts and views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordState {
    /// Its observation; with a window only when views are on.
    Counted(Observation),
    /// Present but not countable. Kept, rather than left out, so that the sidecar's count of
    /// malformed records stays exact as they are fixed or broken by later writes.
    Malformed,
}

impl RecordState {
    /// A record's state in the follower: `None` for a tombstone, which is not kept. `windowing`:
    /// the views' windows, if any.
    pub fn of(reading: &Reading<'_>, windowing: Option<Windowing>) -> Option<RecordState> {
        match reading {
            Reading::Counted { .. } => reading.observation(windowing).map(RecordState::Counted),
            Reading::Tombstone => None,
            Reading::Malformed(_) => Some(RecordState::Malformed),
        }
    }

    /// The `(producer, verdict)` pair the counting function takes, for a counted record.
    pub fn counted(self) -> Option<(String, Verdict)> {
        self.observed().map(|observation| {
            let verdict = observation.verdict();
            (observation.producer_id, verdict)
        })
    }

    /// The observation the views take, for a counted record.
    pub fn observed(self) -> Option<Observation> {
        match self {
            RecordState::Counted(observation) => Some(observation),
            RecordState::Malformed => None,
        }
    }

    pub fn is_malformed(&self) -> bool {
        *self == RecordState::Malformed
    }
}

impl From<Observation> for RecordState {
    fn from(observation: Observation) -> Self {
        RecordState::Counted(observation)
    }
}

/// A record's new state, by the digest of its `_id`; `None` once it is gone (deleted, a
/// tombstone). Upserts are idempotent: sending the same one twice changes nothing.
pub type Upsert = (RecordDigest, Option<RecordState>);

/// Keeps each record's state on the worker that owns its digest and turns upserts into the
/// changes of the records' states, consolidated per round.
///
/// Upserts of a round are applied in the order they arrive, so of two upserts of one record in
/// the same round from the same worker, the later wins (a channel keeps its order; two workers
/// never send the same record in one round). A round's upserts that arrive before the previous
/// rounds are complete wait for them.
///
/// `records` is this worker's state, shared with the worker so that it can write checkpoints
/// between rounds. Whatever it holds when the dataflow starts (a restored checkpoint) enters
/// the collection at time 0.
pub fn track_records<'scope>(
    upserts: Stream<'scope, u64, Vec<Upsert>>,
    records: WorkerCell<Records>,
) -> VecCollection<'scope, u64, RecordState, isize> {
    let by_owner = Exchange::new(|(digest, _): &Upsert| owner_bits(*digest));
    let scope = upserts.scope();
    upserts
        .unary_frontier::<CapacityContainerBuilder<Vec<(RecordState, u64, isize)>>, _, _, _>(
            by_owner,
            "TrackRecords",
            |capability, info| {
                let activator = scope.activator_for(info.address.clone());
                let mut restored = Some(capability);
                let mut rounds: BTreeMap<u64, Round> = BTreeMap::new();
                let mut early: BTreeMap<u64, Vec<Upsert>> = BTreeMap::new();
                // Completed rounds' changes not yet sent, oldest first.
                let mut ready: Ready = Default::default();
                move |(input, frontier), output| {
                    let mut records = records.borrow_mut();
                    if let Some(capability) = restored.take() {
                        let mut session = output.session(&capability);
                        for (state, count) in records.totals() {
                            session.give((state, *capability.time(), count));
                        }
                    }
                    let frontier = frontier.frontier();
                    input.for_each(|capability, data| {
                        let Some(capability) = capability.retain_least(output.output_index()) else { return };
                        let time = *capability.time();
                        let round = rounds.entry(time).or_insert_with(|| Round::new(capability));
                        if frontier.less_than(&time) {
                            early.entry(time).or_default().append(data);
                        } else {
                            data.drain(..).for_each(|upsert| records.apply(upsert, &mut round.changes));
                        }
                    });
                    // Rounds that arrived early, once every earlier round is complete.
                    while let Some(entry) = early.first_entry().filter(|entry| !frontier.less_than(entry.key())) {
                        let (time, batch) = entry.remove_entry();
                        let changes = &mut rounds.get_mut(&time).expect("an early round has its capability").changes;
                        batch.into_iter().for_each(|upsert| records.apply(upsert, changes));
                    }
                    while let Some(entry) = rounds.first_entry().filter(|entry| !frontier.less_equal(entry.key())) {
                        let round = entry.remove();
                        ready.push_back((
                            round.capability,
                            round.changes.into_iter().filter(|(_, d)| *d != 0).collect(),
                        ));
                    }
                    // A bounded share per activation: a full load's round holds a state per distinct
                    // observation, and sent at once every view downstream would hold its own copy of
                    // all of them; sent in shares, each is summed before the next.
                    let mut budget = EMIT_PER_ACTIVATION;
                    while let Some((capability, changes)) = ready.front_mut() {
                        let share = changes.len().min(budget);
                        let mut session = output.session(&*capability);
                        let time = *capability.time();
                        for (state, diff) in changes.drain(changes.len() - share..) {
                            session.give((records.unpack(state), time, diff));
                        }
                        drop(session);
                        budget -= share;
                        if !changes.is_empty() {
                            activator.activate();
                            break;
                        }
                        ready.pop_front();
                    }
                }
            },
        )
        .as_collection()
}

/// Completed rounds' changes of record states still to be sent, oldest first.
type Ready = std::collections::VecDeque<(Capability<u64>, Vec<(Packed, isize)>)>;

/// Record-state changes one activation of [`track_records`] sends at most.
const EMIT_PER_ACTIVATION: usize = 1 << 16;

/// One round's changes of record states, with the capability to send them.
struct Round {
    capability: Capability<u64>,
    changes: FxHashMap<Packed, isize>,
}

impl Round {
    fn new(capability: Capability<u64>) -> Self {
        Round { capability, changes: FxHashMap::default() }
    }
}

/// Which worker owns a record: timely routes by the low bits (or the remainder) of this.
fn owner_bits(digest: RecordDigest) -> u64 {
    digest as u64
}

/// Shards per worker. A map grows by doubling, and while it does the old table and the new one
/// (twice its size) are both allocated; with the state split in many small maps, only one small
/// map grows at a time, so the peak stays close to the steady state.
const SHARDS: usize = 256;

/// The records a worker owns, by digest, and the states it has interned.
pub struct Records {
    shards: Vec<HashMap<Key, Packed, BuildHasherDefault<KeyHasher>>>,
    states: States,
}

impl Default for Records {
    fn default() -> Self {
        Records { shards: (0..SHARDS).map(|_| HashMap::default()).collect(), states: States::default() }
    }
}

impl Records {
    /// Replaces a record's state and notes the change: its old state out, its new one in.
    fn apply(&mut self, (digest, state): Upsert, changes: &mut FxHashMap<Packed, isize>) {
        let new = state.map(|state| self.pack(&state));
        let shard = &mut self.shards[shard_of(digest)];
        let key = Key::of(digest);
        let old = match new {
            Some(new) => shard.insert(key, new),
            None => {
                let old = shard.remove(&key);
                // Give memory back after mass deletions; halving at a quarter full never thrashes.
                if shard.len() * 4 < shard.capacity() && shard.capacity() > 64 {
                    shard.shrink_to(shard.len() * 2);
                }
                old
            }
        };
        if old == new {
            return;
        }
        if let Some(old) = old {
            *changes.entry(old).or_default() -= 1;
        }
        if let Some(new) = new {
            *changes.entry(new).or_default() += 1;
        }
    }

    fn pack(&mut self, state: &RecordState) -> Packed {
        match state {
            RecordState::Counted(observation) => self.states.intern(observation),
            RecordState::Malformed => Packed::MALFORMED,
        }
    }

    fn unpack(&self, packed: Packed) -> RecordState {
        match packed {
            Packed::MALFORMED => RecordState::Malformed,
            packed => RecordState::Counted(self.states.observation(packed)),
        }
    }
}

impl Records {
    /// How many records this worker holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many records are in each state: what the counts start from after a restore.
    fn totals(&self) -> Vec<(RecordState, isize)> {
        let mut totals: FxHashMap<Packed, isize> = FxHashMap::default();
        self.shards.iter().flat_map(HashMap::values).for_each(|packed| *totals.entry(*packed).or_default() += 1);
        totals.into_iter().map(|(packed, count)| (self.unpack(packed), count)).collect()
    }

    /// Writes this worker's state for a checkpoint: its strings by index, its states by index,
    /// then every record's digest and state index (20 bytes each); little-endian throughout.
    /// Returns how many records.
    pub fn save(&self, out: &mut impl Write) -> io::Result<u64> {
        self.states.save(out)?;
        let records = self.len() as u64;
        out.write_all(&records.to_le_bytes())?;
        for (key, packed) in self.shards.iter().flat_map(|shard| shard.iter()) {
            out.write_all(&key.digest().to_le_bytes())?;
            out.write_all(&packed.0.to_le_bytes())?;
        }
        Ok(records)
    }

    /// The state [`Records::save`] wrote. Indices keep their meaning because strings and states
    /// are interned again in index order; an index past what the file has is refused.
    pub fn restore(input: &mut impl Read) -> io::Result<Records> {
        let mut records = Records { states: States::restore(input)?, ..Records::default() };
        let mut count = [0u8; 8];
        input.read_exact(&mut count)?;
        for _ in 0..u64::from_le_bytes(count) {
            let mut entry = [0u8; 20];
            input.read_exact(&mut entry)?;
            let digest = u128::from_le_bytes(entry[..16].try_into().expect("16 bytes"));
            let packed = Packed(u32::from_le_bytes(entry[16..].try_into().expect("4 bytes")));
            if packed != Packed::MALFORMED && packed.0 as usize >= records.states.keys.len() {
                return Err(invalid("a record names a state the checkpoint does not have"));
            }
            records.shards[shard_of(digest)].insert(Key::of(digest), packed);
        }
        Ok(records)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A worker's state from upserts applied in order (tests, examples and benchmarks).
impl FromIterator<Upsert> for Records {
    fn from_iter<I: IntoIterator<Item = Upsert>>(upserts: I) -> Self {
        let mut records = Records::default();
        let mut changes = FxHashMap::default();
        upserts.into_iter().for_each(|upsert| records.apply(upsert, &mut changes));
        records
    }
}

impl Records {
    /// Every record's digest and state, sorted by digest (tests).
    pub fn entries(&self) -> Vec<(RecordDigest, RecordState)> {
        let mut entries: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(key, packed)| (key.digest(), self.unpack(*packed))))
            .collect();
        entries.sort();
        entries
    }
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

/// Which of a worker's maps holds a record: bits of the digest that the owner was not chosen by
/// (the top bits of the low word), so every shard gets its share.
fn shard_of(digest: RecordDigest) -> usize {
    (digest as u64 >> 56) as usize % SHARDS
}

/// A digest as a map key: four 32-bit words, so that a key and its 32-bit state take 20 bytes
/// (a `u128` would be aligned to 16 and take 32).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u32; 4]);

impl Key {
    fn of(digest: RecordDigest) -> Self {
        Key([digest as u32, (digest >> 32) as u32, (digest >> 64) as u32, (digest >> 96) as u32])
    }

    fn digest(self) -> RecordDigest {
        let [a, b, c, d] = self.0.map(u128::from);
        a | b << 32 | c << 64 | d << 96
    }
}

impl Hash for Key {
    /// The digest is already uniform: its high word, which neither the owner nor the shard was
    /// chosen by, is the hash.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[2]) | u64::from(self.0[3]) << 32);
    }
}

/// Passes a [`Key`]'s word through as its hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else in rather than ignore it.
        bytes.iter().for_each(|byte| self.0 = self.0.rotate_left(8) ^ u64::from(*byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

/// A record's state in 32 bits: the index of its interned state, or malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Packed(u32);

impl Packed {
    const MALFORMED: Packed = Packed(u32::MAX);
}

/// States one worker can tell apart.
const MAX_STATES: usize = u32::MAX as usize;
const NO_LABEL: u32 = u32::MAX;
const NO_WINDOW: i64 = i64::MIN;

/// An observation with its strings interned: 20 bytes however long the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StateKey {
    producer: u32,
    truth: u32,
    /// `NO_LABEL` while pending.
    inferred: u32,
    /// `NO_WINDOW` without one.
    window: i64,
}

/// The distinct observations of one worker's records, and the strings they are made of.
#[derive(Default)]
struct States {
    strings: Strings,
    index: FxHashMap<StateKey, u32>,
    keys: Vec<StateKey>,
}

impl States {
    fn intern(&mut self, observation: &Observation) -> Packed {
        let key = StateKey {
            producer: self.strings.intern(&observation.producer_id),
            truth: self.strings.intern(&observation.ground_truth),
            inferred: observation.inferred.as_deref().map_or(NO_LABEL, |label| self.strings.intern(label)),
            window: observation.window.unwrap_or(NO_WINDOW),
        };
        if let Some(&index) = self.index.get(&key) {
            return Packed(index);
        }
        assert!(self.keys.len() < MAX_STATES, "more than {MAX_STATES} distinct record states on one worker");
        let index = self.keys.len() as u32;
        self.keys.push(key);
        self.index.insert(key, index);
        Packed(index)
    }

    fn observation(&self, packed: Packed) -> Observation {
        let key = self.keys[packed.0 as usize];
        let text = |index: u32| self.strings.names[index as usize].to_string();
        Observation {
            producer_id: text(key.producer),
            ground_truth: text(key.truth),
            inferred: (key.inferred != NO_LABEL).then(|| text(key.inferred)),
            window: (key.window != NO_WINDOW).then_some(key.window),
        }
    }

    /// The strings (count, then length and bytes of each), then the states (count, then 20
    /// bytes each).
    fn save(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&(self.strings.names.len() as u32).to_le_bytes())?;
        for name in &self.strings.names {
            out.write_all(&(name.len() as u32).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
        }
        out.write_all(&(self.keys.len() as u32).to_le_bytes())?;
        for key in &self.keys {
            for word in [key.producer, key.truth, key.inferred] {
                out.write_all(&word.to_le_bytes())?;
            }
            out.write_all(&key.window.to_le_bytes())?;
        }
        Ok(())
    }

    fn restore(input: &mut impl Read) -> io::Result<States> {
        let mut states = States::default();
        let strings = read_u32(input)?;
        for _ in 0..strings {
            let len = read_u32(input)? as u64;
            let mut name = Vec::new();
            input.take(len).read_to_end(&mut name)?;
            if name.len() as u64 != len {
                return Err(invalid("a name is cut short"));
            }
            let name = String::from_utf8(name).map_err(|_| invalid("a name is not UTF-8"))?;
            states.strings.intern(&name);
        }
        if states.strings.names.len() != strings as usize {
            return Err(invalid("a name is repeated"));
        }
        let known = |index: u32| index < strings;
        for _ in 0..read_u32(input)? {
            let mut entry = [0u8; 20];
            input.read_exact(&mut entry)?;
            let word = |at: usize| u32::from_le_bytes(entry[at..at + 4].try_into().expect("4 bytes"));
            let key = StateKey {
                producer: word(0),
                truth: word(4),
                inferred: word(8),
                window: i64::from_le_bytes(entry[12..].try_into().expect("8 bytes")),
            };
            if !known(key.producer) || !known(key.truth) || !(key.inferred == NO_LABEL || known(key.inferred)) {
                return Err(invalid("a state names a string the checkpoint does not have"));
            }
            let index = states.keys.len() as u32;
            if states.index.insert(key, index).is_some() {
                return Err(invalid("a state is repeated"));
            }
            states.keys.push(key);
        }
        Ok(states)
    }
}

/// Producer names and labels interned on one worker.
#[derive(Default)]
struct Strings {
    index: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Strings {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        assert!(self.names.len() < NO_LABEL as usize, "more than {NO_LABEL} names on one worker");
        let index = self.names.len() as u32;
        self.names.push(name.into());
        self.index.insert(name.into(), index);
        index
    }
}

#[cfg(test)]
mod tests {
    fn some_records(n: u64) -> Records {
        let mut records = Records::default();
        let mut changes = FxHashMap::default();
        for i in 0..n {
            let state = match i % 3 {
                0 => Some(RecordState::Malformed),
                1 => counted(&format!("p,\"{}", i % 7), Verdict::Incorrect),
                _ => Some(RecordState::Counted(
                    Observation::new(&format!("q{}", i % 5), "cat", None).in_window(i as i64 % 4),
                )),
            };
            records.apply((digest(&format!("id/{i}")), state), &mut changes);
        }
        records
    }

    fn sorted_totals(records: &Records) -> Vec<(RecordState, isize)> {
        let mut totals = records.totals();
        totals.sort();
        totals
    }

    #[test]
    fn a_workers_state_survives_save_and_restore() {
        let records = some_records(5_000);
        let mut bytes = Vec::new();
        assert_eq!(records.save(&mut bytes).unwrap(), 5_000);
        let restored = Records::restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.len(), 5_000);
        assert_eq!(sorted_totals(&restored), sorted_totals(&records));
        for (shard, restored_shard) in records.shards.iter().zip(&restored.shards) {
            for (key, packed) in shard {
                assert_eq!(restored.unpack(restored_shard[key]), records.unpack(*packed));
            }
        }
    }

    #[test]
    fn a_cut_short_or_inconsistent_state_is_refused() {
        let mut bytes = Vec::new();
        some_records(100).save(&mut bytes).unwrap();
        for cut in [0, 3, 9, bytes.len() - 1] {
            assert!(Records::restore(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A record whose state index is past the states the file has.
        let mut bad = Vec::new();
        bad.extend(0u32.to_le_bytes());
        bad.extend(0u32.to_le_bytes());
        bad.extend(1u64.to_le_bytes());
        bad.extend(7u128.to_le_bytes());
        bad.extend(5u32.to_le_bytes());
        assert_eq!(Records::restore(&mut bad.as_slice()).err().unwrap().kind(), io::ErrorKind::InvalidData);
        // A state whose producer is past the names the file has.
        let mut bad = Vec::new();
        bad.extend(1u32.to_le_bytes());
        bad.extend(1u32.to_le_bytes());
        bad.extend(b"p");
        bad.extend(1u32.to_le_bytes());
        [3u32, 0, NO_LABEL].iter().for_each(|word| bad.extend(word.to_le_bytes()));
        bad.extend(NO_WINDOW.to_le_bytes());
        bad.extend(0u64.to_le_bytes());
        assert_eq!(Records::restore(&mut bad.as_slice()).err().unwrap().kind(), io::ErrorKind::InvalidData);
    }

    use std::cell::RefCell;
    use std::rc::Rc;

    use timely::dataflow::operators::{Concat, Exchange as _, Input, Inspect, Probe};
    use timely::dataflow::{InputHandle, ProbeHandle};

    use super::*;

    type Totals = BTreeMap<RecordState, isize>;

    /// Feeds `rounds` of upserts (by `_id`) through `track_records` on `workers` workers, and
    /// returns the accumulated record states after each round, and every update seen.
    fn states_after_each_round(workers: usize, rounds: Vec<Vec<(&'static str, Option<RecordState>)>>) -> Vec<Totals> {
        let config = timely::Config::process(workers);
        let results = timely::execute(config, move |worker| {
            let totals: Rc<RefCell<Totals>> = Default::default();
            let sink = totals.clone();
            let probe = ProbeHandle::new();
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Upsert>>>::new();
            worker.dataflow::<u64, _, _>(|scope| {
                track_records(scope.input_from(&mut input), Default::default())
                    .inner
                    .exchange(|_| 0)
                    .inspect(move |(state, _time, diff)| *sink.borrow_mut().entry(state.clone()).or_default() += diff)
                    .probe_with(&probe);
            });
            let mut snapshots = Vec::new();
            for (round, upserts) in rounds.iter().enumerate() {
                // Worker 0 sends the changes, as in the follower.
                if worker.index() == 0 {
                    upserts.iter().for_each(|(id, state)| input.send((digest(id), state.clone())));
                }
                input.advance_to(round as u64 + 1);
                worker.step_while(|| probe.less_than(input.time()));
                totals.borrow_mut().retain(|_, diff| *diff != 0);
                snapshots.push(totals.borrow().clone());
            }
            snapshots
        })
        .unwrap();
        results.join().into_iter().next().unwrap().unwrap()
    }

    /// A counted record of `producer` with `verdict`.
    pub(crate) fn counted(producer: &str, verdict: Verdict) -> Option<RecordState> {
        let inferred = match verdict {
            Verdict::Correct => Some("cat"),
            Verdict::Incorrect => Some("dog"),
            Verdict::Pending => None,
        };
        Some(RecordState::Counted(Observation::new(producer, "cat", inferred)))
    }

    fn totals<const N: usize>(entries: [(Option<RecordState>, isize); N]) -> Totals {
        entries.into_iter().map(|(state, n)| (state.unwrap(), n)).collect()
    }

    #[test]
    fn changes_retract_the_old_state_and_add_the_new_one() {
        use Verdict::*;
        let rounds = vec![
            // insert
            vec![("a", counted("p", Correct)), ("b", counted("p", Correct)), ("c", counted("q", Pending))],
            // change, delete, counted -> malformed
            vec![("a", counted("p", Incorrect)), ("b", None), ("c", Some(RecordState::Malformed))],
            // malformed -> counted, a delete of a record never seen, the same state again
            vec![("c", counted("q", Correct)), ("nobody", None), ("a", counted("p", Incorrect))],
            // the same record twice in one round: the later wins
            vec![("a", counted("r", Pending)), ("a", counted("p", Correct))],
        ];
        for workers in [1, 3] {
            let snapshots = states_after_each_round(workers, rounds.clone());
            assert_eq!(snapshots[0], totals([(counted("p", Correct), 2), (counted("q", Pending), 1)]), "{workers}");
            assert_eq!(snapshots[1], totals([(counted("p", Incorrect), 1), (Some(RecordState::Malformed), 1)]));
            assert_eq!(snapshots[2], totals([(counted("p", Incorrect), 1), (counted("q", Correct), 1)]));
            assert_eq!(snapshots[3], totals([(counted("p", Correct), 1), (counted("q", Correct), 1)]));
        }
    }

    /// A later round's upserts that arrive while an earlier round is still open wait for it:
    /// applied first, they would be undone by the earlier round's.
    #[test]
    fn a_round_that_arrives_early_waits_for_the_rounds_before_it() {
        let updates = timely::execute_directly(|worker| {
            let seen: Rc<RefCell<Vec<(RecordState, u64, isize)>>> = Default::default();
            let sink = seen.clone();
            let probe = ProbeHandle::new();
            let mut early = InputHandle::<u64, CapacityContainerBuilder<Vec<Upsert>>>::new();
            let mut late = InputHandle::<u64, CapacityContainerBuilder<Vec<Upsert>>>::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let upserts = scope.input_from(&mut early).concat(scope.input_from(&mut late));
                track_records(upserts, Default::default())
                    .inner
                    .inspect(move |update| sink.borrow_mut().push(update.clone()))
                    .probe_with(&probe);
            });
            early.advance_to(1);
            early.send((digest("a"), counted("p", Verdict::Incorrect)));
            early.advance_to(2);
            // Round 1 reaches the operator while round 0 is still open (`late` is at 0).
            (0..10).for_each(|_| {
                worker.step();
            });
            late.send((digest("a"), counted("p", Verdict::Correct)));
            late.advance_to(2);
            worker.step_while(|| probe.less_than(&2));
            let mut updates = seen.borrow().clone();
            updates.sort_by_key(|(state, time, diff)| (*time, *diff, state.clone()));
            updates
        });
        let state = |verdict| counted("p", verdict).unwrap();
        assert_eq!(
            updates,
            [(state(Verdict::Correct), 0, 1), (state(Verdict::Correct), 1, -1), (state(Verdict::Incorrect), 1, 1)]
        );
    }

    /// A restarted follower's state enters the counts at time 0, and later changes move it as if
    /// it had been loaded.
    #[test]
    fn a_restored_state_enters_at_time_zero_and_later_changes_move_it() {
        use Verdict::*;
        let snapshots = timely::execute_directly(|worker| {
            let restored: Records = [("a", counted("p", Incorrect)), ("b", counted("p", Incorrect))]
                .into_iter()
                .chain([("c", Some(RecordState::Malformed))])
                .map(|(id, state)| (digest(id), state))
                .collect();
            let totals: Rc<RefCell<Totals>> = Default::default();
            let sink = totals.clone();
            let probe = ProbeHandle::new();
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Upsert>>>::new();
            worker.dataflow::<u64, _, _>(|scope| {
                track_records(scope.input_from(&mut input), Rc::new(RefCell::new(restored)))
                    .inner
                    .inspect(move |(state, _time, diff)| *sink.borrow_mut().entry(state.clone()).or_default() += diff)
                    .probe_with(&probe);
            });
            let mut snapshots = Vec::new();
            for (round, upserts) in
                [vec![], vec![("a", counted("p", Correct)), ("c", None), ("d", counted("q", Pending))]]
                    .into_iter()
                    .enumerate()
            {
                upserts.into_iter().for_each(|(id, state)| input.send((digest(id), state)));
                input.advance_to(round as u64 + 1);
                worker.step_while(|| probe.less_than(input.time()));
                totals.borrow_mut().retain(|_, diff| *diff != 0);
                snapshots.push(totals.borrow().clone());
            }
            snapshots
        });
        assert_eq!(snapshots[0], totals([(counted("p", Incorrect), 2), (Some(RecordState::Malformed), 1)]));
        assert_eq!(
            snapshots[1],
            totals([(counted("p", Incorrect), 1), (counted("p", Correct), 1), (counted("q", Pending), 1)])
        );
    }

    #[test]
    fn many_records_and_their_deletion_leave_nothing() {
        let ids: Vec<&'static str> = (0..20_000).map(|n| &*format!("p{}/{n}", n % 7).leak()).collect();
        let insert = ids.iter().map(|id| (*id, counted(&id[..2], Verdict::Incorrect))).collect();
        let delete = ids.iter().map(|id| (*id, None)).collect();
        let snapshots = states_after_each_round(2, vec![insert, delete]);
        let expected: Totals = (0..7).map(|p| (counted(&format!("p{p}"), Verdict::Incorrect).unwrap(), 2857)).collect();
        let mut expected = expected;
        *expected.get_mut(&counted("p0", Verdict::Incorrect).unwrap()).unwrap() += 1;
        assert_eq!(snapshots[0], expected);
        assert_eq!(snapshots[1], Totals::new());
    }

    /// A round with more distinct states than one activation sends arrives whole, at its time.
    #[test]
    fn a_round_larger_than_one_share_arrives_whole() {
        let n = EMIT_PER_ACTIVATION + 1_000;
        let ids: Vec<&'static str> = (0..n).map(|i| &*format!("id/{i}").leak()).collect();
        let state =
            |i: usize| Some(RecordState::Counted(Observation::new("p", "cat", Some("dog")).in_window(i as i64)));
        let insert = ids.iter().enumerate().map(|(i, id)| (*id, state(i))).collect();
        let relabel = vec![(ids[0], counted("p", Verdict::Correct))];
        let snapshots = states_after_each_round(1, vec![insert, relabel]);
        assert_eq!(snapshots[0].len(), n);
        assert!(snapshots[0].values().all(|count| *count == 1));
        assert_eq!(snapshots[1].len(), n);
        assert_eq!(snapshots[1].get(&counted("p", Verdict::Correct).unwrap()), Some(&1));
        assert_eq!(snapshots[1].get(&state(0).unwrap()), None);
    }

    #[test]
    fn a_state_packs_into_32_bits_and_back() {
        let mut records = Records::default();
        let windowed = Some(RecordState::Counted(Observation::new("p", "a,\"b\"", Some("c")).in_window(-7)));
        for state in
            [counted("p", Verdict::Correct), counted("q", Verdict::Pending), windowed, Some(RecordState::Malformed)]
        {
            let state = state.unwrap();
            let packed = records.pack(&state);
            assert_eq!(records.unpack(packed), state);
        }
        assert_eq!(std::mem::size_of::<(Key, Packed)>(), 20);
    }
}
