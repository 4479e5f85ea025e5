//! Follower checkpoints on disk: each worker's record states and worker 0's change-log position,
//! so that a restarted follower replays only the changes since instead of reloading everything.
//!
//! A checkpoint is one file per worker plus a manifest. Every worker file ends with a CRC-32 of
//! what precedes it, and the manifest, written last, names each file with its checksum. A
//! restart trusts only what the manifest names, so a kill at any moment (even while a file is
//! being written) leaves the previous checkpoint whole: files of an unfinished generation are
//! never named by a manifest.
//!
//! Not wired into `--follow` yet (issue 11, item 3): this is the format and its checks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sink::write_atomically;
use crate::source::changes::LogPosition;

/// Changed whenever the layout of [`WorkerState`] or [`Manifest`] changes; a checkpoint of
/// another version is not read.
pub const FORMAT_VERSION: u32 = 1;

const MANIFEST: &str = "manifest.json";

/// What a checkpoint is of. A follower restarted against another collection loads in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The server, with any password redacted.
    pub server: String,
    pub db: String,
    pub collection: String,
}

/// One worker's share of the follower's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Each record's digest and packed state, sorted by digest.
    pub records: Vec<(u128, u32)>,
    /// The names of the producers that the packed states refer to, by index.
    pub producers: Vec<String>,
}

/// The commit point of a checkpoint: what it is of, how far the change log was read, and the
/// files that hold the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub generation: u64,
    pub origin: Origin,
    /// How far the change log was read.
    pub position: LogPosition,
    pub files: Vec<WorkerFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerFile {
    pub name: String,
    pub crc32: u32,
    pub records: u64,
}

/// Why a checkpoint cannot be used; the follower logs it and loads in full.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Unusable {
    #[error("no checkpoint in {0}")]
    Missing(PathBuf),
    #[error("the checkpoint has format version {found}, this follower writes {FORMAT_VERSION}")]
    OtherVersion { found: u32 },
    #[error("the checkpoint is of {found:?}, not of {expected:?}")]
    OtherOrigin { found: Origin, expected: Origin },
    #[error("the checkpoint is damaged: {0}")]
    Damaged(String),
    #[error("the checkpoint is {behind_s} s old and the change log keeps only {retention_s} s")]
    LogGap { behind_s: i64, retention_s: u64 },
}

/// A worker file's bytes: the state, then the CRC-32 of the state's bytes.
pub fn encode(state: &WorkerState) -> Vec<u8> {
    let mut bytes = bincode::serialize(state).expect("a worker state always serializes");
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The state in a worker file's bytes, if they are whole.
pub fn decode(bytes: &[u8]) -> Result<WorkerState, Unusable> {
    let split = bytes.len().checked_sub(4).ok_or_else(|| Unusable::Damaged("a worker file is truncated".into()))?;
    let (body, trailer) = bytes.split_at(split);
    let stored = u32::from_le_bytes(trailer.try_into().expect("four bytes"));
    if crc32fast::hash(body) != stored {
        return Err(Unusable::Damaged("a worker file's checksum does not match".into()));
    }
    bincode::deserialize(body).map_err(|err| Unusable::Damaged(format!("a worker file does not parse: {err}")))
}

/// Writes one worker's state of generation `generation`; the manifest names it once every
/// worker has written its own.
pub fn write_worker(dir: &Path, generation: u64, worker: usize, state: &WorkerState) -> Result<WorkerFile> {
    let name = format!("state-{generation}-{worker}.bin");
    let bytes = encode(state);
    let crc32 = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("four bytes"));
    write_atomically(&dir.join(&name), 0o600, |file| Ok(std::io::Write::write_all(file, &bytes)?))?;
    Ok(WorkerFile { name, crc32, records: state.records.len() as u64 })
}

/// Commits a checkpoint: after this, a restart uses it. Files of older generations are removed.
pub fn commit(dir: &Path, manifest: &Manifest) -> Result<()> {
    write_atomically(&dir.join(MANIFEST), 0o600, |file| Ok(serde_json::to_writer_pretty(file, manifest)?))?;
    let current: Vec<&str> = manifest.files.iter().map(|file| file.name.as_str()).collect();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("state-") && !current.contains(&name.as_ref()) {
            let _ = std::fs::remove_file(dir.join(name.as_ref()));
        }
    }
    Ok(())
}

/// The last committed checkpoint of `origin` in `dir`, with every worker's state, or why it
/// cannot be used.
pub fn read(dir: &Path, origin: &Origin) -> Result<(Manifest, Vec<WorkerState>), Unusable> {
    let bytes = match std::fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing(dir.to_owned())),
        Err(err) => return Err(Unusable::Damaged(format!("cannot read the manifest: {err}"))),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|err| Unusable::Damaged(format!("the manifest does not parse: {err}")))?;
    if manifest.version != FORMAT_VERSION {
        return Err(Unusable::OtherVersion { found: manifest.version });
    }
    if manifest.origin != *origin {
        return Err(Unusable::OtherOrigin { found: manifest.origin, expected: origin.clone() });
    }
    let states = manifest
        .files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(dir.join(&file.name))
                .map_err(|err| Unusable::Damaged(format!("cannot read {}: {err}", file.name)))?;
            let state = decode(&bytes)?;
            if state.records.len() as u64 != file.records {
                return Err(Unusable::Damaged(format!("{} holds another number of records", file.name)));
            }
            Ok(state)
        })
        .collect::<Result<_, _>>()?;
    Ok((manifest, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin { server: "mongodb://127.0.0.1:27017".into(), db: "iot".into(), collection: "inferences".into() }
    }

    fn state(seed: u128) -> WorkerState {
        WorkerState {
            records: (0..1000).map(|i| (seed * 1_000_003 + i, (i as u32) << 2 | 1)).collect(),
            producers: vec!["p,1".into(), "p\"2".into(), "".into()],
        }
    }

    fn checkpoint(dir: &Path, generation: u64, states: &[WorkerState]) -> Manifest {
        let files = states.iter().enumerate().map(|(w, s)| write_worker(dir, generation, w, s).unwrap()).collect();
        let manifest =
            Manifest { version: FORMAT_VERSION, generation, origin: origin(), position: LogPosition::default(), files };
        commit(dir, &manifest).unwrap();
        manifest
    }

    #[test]
    fn a_committed_checkpoint_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let states = [state(1), state(2)];
        let manifest = checkpoint(dir.path(), 1, &states);
        assert_eq!(read(dir.path(), &origin()), Ok((manifest, states.to_vec())));
    }

    #[test]
    fn files_of_an_unfinished_generation_are_not_read_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = checkpoint(dir.path(), 1, &[state(1)]);
        // Generation 2 was being written when the follower was killed: no manifest names it.
        write_worker(dir.path(), 2, 0, &state(9)).unwrap();
        assert_eq!(read(dir.path(), &origin()).unwrap().0, first);
        checkpoint(dir.path(), 3, &[state(3)]);
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["manifest.json", "state-3-0.bin"]);
    }

    #[test]
    fn damage_another_origin_or_version_and_absence_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path(), &origin()), Err(Unusable::Missing(_))));
        checkpoint(dir.path(), 1, &[state(1)]);
        let other = Origin { collection: "other".into(), ..origin() };
        assert!(matches!(read(dir.path(), &other), Err(Unusable::OtherOrigin { .. })));

        let file = dir.path().join("state-1-0.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(read(dir.path(), &origin()), Err(Unusable::Damaged(_))));
        std::fs::write(&file, &bytes[..3]).unwrap();
        assert!(matches!(read(dir.path(), &origin()), Err(Unusable::Damaged(_))));

        let manifest = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).unwrap().replace("\"version\": 1", "\"version\": 99");
        std::fs::write(&manifest, text).unwrap();
        assert_eq!(read(dir.path(), &origin()), Err(Unusable::OtherVersion { found: 99 }));
        std::fs::write(&manifest, "{").unwrap();
        assert!(matches!(read(dir.path(), &origin()), Err(Unusable::Damaged(_))));
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let bytes = encode(&state(5));
        for at in (0..bytes.len()).step_by(97) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "byte {at}");
        }
        assert_eq!(decode(&bytes), Ok(state(5)));
    }
}
