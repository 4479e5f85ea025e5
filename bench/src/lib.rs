//! The one home of the benchmarks (README.md lists them), and records with known answers for
//! tests and benchmarks.
//!
//! [`Generator`] makes a reproducible stream of stored records and keeps, on the side, the
//! per-producer truth that any correct count must reproduce. [`expected`] reads a
//! `dataflow count` CSV back for comparison.

pub mod expected;
pub mod latency_report;
pub mod mongo;
pub mod pipeline;
pub mod run;
pub mod stats;
pub mod testkit;

use std::collections::BTreeMap;
use std::io::Write;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The CIFAR-10 class names, the labels the live pipeline speaks.
pub const LABELS: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

#[derive(Clone, Debug)]
pub struct Spec {
    pub records: u64,
    pub producers: u32,
    /// Probability that an inferred record is wrong.
    pub error_rate: f64,
    /// Probability that a record has no `Inferred` yet.
    pub pending_rate: f64,
    pub seed: u64,
    /// Give some producers names that need CSV quoting (commas, quotes).
    pub awkward_names: bool,
    /// Give inferred records an `InferredAt`, spread evenly in record order over this many ms
    /// from [`INFERRED_FROM`], as mongoexport writes dates (`{"$date": "…Z"}`).
    pub inferred_span_ms: Option<i64>,
}

/// 2026-11-01T00:00:00Z: where generated `InferredAt`s start.
pub const INFERRED_FROM: i64 = 1_793_491_200_000;

impl Default for Spec {
    fn default() -> Self {
        Spec {
            records: 1000,
            producers: 10,
            error_rate: 0.3,
            pending_rate: 0.05,
            seed: 1,
            awkward_names: false,
            inferred_span_ms: None,
        }
    }
}

iot_schema::record_struct! {
    /// One stored record, as the consumers would have written it.
    #[derive(Clone, Debug, Serialize)]
    pub struct Record<'a> {
        pub doc_id: String,
        pub id: i64,
        pub producer_id: &'a str,
        pub ground_truth: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub inferred: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub inferred_at: Option<ExtendedDate>,
    }
}

/// A date as mongoexport writes it in relaxed extended JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ExtendedDate {
    #[serde(rename = "$date")]
    pub date: String,
    /// The same time in ms, for writers of BSON dates.
    #[serde(skip)]
    pub ms: i64,
}

/// What a producer's records add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    pub errors: u64,
    pub judged: u64,
    pub pending: u64,
}

pub type Answer = BTreeMap<String, Truth>;

pub fn producer_names(spec: &Spec) -> Vec<String> {
    (0..spec.producers)
        .map(|p| match p % 7 {
            3 if spec.awkward_names => format!("cam \"{p:03}\", east"),
            5 if spec.awkward_names => format!("cam,{p:03}"),
            _ => format!("producer-{p:03}"),
        })
        .collect()
}

/// Generates `spec.records` records, calling `each` for every one, and returns the answer.
pub fn generate(spec: &Spec, mut each: impl FnMut(&Record)) -> Answer {
    let names = producer_names(spec);
    let mut next_id = vec![0i64; names.len()];
    let mut truth = vec![Truth::default(); names.len()];
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    for n in 0..spec.records {
        let p = rng.random_range(0..names.len());
        let id = next_id[p];
        next_id[p] += 1;
        let ground_truth = LABELS[rng.random_range(0..LABELS.len())];
        let inferred = if rng.random_bool(spec.pending_rate) {
            truth[p].pending += 1;
            None
        } else if rng.random_bool(spec.error_rate) {
            truth[p].judged += 1;
            truth[p].errors += 1;
            let offset = rng.random_range(1..LABELS.len());
            let wrong = (LABELS.iter().position(|l| *l == ground_truth).unwrap() + offset) % LABELS.len();
            Some(LABELS[wrong])
        } else {
            truth[p].judged += 1;
            Some(ground_truth)
        };
        let inferred_at = spec.inferred_span_ms.filter(|_| inferred.is_some()).map(|span| {
            let at = INFERRED_FROM + (span as i128 * n as i128 / spec.records.max(1) as i128) as i64;
            ExtendedDate { date: bson::DateTime::from_millis(at).try_to_rfc3339_string().unwrap_or_default(), ms: at }
        });
        each(&Record {
            doc_id: iot_schema::doc_id(&names[p], id),
            id,
            producer_id: &names[p],
            ground_truth,
            inferred,
            inferred_at,
        });
    }
    names.into_iter().zip(truth).filter(|(_, t)| t.judged + t.pending > 0).collect()
}

/// Writes the records as JSON Lines, or as one JSON array (the original pipeline's export).
pub fn write_records(spec: &Spec, out: impl Write, json_array: bool) -> anyhow::Result<Answer> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut first = true;
    let mut failure = None;
    if json_array {
        out.write_all(b"[\n")?;
    }
    let answer = generate(spec, |record| {
        if failure.is_some() {
            return;
        }
        let result = (|| -> anyhow::Result<()> {
            if json_array && !first {
                out.write_all(b",\n")?;
            }
            first = false;
            serde_json::to_writer(&mut out, record)?;
            if !json_array {
                out.write_all(b"\n")?;
            }
            Ok(())
        })();
        if let Err(err) = result {
            failure = Some(err);
        }
    });
    if let Some(err) = failure {
        return Err(err);
    }
    if json_array {
        out.write_all(b"\n]\n")?;
    }
    out.flush()?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_adds_up_to_the_records_written() {
        let spec = Spec { records: 10_000, awkward_names: true, ..Spec::default() };
        let mut seen = Answer::new();
        let answer = generate(&spec, |r| {
            let t = seen.entry(r.producer_id.to_owned()).or_default();
            match r.inferred {
                None => t.pending += 1,
                Some(label) => {
                    t.judged += 1;
                    t.errors += u64::from(label != r.ground_truth);
                }
            }
        });
        assert_eq!(answer, seen);
        let total: u64 = answer.values().map(|t| t.judged + t.pending).sum();
        assert_eq!(total, 10_000);
        assert!(answer.keys().any(|name| name.contains(',')));
        let errors: u64 = answer.values().map(|t| t.errors).sum();
        assert!((2500..3200).contains(&errors), "about 30% of judged records are wrong: {errors}");
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let spec = Spec::default();
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_records(&spec, &mut a, false).unwrap();
        write_records(&spec, &mut b, false).unwrap();
        assert_eq!(a, b);
    }
}
