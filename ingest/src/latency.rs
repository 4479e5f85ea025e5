//! The infer-consumer's latency log: `ProducerID,ID,SentAt,InferredAt,latency_ms`, one row per
//! record whose message carried `SentAt`; latency_ms = InferredAt − SentAt (both in ms since the
//! Unix epoch; InferredAt is the value stored in MongoDB).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

iot_schema::record_struct! {
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LatencyRow {
        pub producer_id: String,
        pub id: i64,
        pub sent_at_ms: i64,
        pub inferred_at_ms: i64,
        /// Not a record field: keeps its own name as a column.
        pub latency_ms: i64,
    }
}

impl LatencyRow {
    pub fn new(producer_id: &str, id: i64, sent_at_ms: i64, inferred_at_ms: i64) -> LatencyRow {
        LatencyRow {
            producer_id: producer_id.to_owned(),
            id,
            sent_at_ms,
            inferred_at_ms,
            latency_ms: inferred_at_ms - sent_at_ms,
        }
    }
}

/// Appends to the log (a restarted consumer keeps adding to the same file); each batch is
/// flushed at once so that a killed consumer loses no acknowledged row.
pub struct LatencyLog {
    writer: Mutex<csv::Writer<File>>,
}

impl LatencyLog {
    pub fn open(path: &Path) -> Result<LatencyLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the latency log {}", path.display()))?;
        let empty = file.metadata()?.len() == 0;
        let writer = csv::WriterBuilder::new().has_headers(empty).from_writer(file);
        Ok(LatencyLog { writer: Mutex::new(writer) })
    }

    pub fn append(&self, rows: &[LatencyRow]) -> Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|poison| poison.into_inner());
        for row in rows {
            writer.serialize(row)?;
        }
        writer.flush().context("cannot write the latency log")
    }
}

pub fn read(path: &Path) -> Result<Vec<LatencyRow>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, row) in reader.deserialize().enumerate() {
        // Line n+2: the header is line 1.
        rows.push(row.with_context(|| format!("{} line {}: not a latency row", path.display(), n + 2))?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_across_reopenings_with_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lat.csv");
        LatencyLog::open(&path).unwrap().append(&[LatencyRow::new("a", 1, 100, 150)]).unwrap();
        LatencyLog::open(&path).unwrap().append(&[LatencyRow::new("b", 2, 100, 130)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "ProducerID,ID,SentAt,InferredAt,latency_ms\na,1,100,150,50\nb,2,100,130,30\n");
        assert_eq!(read(&path).unwrap()[1].latency_ms, 30);
    }

    #[test]
    fn a_bad_row_is_reported_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lat.csv");
        std::fs::write(&path, "ProducerID,ID,SentAt,InferredAt,latency_ms\na,1,2,3,1\na,x,2,3,1\n").unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("line 3"), "{err}");
    }
}
