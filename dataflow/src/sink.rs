//! The CSV sink: `ProducerID,total_errors` (and `total,error_rate` with `--detail`), one row per
//! producer sorted by ProducerID, written atomically, and beside it an as-of sidecar
//! (`<output>.meta.json`) that says how current the CSV is.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::record::Tally;

/// Where and how the table is written.
#[derive(Clone, Debug)]
pub struct Output {
    pub path: PathBuf,
    /// Add `total` and `error_rate` columns.
    pub detail: bool,
    /// Permission bits of the CSV and its sidecar (0o644 unless told otherwise).
    pub mode: u32,
    /// The monitoring views' files, if any.
    pub views: crate::views::sink::ViewFiles,
}

/// What the sidecar says about the CSV written with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AsOf {
    /// RFC 3339 UTC: the CSV counts every write made before this time (the start of the batch
    /// read, or of the follower's last completed poll).
    pub as_of: String,
    /// Records counted (judged and pending).
    pub records: u64,
    /// Of those, records still waiting for an inference.
    pub pending: u64,
    /// Records skipped because a field is missing or mistyped.
    pub malformed: u64,
    /// Where the records come from; a connection string without its password.
    pub source: String,
    /// With `--follow`: how far the follower has read its changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

/// How far a follower has read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// The newest change-log `ChangedAt` acted on (RFC 3339 UTC); the next poll reads from it
    /// less `--settle-ms`.
    ChangeLog { watermark: String },
    /// Bytes of the followed file counted (always the end of a line).
    File { offset: u64 },
}

/// `time` as RFC 3339 UTC with milliseconds, as the sidecar and the summaries print it.
pub fn rfc3339(time: SystemTime) -> String {
    rfc3339_ms(bson::DateTime::from_system_time(time))
}

pub fn rfc3339_ms(time: bson::DateTime) -> String {
    time.try_to_rfc3339_string().unwrap_or_else(|_| format!("{} ms since the epoch", time.timestamp_millis()))
}

impl AsOf {
    /// `as_of`, `records`, `pending` and `malformed` for `table`; no position.
    pub fn of(table: &BTreeMap<String, Tally>, as_of: SystemTime, malformed: u64, source: String) -> Self {
        let mut total = Tally::default();
        table.values().for_each(|tally| total.add(tally));
        AsOf {
            as_of: rfc3339(as_of),
            records: total.judged() + total.pending,
            pending: total.pending,
            malformed,
            source,
            position: None,
        }
    }
}

impl Output {
    /// `<output>.meta.json`.
    pub fn sidecar_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".meta.json");
        PathBuf::from(name)
    }

    /// Writes the CSV, then its sidecar; each replaces the old file atomically.
    pub fn write(&self, table: &BTreeMap<String, Tally>, as_of: &AsOf) -> Result<()> {
        write_atomically(&self.path, self.mode, |file| write_rows(file, table, self.detail))?;
        self.write_sidecar(as_of)
    }

    /// Only the sidecar: the CSV has not changed, but it is current as of a later time.
    pub fn write_sidecar(&self, as_of: &AsOf) -> Result<()> {
        write_atomically(&self.sidecar_path(), self.mode, |file| {
            serde_json::to_writer_pretty(&mut *file, as_of)?;
            Ok(file.write_all(b"\n")?)
        })
    }
}

/// Writes to a temporary file beside `path`, then renames it over `path`, so that a reader never
/// sees a half-written file. The temporary file is created 0600 and named `.<file name>.<random>`,
/// so a leftover says what it was for; the mode is set before the rename, and set exactly,
/// whatever the umask.
pub(crate) fn write_atomically(path: &Path, mode: u32, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let prefix = format!(".{}.", path.file_name().unwrap_or_default().to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in the output folder {}", dir.display()))?;
    fill(tmp.as_file_mut()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

pub fn write_rows(out: impl Write, table: &BTreeMap<String, Tally>, detail: bool) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    if detail {
        csv.write_record(["ProducerID", "total_errors", "total", "error_rate"])?;
    } else {
        csv.write_record(["ProducerID", "total_errors"])?;
    }
    for (producer, tally) in table {
        let errors = tally.incorrect.to_string();
        if detail {
            let rate = tally.error_rate().map(|r| format!("{r:.6}")).unwrap_or_default();
            csv.write_record([producer.as_str(), &errors, &tally.judged().to_string(), &rate])?;
        } else {
            csv.write_record([producer.as_str(), &errors])?;
        }
    }
    csv.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BTreeMap<String, Tally> {
        BTreeMap::from([
            ("b,\"2\"".to_owned(), Tally { correct: 1, incorrect: 3, pending: 0 }),
            ("a".to_owned(), Tally { correct: 2, incorrect: 0, pending: 5 }),
            ("c".to_owned(), Tally { correct: 0, incorrect: 0, pending: 1 }),
        ])
    }

    fn render(detail: bool) -> String {
        let mut out = Vec::new();
        write_rows(&mut out, &table(), detail).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorted_quoted_and_zero_error_producers_included() {
        assert_eq!(render(false), "ProducerID,total_errors\na,0\n\"b,\"\"2\"\"\",3\nc,0\n");
    }

    #[test]
    fn detail_adds_total_and_error_rate() {
        assert_eq!(
            render(true),
            "ProducerID,total_errors,total,error_rate\na,0,2,0.000000\n\"b,\"\"2\"\"\",3,4,0.750000\nc,0,0,\n"
        );
    }

    fn as_of() -> AsOf {
        AsOf::of(&table(), SystemTime::UNIX_EPOCH, 2, "records.jsonl".into())
    }

    #[test]
    fn written_atomically_into_a_new_folder_with_its_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let output =
            Output { path: dir.path().join("out/errors.csv"), detail: false, mode: 0o640, views: Default::default() };
        output.write(&table(), &as_of()).unwrap();
        assert_eq!(std::fs::read_to_string(&output.path).unwrap(), render(false));
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "the CSV and its sidecar, no temporary file left: {names:?}");
        for path in [&output.path, &output.sidecar_path()] {
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o640, "{}", path.display());
        }
    }

    #[test]
    fn the_sidecar_says_when_and_what_was_counted() {
        let dir = tempfile::tempdir().unwrap();
        let output =
            Output { path: dir.path().join("errors.csv"), detail: false, mode: 0o644, views: Default::default() };
        let as_of = AsOf { position: Some(Position::File { offset: 120 }), ..as_of() };
        output.write_sidecar(&as_of).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("errors.csv.meta.json")).unwrap()).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "as_of": "1970-01-01T00:00:00Z", "records": 12, "pending": 6, "malformed": 2,
                "source": "records.jsonl", "position": { "file": { "offset": 120 } }
            })
        );
    }
}
