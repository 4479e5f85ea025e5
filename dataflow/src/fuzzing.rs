//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay in `tests/fuzz_corpus.rs`:
//! each feeds arbitrary bytes to a reader of outside input and panics only when that reader breaks
//! one of its promises (which is also what a panicking reader does).

use std::io::Write;
use std::path::Path;

use bson::RawDocumentBuf;

use crate::cluster::{read_hostfile, ClusterArgs};
use crate::load::Loader;
use crate::progress::Progress;
use crate::record::Observation;
use crate::source::file::{self, Format};
use crate::source::mongo::{document_id, read_document};
use crate::source::Share;

/// Reads `data` as an input file with one, two and three workers; every split must give the
/// same counts, and a JSON Lines file must count like the JSON array of its lines.
pub fn record_file(data: &[u8]) {
    with_scratch_file(data, |path| {
        let format = match file::detect(path) {
            Ok(format) => format,
            Err(err) => {
                assert!(err.to_string().contains("neither a JSON array nor JSON Lines"), "{err:#}");
                return;
            }
        };
        let whole = load(path, 1);
        for peers in [2, 3] {
            assert_eq!(load(path, peers), whole, "{peers} workers disagree with one");
        }
        if format == Some(Format::JsonLines) {
            if let Some(array) = lines_as_array(data) {
                let from_array = with_scratch_file(&array, |path| load(path, 1));
                assert_eq!(from_array, whole, "the JSON array of the lines counts differently");
            }
        }
    });
}

/// What a load tells: the sorted counts and the totals, or the error's text.
type Loaded = Result<(Vec<(Observation, isize)>, u64, u64, u64), String>;

fn load(path: &Path, peers: usize) -> Loaded {
    let mut loader = Loader::default();
    for index in 0..peers {
        file::load_share(path, Share { index, peers }, &mut loader, &Progress::hidden())
            .map_err(|err| format!("{err:#}"))?;
    }
    let (mut observations, stats) = loader.take();
    observations.sort();
    Ok((observations, stats.records, stats.skipped, stats.deleted))
}

/// The non-blank lines of a JSON Lines file as one JSON array, when every line is a JSON value
/// in UTF-8 (otherwise the array is not valid JSON, which fails the whole load by design, while
/// such lines are skipped one by one).
fn lines_as_array(data: &[u8]) -> Option<Vec<u8>> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').map(<[u8]>::trim_ascii).filter(|l| !l.is_empty()).collect();
    let is_json = |line: &[u8]| {
        // Ignoring a value does not check the UTF-8 of its strings; reading the array does.
        std::str::from_utf8(line).is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
    };
    if !lines.iter().all(|line| is_json(line)) {
        return None;
    }
    Some([&b"["[..], &lines.join(&b","[..])[..], &b"]"[..]].concat())
}

/// Reads `data` as a host file, then builds the cluster configuration of a 1 to 4 process
/// cluster from it (the first byte picks the size and this process's index).
pub fn hostfile(data: &[u8]) {
    let (sizes, text) = data.split_first().unwrap_or((&0, data));
    let processes = u16::from(sizes % 4) + 1; // clap refuses 0
    let process = u16::from(sizes / 4 % 5); // sometimes out of range, which must be an error
    with_scratch_file(text, |path| {
        if let Ok(addresses) = read_hostfile(path) {
            for address in &addresses {
                let (host, port) = address.rsplit_once(':').expect("an accepted address has a port");
                assert!(!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0), "{address:?}");
            }
        }
        let args = ClusterArgs { processes, process, hostfile: Some(path.to_owned()), ..ClusterArgs::single(1) };
        if let Err(err) = args.timely_config() {
            let _ = err.to_string();
        }
    });
}

/// Reads `data` as a stored MongoDB document, both as the driver hands it over (raw bytes,
/// checked lazily) and after a full parse with `bson::Document::from_reader`.
pub fn mongo_document(data: &[u8]) {
    if let Ok(raw) = RawDocumentBuf::from_bytes(data.to_vec()) {
        read(&raw);
    }
    if let Ok(parsed) = bson::Document::from_reader(data) {
        if let Ok(raw) = RawDocumentBuf::from_document(&parsed) {
            read(&raw);
        }
    }
}

fn read(document: &RawDocumentBuf) {
    let _ = (read_document(document), document_id(document));
}

/// The readers take paths: `data` goes to a fresh file (in memory where /dev/shm exists).
fn with_scratch_file<T>(data: &[u8], read: impl FnOnce(&Path) -> T) -> T {
    let shm = Path::new("/dev/shm");
    let mut file = if shm.is_dir() { tempfile::NamedTempFile::new_in(shm) } else { tempfile::NamedTempFile::new() }
        .expect("cannot create a scratch file");
    file.write_all(data).expect("cannot write the scratch file");
    read(file.path())
}
