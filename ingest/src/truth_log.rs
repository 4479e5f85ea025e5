//! The producer's ground-truth log: `ProducerID,ID,GroundTruth,SentAt`, one row per message that
//! Kafka acknowledged, so that a run can be checked against what MongoDB ends up holding.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

iot_schema::record_struct! {
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TruthRow {
        pub producer_id: String,
        pub id: i64,
        pub ground_truth: String,
        pub sent_at_ms: i64,
    }
}

/// Shared by every producer task; rows arrive in acknowledgement order.
pub struct TruthLog {
    writer: Mutex<csv::Writer<BufWriter<File>>>,
}

impl TruthLog {
    pub fn create(path: &Path) -> Result<TruthLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let writer = csv::Writer::from_writer(BufWriter::new(file));
        Ok(TruthLog { writer: Mutex::new(writer) })
    }

    pub fn record(&self, row: &TruthRow) -> Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|poison| poison.into_inner());
        writer.serialize(row).context("cannot write the truth log")
    }

    pub fn flush(&self) -> Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|poison| poison.into_inner());
        writer.flush().context("cannot write the truth log")
    }
}

/// Reads a truth log back (the end-to-end test and the bench join it with MongoDB).
pub fn read(path: &Path) -> Result<Vec<TruthRow>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<TruthRow>, _>>()
        .with_context(|| format!("{} is not a truth log", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/truth.csv");
        let log = TruthLog::create(&path).unwrap();
        let row = TruthRow { producer_id: "cam,1".into(), id: 3, ground_truth: "cat".into(), sent_at_ms: 9 };
        log.record(&row).unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "ProducerID,ID,GroundTruth,SentAt\n\"cam,1\",3,cat,9\n");
        assert_eq!(read(&path).unwrap(), [row]);
    }
}
