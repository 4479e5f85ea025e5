//! The CSV sink: `ProducerID,total_errors` (and `total,error_rate` with `--detail`), one row per
//! producer sorted by ProducerID, written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::record::Tally;

/// Writes the table to a temporary file beside `path`, then renames it over `path`, so that a
/// reader never sees a half-written CSV.
pub fn write_csv(path: &Path, table: &BTreeMap<String, Tally>, detail: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in the output folder {}", dir.display()))?;
    write_rows(tmp.as_file_mut(), table, detail)?;
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

    #[test]
    fn written_atomically_into_a_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/errors.csv");
        write_csv(&path, &table(), false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render(false));
        assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), 1, "no temporary file left");
    }
}
