//! The MongoDB source. The collection is split into `_id` ranges, one per worker of the whole
//! cluster, so that every worker runs its own cursor over a disjoint share (the `_id` index
//! serves each range). Worker 0 plans the split from a `$sample` of ids, as MongoDB's own Spark
//! connector does, or on FerretDB v1 (no `$sample`) from the smallest and largest id, found through
//! the index that scripts/ferretdb/id-range-pushdown.patch adds; only `ProducerID`, `GroundTruth`,
//! `Inferred` and `Deleted` are fetched.

use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use iot_schema::{field, redact};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::bounded;
use super::id_split::{char_at, char_index, even_cuts, DIGITS};
use crate::load::{Loader, Reading};
use crate::progress::Progress;
use crate::stamp::Stamp;

/// Collections smaller than this are read by one worker: splitting costs more than it saves.
const MIN_DOCS_TO_SPLIT: u64 = 20_000;
/// Ids sampled per share to place the split points.
const SAMPLES_PER_SHARE: u64 = 64;

#[derive(Clone, Debug)]
pub struct MongoSource {
    pub uri: String,
    pub db: String,
    pub collection: String,
    /// Documents per cursor batch.
    pub batch_size: u32,
    /// How long to wait for the server to be reachable before giving up.
    pub timeout: Duration,
    /// How long one round trip (a query, a batch, a lookup) may go unanswered before the server
    /// counts as stalled.
    pub op_timeout: Duration,
}

/// One worker's share of the collection: string ids in `[from, to)`, open where `None`; share 0
/// also takes documents whose `_id` is not a string, which no string range can hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub from: Option<String>,
    pub to: Option<String>,
    pub whole: bool,
    pub non_string_ids: bool,
}

impl KeyRange {
    fn everything() -> Self {
        KeyRange { whole: true, ..KeyRange::default() }
    }

    fn empty() -> Self {
        KeyRange { from: Some(String::new()), to: Some(String::new()), ..KeyRange::default() }
    }

    fn is_empty(&self) -> bool {
        !self.whole && !self.non_string_ids && self.from.is_some() && self.from == self.to
    }

    /// The filters whose results together make this share.
    fn filters(&self) -> Vec<Document> {
        if self.whole {
            return vec![doc! {}];
        }
        let mut filters = Vec::new();
        if !self.is_empty() {
            let mut bounds = doc! { "$gte": self.from.clone().unwrap_or_default() };
            if let Some(to) = &self.to {
                bounds.insert("$lt", to);
            }
            filters.push(doc! { field::DOC_ID: bounds });
        }
        if self.non_string_ids {
            filters.push(doc! { field::DOC_ID: { "$not": { "$type": "string" } } });
        }
        filters
    }
}

/// How a server without `$sample` reads an `_id` range, from the `filterPushdown` of FerretDB's
/// `explain`.
#[derive(Debug, PartialEq, Eq)]
enum RangeReads {
    /// Through an index (FerretDB with scripts/ferretdb/id-range-pushdown.patch).
    Indexed,
    /// By reading and decoding the whole collection (FerretDB v1.24 as released).
    WholeCollection,
    /// The server does not say.
    Unknown,
}

/// Cuts sorted sample ids into `shares` contiguous string ranges covering every string.
fn ranges_from_sample(mut sample: Vec<String>, shares: usize) -> Vec<KeyRange> {
    sample.sort();
    sample.dedup();
    let cuts: Vec<String> = (1..shares).map(|i| sample[i * sample.len() / shares].clone()).collect();
    ranges_from_cuts(cuts, shares)
}

/// `shares` contiguous string ranges covering every string, split at `cuts`.
fn ranges_from_cuts(mut cuts: Vec<String>, shares: usize) -> Vec<KeyRange> {
    cuts.sort();
    cuts.dedup();
    let mut ranges = Vec::with_capacity(shares);
    let mut from: Option<String> = None;
    for cut in cuts {
        ranges.push(KeyRange { from: from.take(), to: Some(cut.clone()), ..KeyRange::default() });
        from = Some(cut);
    }
    ranges.push(KeyRange { from, to: None, ..KeyRange::default() });
    ranges[0].non_string_ids = true;
    ranges.resize(shares, KeyRange::empty()); // duplicate ids in the sample: fewer, wider ranges
    ranges
}

impl MongoSource {
    pub fn connect(&self) -> Result<Collection<RawDocumentBuf>> {
        Ok(self.client()?.database(&self.db).collection(&self.collection))
    }

    pub fn client(&self) -> Result<Client> {
        let mut options = bounded::call(self.timeout, ClientOptions::parse(&self.uri))
            .with_context(|| format!("{:?} is not a valid MongoDB connection string", redact::uri(&self.uri)))?;
        options.server_selection_timeout = Some(self.timeout);
        options.connect_timeout = Some(self.timeout);
        options.app_name = Some("iot-dataflow".into());
        Ok(bounded::enter(|| Client::with_options(options))?)
    }

    /// The source as messages and the as-of sidecar name it: no password.
    pub fn describe(&self) -> String {
        format!("{} {}.{}", redact::uri(&self.uri), self.db, self.collection)
    }

    /// Why a read failed: the server stalled (it answered nothing within `--mongo-op-timeout`),
    /// or it could not be reached at all.
    pub fn read_failed(&self, err: anyhow::Error) -> anyhow::Error {
        if bounded::is_stall(&err) {
            return err.context(format!(
                "MongoDB at {} stopped answering while {}.{} was read",
                redact::uri(&self.uri),
                self.db,
                self.collection
            ));
        }
        err.context(format!(
            "cannot read {}.{} from MongoDB at {} within {}s; is the server running \
             (`scripts/stack up` starts one) and is --mongo-uri right?",
            self.db,
            self.collection,
            redact::uri(&self.uri),
            self.timeout.as_secs()
        ))
    }

    /// Worker 0 decides every worker's share: `shares` ranges, in worker order.
    pub fn plan(&self, shares: usize) -> Result<Vec<KeyRange>> {
        let whole = || {
            let mut plan = vec![KeyRange::everything()];
            plan.resize(shares, KeyRange::empty());
            plan
        };
        if shares == 1 {
            return Ok(whole()); // no planning query: on FerretDB even a count is a full scan
        }
        let collection = self.connect()?;
        let size = SAMPLES_PER_SHARE as usize * shares;
        let (sample, population) = match self.sample_ids(&collection, size) {
            // A short sample means the collection is smaller than the sample.
            Ok(sample) => {
                let population = if sample.len() < size { sample.len() as u64 } else { u64::MAX };
                (sample, population)
            }
            Err(err) if is_not_implemented(&err) => match self.range_reads(&collection) {
                RangeReads::Indexed => return self.plan_from_id_ends(&collection, shares),
                RangeReads::WholeCollection => {
                    tracing::warn!(
                        "the server reads an _id range by decoding the whole collection (FerretDB without \
                         scripts/ferretdb/id-range-pushdown.patch; run scripts/setup ferretdb): one worker \
                         reads it all, as more would each decode it once"
                    );
                    return Ok(whole());
                }
                RangeReads::Unknown => self.scan_sample_ids(&collection, size).map_err(|err| self.read_failed(err))?,
            },
            Err(err) => return Err(self.read_failed(err)),
        };
        if population < MIN_DOCS_TO_SPLIT || sample.is_empty() {
            return Ok(whole());
        }
        tracing::info!("split into _id ranges from a sample of {} ids", sample.len());
        Ok(ranges_from_sample(sample, shares))
    }

    /// Random ids through `$sample`, which MongoDB serves from a random cursor.
    fn sample_ids(&self, collection: &Collection<RawDocumentBuf>, size: usize) -> Result<Vec<String>> {
        let pipeline = [doc! { "$sample": { "size": size as i64 } }, doc! { "$project": { field::DOC_ID: 1 } }];
        let mut sample = Vec::with_capacity(size);
        let query = collection.aggregate(pipeline).max_time(self.op_timeout).with_type::<RawDocumentBuf>();
        bounded::for_each(self.op_timeout, query, |document| {
            if let Ok(Some(RawBsonRef::String(id))) = document.get(field::DOC_ID) {
                sample.push(id.to_owned());
            }
        })?;
        Ok(sample)
    }

    /// Asks the server (FerretDB's `explain`) how it would read a range of string ids.
    fn range_reads(&self, collection: &Collection<RawDocumentBuf>) -> RangeReads {
        let explain = doc! {
            "explain": { "find": collection.name(), "filter": { field::DOC_ID: { "$gte": "" } } },
            "verbosity": "queryPlanner",
        };
        let database = collection.client().database(&self.db);
        match bounded::call(self.op_timeout, database.run_command(explain))
            .map(|answer| answer.get_bool("filterPushdown"))
        {
            Ok(Ok(true)) => RangeReads::Indexed,
            Ok(Ok(false)) => RangeReads::WholeCollection,
            _ => RangeReads::Unknown,
        }
    }

    /// Split points spread evenly between the smallest and the largest string id, both found by
    /// one-document range reads through the index: tens of round trips, no scan. Small collections
    /// are split too: finding out their size would cost a scan, and a short share costs little.
    fn plan_from_id_ends(&self, collection: &Collection<RawDocumentBuf>, shares: usize) -> Result<Vec<KeyRange>> {
        let ends = self.first_id_from(collection, "").and_then(|first| match first {
            Some(first) => Ok(Some((self.last_id(collection, &first)?, first))),
            None => Ok(None),
        });
        let cuts = match ends.map_err(|err| self.read_failed(err))? {
            Some((last, first)) => even_cuts(&first, &last, shares),
            None => Vec::new(), // no string ids: share 0 reads the rest
        };
        tracing::info!("split into _id ranges at {cuts:?}, spread between the smallest and the largest id");
        Ok(ranges_from_cuts(cuts, shares))
    }

    /// The smallest string id at or above `from`: the index serves the range in `_id` order.
    /// (Without such an index it is just some id above `from`, which only unbalances the split.)
    fn first_id_from(&self, collection: &Collection<RawDocumentBuf>, from: &str) -> Result<Option<String>> {
        let query = collection
            .find(doc! { field::DOC_ID: { "$gte": from } })
            .projection(doc! { field::DOC_ID: 1 })
            .limit(1)
            .max_time(self.op_timeout);
        let mut found = None;
        bounded::for_each(self.op_timeout, query, |document| {
            if let Ok(Some(RawBsonRef::String(id))) = document.get(field::DOC_ID) {
                found = Some(id.to_owned());
            }
        })?;
        Ok(found)
    }

    /// The largest string id, as far as the cuts need it (its prefix shared with `first`, then
    /// [`DIGITS`] characters): each character is the largest `c` such that some id is at or above
    /// the characters found so far followed by `c`, found by a binary search of one-document reads.
    /// Probes never hold a NUL, which the server would not push down.
    fn last_id(&self, collection: &Collection<RawDocumentBuf>, first: &str) -> Result<String> {
        let exists_from = |text: String| -> Result<bool> { Ok(self.first_id_from(collection, &text)?.is_some()) };
        let mut last = String::new();
        let mut first_chars = first.chars();
        let mut digits = 0;
        while digits < DIGITS && !last.contains('\0') {
            let probe = |index: u32| exists_from(format!("{last}{}", char_at(index)));
            // On `first`'s prefix the character is `first`'s unless an id starts above it.
            let lowest = match first_chars.next().filter(|_| digits == 0) {
                Some(c) if !probe(char_index(c) + 1)? => {
                    last.push(c);
                    continue;
                }
                Some(c) => char_index(c) + 1,
                None if probe(1)? => 1,
                None => break, // no id goes on after `last`: it is the largest id
            };
            let highest = if lowest < 0x80 && !probe(0x80)? { 0x7F } else { char_index(char::MAX) };
            let found = largest_where(lowest, highest, probe)?;
            last.push(char_at(found));
            digits += 1;
        }
        Ok(last)
    }

    /// For servers without `$sample` (FerretDB v1): a reservoir sample over a scan of the ids.
    /// Returns the sample and how many ids were scanned.
    fn scan_sample_ids(&self, collection: &Collection<RawDocumentBuf>, size: usize) -> Result<(Vec<String>, u64)> {
        tracing::info!("the server has no $sample; planning the split from a scan of the ids");
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut sample = Vec::with_capacity(size);
        let query = collection
            .find(doc! {})
            .projection(doc! { field::DOC_ID: 1 })
            .batch_size(self.batch_size)
            .max_time(self.op_timeout);
        let mut scanned = 0u64;
        bounded::for_each(self.op_timeout, query, |document| {
            let seen = scanned;
            scanned += 1;
            let Ok(Some(RawBsonRef::String(id))) = document.get(field::DOC_ID) else { return };
            if sample.len() < size {
                sample.push(id.to_owned());
            } else {
                let slot = rng.random_range(0..=seen as usize);
                if slot < size {
                    sample[slot] = id.to_owned();
                }
            }
        })?;
        Ok((sample, scanned))
    }

    /// Reads one share and loads it.
    pub fn load_range(&self, range: &KeyRange, loader: &mut Loader, progress: &Progress) -> Result<()> {
        self.scan_range(range, progress, |document| loader.load(read_document(document), || document_id(document)))
    }

    /// Calls `each` for every document of one share, fetching only the fields the count needs.
    pub fn scan_range(&self, range: &KeyRange, progress: &Progress, mut each: impl FnMut(&RawDocument)) -> Result<()> {
        let collection = self.connect()?;
        for filter in range.filters() {
            let query = collection
                .find(filter)
                .projection(counted_fields())
                .batch_size(self.batch_size)
                .max_time(self.op_timeout);
            let mut unreported = 0;
            bounded::for_each(self.op_timeout, query, |document| {
                each(document);
                unreported += 1;
                if unreported == 4096 {
                    progress.add(unreported);
                    unreported = 0;
                }
            })
            .map_err(|err| self.read_failed(err))?;
            progress.add(unreported);
        }
        Ok(())
    }
}

/// The projection of every read: what decides a verdict, and tombstones.
pub fn counted_fields() -> Document {
    doc! { field::PRODUCER_ID: 1, field::GROUND_TRUTH: 1, field::INFERRED: 1, field::INFERRED_AT: 1, field::DELETED: 1 }
}

/// What one stored document says.
pub fn read_document(document: &RawDocument) -> Reading<'_> {
    let get = |name| document.get(name).ok().flatten();
    if let Some(RawBsonRef::Boolean(true)) = get(field::DELETED) {
        return Reading::Tombstone;
    }
    let text = |name| match get(name) {
        Some(RawBsonRef::String(text)) => Ok(text),
        None | Some(RawBsonRef::Null) => Err(format!("{name} is missing")),
        Some(_) => Err(format!("{name} is not a string")),
    };
    let inferred = match get(field::INFERRED) {
        None | Some(RawBsonRef::Null) => Ok(None),
        Some(RawBsonRef::String(label)) => Ok(Some(label)),
        Some(_) => Err("Inferred is not a string".to_owned()),
    };
    let read = || -> Result<Reading<'_>, String> {
        Ok(Reading::Counted {
            producer_id: text(field::PRODUCER_ID)?,
            ground_truth: text(field::GROUND_TRUTH)?,
            inferred: inferred?,
            inferred_at: stamp(get(field::INFERRED_AT)),
        })
    };
    read().unwrap_or_else(|reason| Reading::Malformed(reason.into()))
}

/// `InferredAt` as stored: a BSON date, or what a hand-made document holds instead.
fn stamp(value: Option<RawBsonRef<'_>>) -> Stamp<'_> {
    match value {
        None | Some(RawBsonRef::Null) => Stamp::Absent,
        Some(RawBsonRef::DateTime(time)) => Stamp::Millis(time.timestamp_millis()),
        Some(RawBsonRef::String(text)) => Stamp::Text(text.into()),
        Some(RawBsonRef::Int64(ms)) => Stamp::Millis(ms),
        Some(_) => Stamp::Unreadable,
    }
}

/// The document's `_id` as text, for keys and reports.
pub fn document_id(document: &RawDocument) -> String {
    describe_id(document.get(field::DOC_ID).ok().flatten())
}

/// The largest `n` in `[lowest, highest]` for which `holds(n)`, given that `holds(lowest)` and that
/// `holds` is true up to some point and false after it.
fn largest_where(lowest: u32, highest: u32, mut holds: impl FnMut(u32) -> Result<bool>) -> Result<u32> {
    let (mut low, mut high) = (lowest, highest);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if holds(middle)? {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Ok(low)
}

fn is_not_implemented(err: &anyhow::Error) -> bool {
    // 238 NotImplemented (FerretDB), 40324 unrecognized pipeline stage (older MongoDB).
    err.downcast_ref::<mongodb::error::Error>().is_some_and(
        |err| matches!(&*err.kind, mongodb::error::ErrorKind::Command(e) if e.code == 238 || e.code == 40324),
    )
}

pub(crate) fn describe_id(id: Option<RawBsonRef<'_>>) -> String {
    match id {
        Some(RawBsonRef::String(id)) => id.to_owned(),
        Some(other) => Bson::try_from(other.to_raw_bson())
            .map(|id| id.into_relaxed_extjson().to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
        None => "(no _id)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_ranges_are_contiguous_and_cover_all_strings() {
        let sample: Vec<String> = (0..1000).map(|i| format!("p{:02}/{i}", i % 37)).collect();
        let ranges = ranges_from_sample(sample, 4);
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges[0].from, None);
        assert!(ranges[0].non_string_ids);
        assert_eq!(ranges[3].to, None);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].to, pair[1].from);
            assert!(!pair[1].non_string_ids);
        }
    }

    #[test]
    fn a_sample_too_small_for_the_shares_leaves_the_extra_shares_empty() {
        let ranges = ranges_from_sample(vec!["a".into(), "a".into()], 3);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].filters().len(), 2);
        assert_eq!(ranges[1].filters().len(), 1, "strings from 'a' on");
        assert!(ranges[2].filters().is_empty());
    }

    #[test]
    fn the_source_is_described_without_its_password() {
        let source = MongoSource {
            uri: "mongodb://reader:s3cret@db:27017/?authSource=admin".into(),
            db: "iot".into(),
            collection: "inferences".into(),
            batch_size: 1,
            timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(1),
        };
        assert_eq!(source.describe(), "mongodb://reader:****@db:27017/?authSource=admin iot.inferences");
    }

    #[test]
    fn documents_are_counted_or_skipped_with_their_id() {
        let mut loader = Loader::default();
        let docs = [
            doc! { "_id": "p/1", "ProducerID": "p", "GroundTruth": "cat", "Inferred": "dog" },
            doc! { "_id": "p/2", "ProducerID": "p", "GroundTruth": "cat" },
            doc! { "_id": "p/3", "ProducerID": "p", "GroundTruth": "cat", "Deleted": true },
            doc! { "_id": "p/4", "ProducerID": "p", "GroundTruth": 4 },
            doc! { "_id": 5, "GroundTruth": "cat" },
        ];
        for document in docs {
            let document = RawDocumentBuf::from_document(&document).unwrap();
            loader.load(read_document(&document), || document_id(&document));
        }
        let (observations, stats) = loader.take();
        assert_eq!((stats.records, stats.deleted, stats.skipped), (5, 1, 2));
        assert_eq!(stats.skipped_examples, ["p/4: GroundTruth is not a string", "5: ProducerID is missing"]);
        assert_eq!(observations.len(), 2);
    }
}
