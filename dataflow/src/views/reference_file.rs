//! A fixed drift reference read from CSV: `ProducerID,Inferred,count`, one row per label. A row
//! with an empty `ProducerID` belongs to the default reference, used for every producer without
//! rows of its own. The `--confusion` file of a known-good run, summed by `Inferred`, is one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::drift::{Distribution, Reference};

pub fn read(path: &Path) -> Result<Reference> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read the reference file {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| {
            format!("the reference file {} has no {name} column (expected ProducerID,Inferred,count)", path.display())
        })
    };
    let (producer, label, count) = (column("ProducerID")?, column("Inferred")?, column("count")?);
    let mut references = BTreeMap::<Option<String>, Distribution>::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.with_context(|| format!("{} line {line}", path.display()))?;
        let n: u64 = record[count].trim().parse().with_context(|| {
            format!("{} line {line}: count {:?} is not a whole number", path.display(), &record[count])
        })?;
        let producer = Some(record[producer].to_owned()).filter(|p| !p.is_empty());
        *references.entry(producer).or_default().entry(record[label].to_owned()).or_default() += n;
    }
    if references.is_empty() {
        bail!("the reference file {} has no rows", path.display());
    }
    Ok(Reference::Fixed(Arc::new(references)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_producer_and_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.csv");
        std::fs::write(&path, "ProducerID,Inferred,count\n,cat,3\ncam-1,\"a,b\",2\ncam-1,dog,1\n,cat,1\n").unwrap();
        let Reference::Fixed(references) = read(&path).unwrap() else { panic!("a fixed reference") };
        let cam: Distribution = [("a,b".to_owned(), 2), ("dog".to_owned(), 1)].into();
        assert_eq!(
            *references,
            BTreeMap::from([(None, [("cat".to_owned(), 4)].into()), (Some("cam-1".to_owned()), cam)])
        );
    }

    #[test]
    fn bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.csv");
        for (text, expected) in [
            ("ProducerID,label,count\n", "has no Inferred column"),
            ("ProducerID,Inferred,count\n", "has no rows"),
            ("ProducerID,Inferred,count\np,cat,many\n", "line 2: count \"many\" is not a whole number"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(err.contains(expected), "{err}");
        }
    }
}
