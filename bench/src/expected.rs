//! Reading a `dataflow count` CSV back, to compare it with an [`Answer`](crate::Answer).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::Answer;

/// `ProducerID -> total_errors`, checking the header and that rows are sorted by ProducerID.
pub fn read_error_counts(path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    ensure!(
        header.first().map(String::as_str) == Some("ProducerID")
            && header.get(1).map(String::as_str) == Some("total_errors"),
        "unexpected header {header:?}"
    );
    let mut rows = BTreeMap::new();
    let mut previous: Option<String> = None;
    for row in reader.records() {
        let row = row?;
        let producer = row[0].to_owned();
        ensure!(previous.as_ref().is_none_or(|p| *p < producer), "rows not sorted at {producer:?}");
        previous = Some(producer.clone());
        rows.insert(producer, row[1].parse().with_context(|| format!("bad total_errors in {row:?}"))?);
    }
    Ok(rows)
}

/// What the CSV must say for this answer: every producer, with its errors (0 included).
pub fn error_counts(answer: &Answer) -> BTreeMap<String, u64> {
    answer.iter().map(|(producer, truth)| (producer.clone(), truth.errors)).collect()
}
