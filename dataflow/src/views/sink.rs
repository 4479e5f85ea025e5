//! The views as CSV files: each sorted, with a header, written atomically like the counts.
//!
//! - `--confusion`: `ProducerID,GroundTruth,Inferred,count`; the rows over all producers come
//!   first, with an empty `ProducerID`.
//! - `--classes`: `ProducerID,class,support,predicted,correct,precision,recall,f1`, the same way.
//! - `--windows`: `ProducerID,window_start,judged,errors,error_rate`, `window_start` in RFC 3339
//!   UTC; a window without judged records has no row.
//! - `--drift`: `ProducerID,reference_start,reference_end,reference_count,window_start,
//!   window_count,chi_square,degrees_of_freedom,p_value,hellinger,drifted`; the statistics are
//!   empty while a producer's latest window is still in its reference period.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::confusion::Scope;
use super::drift::LabelDrift;
use super::Snapshot;
use crate::sink::{rfc3339_ms, write_atomically};

/// Where each view goes; a view with no file is not written.
#[derive(Clone, Debug, Default)]
pub struct ViewFiles {
    pub confusion: Option<PathBuf>,
    pub classes: Option<PathBuf>,
    pub windows: Option<PathBuf>,
    pub drift: Option<PathBuf>,
    /// Permission bits, as for the counts.
    pub mode: u32,
}

impl ViewFiles {
    pub fn any(&self) -> bool {
        self.confusion.is_some() || self.classes.is_some() || self.windows.is_some() || self.drift.is_some()
    }

    /// Writes every view that has a file.
    pub fn write(&self, snapshot: &Snapshot, drift_alpha: f64) -> Result<()> {
        let write = |path: &Option<PathBuf>, rows: &dyn Fn(&mut dyn Write) -> Result<()>| -> Result<()> {
            match path {
                Some(path) => write_atomically(path, self.mode, |file| rows(file)),
                None => Ok(()),
            }
        };
        write(&self.confusion, &|out| write_confusion(out, snapshot))?;
        write(&self.classes, &|out| write_classes(out, snapshot))?;
        write(&self.windows, &|out| write_windows(out, snapshot))?;
        write(&self.drift, &|out| write_drift(out, snapshot, drift_alpha))
    }
}

/// A scope as the `ProducerID` column writes it: empty for all producers.
fn producer_column(scope: &Scope) -> &str {
    match scope {
        Scope::All => "",
        Scope::Producer(producer) => producer,
    }
}

/// A rate or a ratio with six decimals, or empty when undefined.
fn decimal(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn timestamp(ms: i64) -> String {
    rfc3339_ms(bson::DateTime::from_millis(ms))
}

pub fn write_confusion(out: &mut dyn Write, snapshot: &Snapshot) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["ProducerID", "GroundTruth", "Inferred", "count"])?;
    for (cell, count) in &snapshot.confusion {
        csv.write_record([producer_column(&cell.scope), &cell.ground_truth, &cell.inferred, &count.to_string()])?;
    }
    Ok(csv.flush()?)
}

pub fn write_classes(out: &mut dyn Write, snapshot: &Snapshot) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["ProducerID", "class", "support", "predicted", "correct", "precision", "recall", "f1"])?;
    for (scope, scores) in snapshot.class_scores() {
        for score in scores {
            csv.write_record([
                producer_column(scope),
                &score.class,
                &score.support.to_string(),
                &score.predicted.to_string(),
                &score.correct.to_string(),
                &decimal(score.precision()),
                &decimal(score.recall()),
                &decimal(score.f1()),
            ])?;
        }
    }
    Ok(csv.flush()?)
}

pub fn write_windows(out: &mut dyn Write, snapshot: &Snapshot) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["ProducerID", "window_start", "judged", "errors", "error_rate"])?;
    for ((producer, window), tally) in &snapshot.windows {
        csv.write_record([
            producer.as_str(),
            &timestamp(*window),
            &tally.judged().to_string(),
            &tally.incorrect.to_string(),
            &decimal(tally.error_rate()),
        ])?;
    }
    Ok(csv.flush()?)
}

pub fn write_drift(out: &mut dyn Write, snapshot: &Snapshot, alpha: f64) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record([
        "ProducerID",
        "reference_start",
        "reference_end",
        "reference_count",
        "window_start",
        "window_count",
        "chi_square",
        "degrees_of_freedom",
        "p_value",
        "hellinger",
        "drifted",
    ])?;
    for (producer, drift) in &snapshot.drift {
        let (start, end) = drift.reference_period.map(|(s, e)| (timestamp(s), timestamp(e))).unwrap_or_default();
        let stats = drift.statistics();
        csv.write_record([
            producer.as_str(),
            &start,
            &end,
            &total(drift, true).to_string(),
            &timestamp(drift.window_start),
            &total(drift, false).to_string(),
            &decimal(stats.map(|s| s.chi_square)),
            &stats.map(|s| s.degrees_of_freedom.to_string()).unwrap_or_default(),
            &stats.map(|s| format!("{:.6e}", s.p_value)).unwrap_or_default(),
            &decimal(stats.map(|s| s.hellinger)),
            &stats.map(|s| (s.p_value < alpha).to_string()).unwrap_or_default(),
        ])?;
    }
    Ok(csv.flush()?)
}

fn total(drift: &LabelDrift, reference: bool) -> u64 {
    let distribution = if reference { &drift.reference } else { &drift.window };
    distribution.values().sum()
}
