//! The file source: the original pipeline's JSON array export, or JSON Lines, detected from the
//! first byte. Each worker reads its own share of the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::JsonRecord;
use super::Share;
use crate::load::{Loader, Reading};
use crate::progress::Progress;
use crate::stamp::Stamp;

/// Bytes read at a time; each worker holds one such buffer (it grows only for a longer line).
const CHUNK: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLines,
    /// A single JSON array of objects, as `mongoexport --jsonArray` writes.
    JsonArray,
}

/// Detects the format from the first byte that is not white space (or a UTF-8 byte order mark).
pub fn detect(path: &Path) -> Result<Option<Format>> {
    let file = open_input(path)?;
    let mut head = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut head, offset)?;
        if n == 0 {
            return Ok(None);
        }
        let start = if offset == 0 && head[..n].starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
        if let Some(&first) = head[start..n].iter().find(|b| !b.is_ascii_whitespace()) {
            return match first {
                b'[' => Ok(Some(Format::JsonArray)),
                b'{' => Ok(Some(Format::JsonLines)),
                other => bail!(
                    "{} is neither a JSON array nor JSON Lines (it starts with {:?}); \
                     pass a mongoexport-style JSON array or one JSON object per line",
                    path.display(),
                    other as char
                ),
            };
        }
        offset += n as u64;
    }
}

fn open_input(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open input file {}", path.display()))
}

/// Loads this worker's share of the file.
pub fn load_share(path: &Path, share: Share, loader: &mut Loader, progress: &Progress) -> Result<()> {
    match detect(path)? {
        None => Ok(()),
        Some(Format::JsonLines) => {
            let len = open_input(path)?.metadata()?.len();
            load_lines(path, share, len, loader, progress)
        }
        Some(Format::JsonArray) => load_array(path, share, loader, progress),
    }
}

/// The length of a file up to and including its last newline: the complete lines a writer
/// that is still appending has finished.
pub fn complete_len(path: &Path) -> Result<u64> {
    let file = open_input(path)?;
    let mut end = file.metadata()?.len();
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(newline) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// What `--follow` reads after the initial load of a JSON Lines file: the lines appended since.
/// A line counts once its newline is written, so a line still being written waits.
pub struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    /// Follows `path` from byte `offset`, which must start a line.
    pub fn new(path: &Path, offset: u64) -> Tail {
        Tail { path: path.to_owned(), offset }
    }

    /// Bytes counted so far: the end of the last complete line read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Loads the complete lines appended since the last call. A file that shrank is an error:
    /// lines already counted are gone, which only a fresh count can reflect.
    pub fn read_appended(&mut self, loader: &mut Loader) -> Result<()> {
        let file = open_input(&self.path)?;
        let len = file.metadata()?.len();
        if len < self.offset {
            bail!(
                "{} shrank from {} to {len} bytes; --follow reads an append-only file: restart it to count the file anew",
                self.path.display(),
                self.offset
            );
        }
        let mut appended = vec![0u8; (len - self.offset) as usize];
        file.read_exact_at(&mut appended, self.offset)?;
        let Some(last_newline) = memchr::memrchr(b'\n', &appended) else { return Ok(()) };
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', &appended[..=last_newline]) {
            load_line(&appended[line_start..newline], self.offset + line_start as u64, loader);
            line_start = newline + 1;
        }
        self.offset += line_start as u64;
        Ok(())
    }
}

/// Loads this worker's share of the first `len` bytes of a JSON Lines file. A line belongs to
/// the share in which it starts; shares split the file by bytes, so workers read disjoint parts
/// in parallel with no coordination.
pub fn load_lines(path: &Path, share: Share, len: u64, loader: &mut Loader, progress: &Progress) -> Result<()> {
    let file = open_input(path)?;
    let (start, end) = share.byte_range(len);
    if start >= end {
        return Ok(());
    }
    // Reading from one byte early tells whether `start` begins a line.
    let mut offset = start.saturating_sub(1);
    let mut skip_partial = start > 0;
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        filled += n;
        let eof = n == 0;
        let mut cursor = 0;
        if skip_partial {
            match memchr::memchr(b'\n', &buf[..filled]) {
                Some(newline) => {
                    cursor = newline + 1;
                    skip_partial = false;
                }
                None if eof => return Ok(()),
                None => {
                    offset += filled as u64;
                    filled = 0;
                    continue;
                }
            }
        }
        let records_before = loader.stats.records;
        while let Some(newline) = memchr::memchr(b'\n', &buf[cursor..filled]) {
            let line_at = offset + cursor as u64;
            if line_at >= end {
                progress.add(loader.stats.records - records_before);
                return Ok(());
            }
            load_line(&buf[cursor..cursor + newline], line_at, loader);
            cursor += newline + 1;
        }
        progress.add(loader.stats.records - records_before);
        if eof {
            if cursor < filled && offset + (cursor as u64) < end {
                load_line(&buf[cursor..filled], offset + cursor as u64, loader);
                progress.add(1);
            }
            return Ok(());
        }
        buf.copy_within(cursor..filled, 0);
        offset += cursor as u64;
        filled -= cursor;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0); // a line longer than the buffer
        }
    }
}

fn load_line(line: &[u8], at: u64, loader: &mut Loader) {
    // A byte order mark may open the file (`detect` allows one); it is not part of the first record.
    let line = if at == 0 { line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line) } else { line };
    let line = line.trim_ascii();
    if line.is_empty() {
        return;
    }
    let name = || format!("line at byte {at}");
    if line[0] != b'{' {
        return loader.load(Reading::Malformed("not a JSON object".into()), name);
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return loader.load(Reading::Malformed("not valid UTF-8".into()), name);
    };
    // Nearly every line is a well-formed record: read it with the strict, borrowing parser,
    // and take the lenient one only to explain what is wrong with the others.
    if let Ok(record) = serde_json::from_str::<WellFormed>(line) {
        return loader.load(record.reading(), name);
    }
    match serde_json::from_str::<JsonRecord>(line) {
        Ok(record) => loader.load(record.reading(), || record.name(name)),
        Err(err) => loader.load(Reading::Malformed(format!("not a JSON object ({err})").into()), name),
    }
}

iot_schema::record_struct! {
    /// A record whose fields all have the expected types and need no unescaping.
    #[derive(serde::Deserialize)]
    struct WellFormed<'a> {
        producer_id: &'a str,
        ground_truth: &'a str,
        #[serde(default)]
        inferred: Option<&'a str>,
        #[serde(borrow, default)]
        inferred_at: Stamp<'a>,
        #[serde(default)]
        deleted: Option<bool>,
    }
}

impl<'a> WellFormed<'a> {
    #[inline]
    fn reading(self) -> Reading<'a> {
        if self.deleted == Some(true) {
            return Reading::Tombstone;
        }
        let WellFormed { producer_id, ground_truth, inferred, inferred_at, .. } = self;
        Reading::Counted { producer_id, ground_truth, inferred, inferred_at }
    }
}

/// A JSON array cannot be split by bytes, so every worker walks its structure (cheap, nothing is
/// decoded) and fully parses only every `peers`-th element.
fn load_array(path: &Path, share: Share, loader: &mut Loader, progress: &Progress) -> Result<()> {
    let file = open_input(path)?;
    // SAFETY: the file is only read; a concurrent writer could change what we read, as with read().
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let visitor = ArrayVisitor { share, loader, progress };
    deserializer
        .deserialize_seq(visitor)
        .and_then(|()| deserializer.end())
        .with_context(|| format!("{} is not a valid JSON array", path.display()))
}

struct ArrayVisitor<'s> {
    share: Share,
    loader: &'s mut Loader,
    progress: &'s Progress,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            if index % self.share.peers == self.share.index {
                let name = || format!("array element {index}");
                match serde_json::from_str::<JsonRecord>(element.get()) {
                    _ if !element.get().starts_with('{') => {
                        self.loader.load(Reading::Malformed("not a JSON object".into()), name)
                    }
                    Ok(record) => self.loader.load(record.reading(), || record.name(name)),
                    Err(err) => self.loader.load(Reading::Malformed(format!("not a JSON object ({err})").into()), name),
                }
                self.progress.add(1);
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::record::Observation;
    use crate::stats::LoadStats;

    fn load_all(content: &str, peers: usize) -> (Vec<(Observation, isize)>, LoadStats) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        let mut loader = Loader::default();
        for index in 0..peers {
            load_share(file.path(), Share { index, peers }, &mut loader, &Progress::hidden()).unwrap();
        }
        let (mut observations, stats) = loader.take();
        observations.sort();
        (observations, stats)
    }

    fn lines(n: usize) -> String {
        (0..n)
            .map(|i| {
                let inferred = if i % 3 == 0 { "\"dog\"" } else { "\"cat\"" };
                format!("{{\"_id\":\"p{}/{i}\",\"ID\":{i},\"ProducerID\":\"p{}\",\"GroundTruth\":\"cat\",\"Inferred\":{inferred}}}\n", i % 7, i % 7)
            })
            .collect()
    }

    #[test]
    fn every_line_is_read_exactly_once_whatever_the_number_of_shares() {
        let content = lines(1000);
        let (expected, stats) = load_all(&content, 1);
        assert_eq!(stats.records, 1000);
        for peers in [2, 3, 7, 64, 5000] {
            let (observations, stats) = load_all(&content, peers);
            assert_eq!(stats.records, 1000, "{peers} shares");
            assert_eq!(observations, expected, "{peers} shares");
        }
    }

    #[test]
    fn json_lines_without_final_newline_with_blank_lines_and_crlf() {
        let content = "{\"ProducerID\":\"a\",\"GroundTruth\":\"x\",\"Inferred\":\"y\"}\r\n\n  \n{\"ProducerID\":\"a\",\"GroundTruth\":\"x\"}";
        for peers in 1..6 {
            let (observations, stats) = load_all(content, peers);
            assert_eq!(stats.records, 2);
            assert_eq!(
                observations,
                vec![(Observation::new("a", "x", None), 1), (Observation::new("a", "x", Some("y")), 1)]
            );
        }
    }

    #[test]
    fn a_json_array_pretty_printed_or_not_gives_the_same_counts() {
        let records: Vec<serde_json::Value> = lines(500).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (from_lines, _) = load_all(&lines(500), 1);
        for text in [serde_json::to_string(&records).unwrap(), serde_json::to_string_pretty(&records).unwrap()] {
            for peers in [1, 2, 3] {
                let (observations, stats) = load_all(&text, peers);
                assert_eq!(stats.records, 500);
                assert_eq!(observations, from_lines);
            }
        }
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_not_part_of_it() {
        // Found with the dataflow_record_file fuzz target (its BOM seed): detect() skipped the mark, the first
        // line kept it and was skipped as "not a JSON object".
        let content =
            "\u{feff}{\"ProducerID\":\"a\",\"GroundTruth\":\"x\"}\n{\"ProducerID\":\"b\",\"GroundTruth\":\"x\"}\n";
        for peers in 1..4 {
            let (observations, stats) = load_all(content, peers);
            assert_eq!((stats.records, stats.skipped), (2, 0), "{:?}", stats.skipped_examples);
            assert_eq!(
                observations,
                vec![(Observation::new("a", "x", None), 1), (Observation::new("b", "x", None), 1)]
            );
        }
    }

    #[test]
    fn bad_lines_are_skipped_and_named() {
        let content = "{\"ProducerID\":\"a\",\"GroundTruth\":\"x\",\"Inferred\":\"x\"}\nnot json\n[1,2]\n";
        let (observations, stats) = load_all(content, 1);
        assert_eq!(observations, vec![(Observation::new("a", "x", Some("x")), 1)]);
        assert_eq!(stats.records, 3);
        assert_eq!(stats.skipped, 2);
        assert!(
            stats.skipped_examples[0].starts_with("line at byte 52: not a JSON object"),
            "{:?}",
            stats.skipped_examples
        );
        assert!(
            stats.skipped_examples[1].starts_with("line at byte 61: not a JSON object"),
            "{:?}",
            stats.skipped_examples
        );
    }

    #[test]
    fn array_elements_that_are_not_records_are_skipped() {
        let content = r#"[{"ProducerID":"a","GroundTruth":"x"}, 5, {"ProducerID":"a"}]"#;
        let (observations, stats) = load_all(content, 2);
        assert_eq!(observations, vec![(Observation::new("a", "x", None), 1)]);
        assert_eq!(stats.skipped, 2);
    }

    #[test]
    fn a_broken_array_is_an_error_not_a_partial_count() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(br#"[{"ProducerID":"a","GroundTruth":"x"}, {"#).unwrap();
        let err = load_share(file.path(), Share { index: 0, peers: 1 }, &mut Loader::default(), &Progress::hidden())
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a valid JSON array"), "{err:#}");
    }

    #[test]
    fn empty_and_unknown_formats() {
        assert_eq!(load_all("  \n", 2).1.records, 0);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"ProducerID,GroundTruth\n").unwrap();
        let err = detect(file.path()).unwrap_err();
        assert!(err.to_string().contains("neither a JSON array nor JSON Lines"), "{err}");
    }
}
