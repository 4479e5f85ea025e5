//! Follower checkpoints on disk: each worker's record states and worker 0's change-log position,
//! so that a restarted follower replays only the changes since instead of reloading everything.
//!
//! A checkpoint is one file per worker plus a manifest. Every worker file ends with a CRC-32 of
//! what precedes it, and the manifest, written last, names each file with its checksum. A
//! restart trusts only what the manifest names, so a kill at any moment (even while a file is
//! being written) leaves the previous checkpoint whole: files of an unfinished generation are
//! never named by a manifest.
//!
//! The manifest is worker 0's (process 0's `--checkpoint-dir`); each worker's file is in its own
//! process's `--checkpoint-dir`, so the processes of a cluster need no shared disk.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::follow_state::Records;
use crate::sink::write_atomically;
use crate::source::changes::LogPosition;

/// Changed whenever the layout of [`WorkerState`] or [`Manifest`] changes; a checkpoint of
/// another version is not read.
pub const FORMAT_VERSION: u32 = 2;

const MANIFEST: &str = "manifest.json";

/// What a checkpoint is of. A follower restarted against another collection loads in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The server, with any password redacted.
    pub server: String,
    pub db: String,
    pub collection: String,
    /// The views' window width in ms, if any: record states hold their window only with views,
    /// so a follower with other views loads in full.
    #[serde(default)]
    pub window_ms: Option<i64>,
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
    /// When it was written (this machine's clock, RFC 3339), for the log.
    pub written_at: String,
    /// One per worker, by worker index: a restart with another number of workers loads in full.
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
    #[error("the checkpoint is of {found}, not of {expected}")]
    OtherOrigin { found: Box<Origin>, expected: Box<Origin> },
    #[error("the checkpoint was written by {found} workers and this cluster runs {expected}")]
    OtherWorkers { found: usize, expected: usize },
    #[error("the checkpoint is damaged: {0}")]
    Damaged(String),
    #[error("the change log cannot be read: {0}")]
    LogUnreadable(String),
    #[error("the checkpoint is {behind_s} s old and the change log keeps only {retention_s} s")]
    LogGap { behind_s: i64, retention_s: u64 },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} on {}", self.db, self.collection, self.server)?;
        match self.window_ms {
            Some(ms) => write!(f, " with views in {ms} ms windows"),
            None => write!(f, " without views"),
        }
    }
}

/// Writes one worker's state of generation `generation`: the state, then the CRC-32 of its
/// bytes. The manifest names the file once every worker has written its own.
pub fn write_worker(dir: &Path, generation: u64, worker: usize, records: &Records) -> Result<WorkerFile> {
    let name = format!("state-{generation}-{worker}.bin");
    let mut written = None;
    write_atomically(&dir.join(&name), 0o600, |file| {
        let mut out = Checksummed::new(BufWriter::new(file));
        let records = records.save(&mut out)?;
        out.flush()?;
        // Where the fault tests kill a follower: the state is on disk, not yet whole or named.
        fail::fail_point!("checkpoint-worker-file-written");
        let crc32 = out.crc.clone().finalize();
        out.inner.write_all(&crc32.to_le_bytes())?;
        out.inner.flush()?;
        written = Some(WorkerFile { name: name.clone(), crc32, records });
        Ok(())
    })?;
    Ok(written.expect("write_atomically ran the fill"))
}

/// One worker's state from the file the manifest names, checked against the manifest's
/// checksum and the file's own.
pub fn read_worker(dir: &Path, file: &WorkerFile) -> Result<Records, Unusable> {
    let damaged = |what: String| Unusable::Damaged(format!("{}: {what}", file.name));
    let opened = std::fs::File::open(dir.join(&file.name)).map_err(|err| damaged(format!("cannot open it: {err}")))?;
    let len = opened.metadata().map_err(|err| damaged(err.to_string()))?.len();
    let body = len.checked_sub(4).ok_or_else(|| damaged("it is truncated".into()))?;
    let mut reader = BufReader::new(opened);
    let mut input = Checksummed::new((&mut reader).take(body));
    let records = Records::restore(&mut input).map_err(|err| damaged(format!("it does not parse: {err}")))?;
    let (unread, crc32) = (input.inner.limit(), input.crc.finalize());
    if unread != 0 {
        return Err(damaged("it has bytes after the state".into()));
    }
    let mut trailer = [0u8; 4];
    reader.read_exact(&mut trailer).map_err(|err| damaged(err.to_string()))?;
    if crc32 != u32::from_le_bytes(trailer) || crc32 != file.crc32 {
        return Err(damaged("its checksum does not match".into()));
    }
    if records.len() as u64 != file.records {
        return Err(damaged("it holds another number of records than the manifest says".into()));
    }
    Ok(records)
}

/// A reader or writer that keeps the CRC-32 of the bytes that pass through it.
struct Checksummed<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Checksummed<T> {
    fn new(inner: T) -> Self {
        Checksummed { inner, crc: crc32fast::Hasher::new() }
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        Ok(read)
    }
}

/// Commits a checkpoint: after this, a restart uses it. The workers then remove their stale
/// files ([`remove_stale`]).
pub fn commit(dir: &Path, manifest: &Manifest) -> Result<()> {
    write_atomically(&dir.join(MANIFEST), 0o600, |file| Ok(serde_json::to_writer_pretty(file, manifest)?))
}

/// Removes the state files in `dir` of generations other than `keep`, and the unfinished ones a
/// killed follower left: those of `worker`, or of every worker if `None`.
pub fn remove_stale(dir: &Path, keep: &[Option<u64>], worker: Option<usize>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        // `state-<generation>-<worker>.bin`, or its temporary `.state-<generation>-<worker>.bin.<random>`.
        let Some(stem) = name.strip_prefix("state-").or_else(|| name.strip_prefix(".state-")) else { continue };
        let Some((of, rest)) = stem.split_once('-') else { continue };
        let by = rest.split_once(".bin").map_or(rest, |(by, _)| by);
        let unfinished = name.starts_with('.');
        let other_generation = of.parse::<u64>().is_ok_and(|of| !keep.contains(&Some(of)));
        let mine = worker.is_none_or(|worker| by.parse::<usize>() == Ok(worker));
        if mine && (unfinished || other_generation) {
            let _ = std::fs::remove_file(dir.join(name.as_ref()));
        }
    }
    Ok(())
}

/// The last committed checkpoint's manifest, if it is of `origin` and of this format version.
pub fn read_manifest(dir: &Path, origin: &Origin) -> Result<Manifest, Unusable> {
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
        return Err(Unusable::OtherOrigin { found: Box::new(manifest.origin), expected: Box::new(origin.clone()) });
    }
    Ok(manifest)
}

/// The generation after the newest one in `dir`, whatever it is of: new files never take the
/// name of files a committed manifest names.
pub fn next_generation(dir: &Path) -> u64 {
    #[derive(Deserialize)]
    struct Generation {
        generation: u64,
    }
    std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Generation>(&bytes).ok())
        .map_or(1, |manifest| manifest.generation + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow_state::{digest, RecordState};
    use crate::record::Observation;

    fn origin() -> Origin {
        Origin {
            server: "mongodb://127.0.0.1:27017".into(),
            db: "iot".into(),
            collection: "inferences".into(),
            window_ms: None,
        }
    }

    fn records(seed: u64) -> Records {
        (0..1000)
            .map(|i| {
                let producer_id = format!("p,{}\"", (seed + i) % 3);
                let state = match i % 4 {
                    0 => RecordState::Malformed,
                    _ => RecordState::Counted(Observation::new(&producer_id, "cat", Some("dog"))),
                };
                (digest(&format!("{seed}/{i}")), Some(state))
            })
            .collect()
    }

    fn checkpoint(dir: &Path, generation: u64, workers: &[Records]) -> Manifest {
        let files = workers.iter().enumerate().map(|(w, r)| write_worker(dir, generation, w, r).unwrap()).collect();
        let manifest = Manifest {
            version: FORMAT_VERSION,
            generation,
            origin: origin(),
            position: LogPosition { watermark_ms: 42, seen: vec![("entry".into(), 41)] },
            written_at: "2026-11-30T10:00:00Z".into(),
            files,
        };
        commit(dir, &manifest).unwrap();
        remove_stale(dir, &[Some(generation)], None).unwrap();
        manifest
    }

    fn read_all(dir: &Path) -> Result<(Manifest, Vec<Records>), Unusable> {
        let manifest = read_manifest(dir, &origin())?;
        let workers = manifest.files.iter().map(|file| read_worker(dir, file)).collect::<Result<_, _>>()?;
        Ok((manifest, workers))
    }

    #[test]
    fn a_committed_checkpoint_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let workers = [records(1), records(2)];
        let manifest = checkpoint(dir.path(), 1, &workers);
        let (read, restored) = read_all(dir.path()).unwrap();
        assert_eq!(read, manifest);
        for (restored, written) in restored.iter().zip(&workers) {
            assert_eq!(restored.entries(), written.entries());
        }
        assert_eq!(next_generation(dir.path()), 2);
    }

    #[test]
    fn files_of_an_unfinished_generation_are_not_read_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = checkpoint(dir.path(), 1, &[records(1)]);
        // Generation 2 was being written when the follower was killed: no manifest names it.
        write_worker(dir.path(), 2, 0, &records(9)).unwrap();
        std::fs::write(dir.path().join(".state-2-1.bin.x1y2z3"), "half").unwrap();
        let (manifest, restored) = read_all(dir.path()).unwrap();
        assert_eq!(manifest, first);
        assert_eq!(restored[0].entries(), records(1).entries());
        checkpoint(dir.path(), 3, &[records(3)]);
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["manifest.json", "state-3-0.bin"]);
    }

    #[test]
    fn damage_another_origin_or_version_and_absence_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_all(dir.path()), Err(Unusable::Missing(_))));
        assert_eq!(next_generation(dir.path()), 1);
        checkpoint(dir.path(), 1, &[records(1)]);
        let other = Origin { collection: "other".into(), ..origin() };
        assert!(matches!(read_manifest(dir.path(), &other), Err(Unusable::OtherOrigin { .. })));

        let file = dir.path().join("state-1-0.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(read_all(dir.path()), Err(Unusable::Damaged(_))));
        std::fs::write(&file, &bytes[..3]).unwrap();
        assert!(matches!(read_all(dir.path()), Err(Unusable::Damaged(_))));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(read_all(dir.path()), Err(Unusable::Damaged(_))));

        let manifest = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace(&format!("\"version\": {FORMAT_VERSION}"), "\"version\": 99");
        std::fs::write(&manifest, text).unwrap();
        assert_eq!(read_all(dir.path()).err(), Some(Unusable::OtherVersion { found: 99 }));
        std::fs::write(&manifest, "{").unwrap();
        assert!(matches!(read_all(dir.path()), Err(Unusable::Damaged(_))));
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_worker(dir.path(), 1, 0, &records(5)).unwrap();
        let path = dir.path().join(&file.name);
        let bytes = std::fs::read(&path).unwrap();
        for at in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            assert!(read_worker(dir.path(), &file).is_err(), "byte {at}");
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_worker(dir.path(), &file).unwrap().entries(), records(5).entries());
    }
}
