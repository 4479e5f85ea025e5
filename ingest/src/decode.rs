//! How many images a consumer decodes at once, sized against the memory it may use: every record
//! is parsed and its image decoded (see [`message::parse`]) under one of a fixed number of
//! permits, `budget / worst-case bytes per decode`, on tokio's blocking threads.

use std::path::Path;
use std::sync::Arc;

use iot_schema::ImageMessage;
use tokio::sync::Semaphore;

use crate::message::{self, ImageLimits, Inbound, Malformed};

/// `--decode-memory-mb` when the consumer runs without a cgroup memory limit.
pub const DEFAULT_BUDGET_MB: u64 = 256;
/// Share of a cgroup memory limit given to decodes. The rest is for what a consumer holds
/// anyway: librdkafka's fetch queue (up to 64 MiB by default), the batches in flight and the
/// MongoDB and HTTP clients.
pub const CGROUP_SHARE: u64 = 4;

/// Decodes running at once: as many worst-case decodes as fit in the budget, at least one.
pub fn decode_slots(budget_bytes: u64, limits: &ImageLimits) -> usize {
    let per_decode = limits.bytes_per_decode().max(1);
    usize::try_from(budget_bytes / per_decode).unwrap_or(usize::MAX).max(1)
}

/// The default decode budget in MiB: a quarter of the cgroup's memory limit (v2 `memory.max`,
/// else v1 `memory.limit_in_bytes`), or [`DEFAULT_BUDGET_MB`] where there is none.
pub fn default_budget_mb() -> u64 {
    cgroup_memory_limit(Path::new("/sys/fs/cgroup")).map_or(DEFAULT_BUDGET_MB, |limit| (limit / CGROUP_SHARE) >> 20)
}

/// The memory limit of the cgroup mounted at `root`, if it has one.
pub fn cgroup_memory_limit(root: &Path) -> Option<u64> {
    let read = |file: &str| std::fs::read_to_string(root.join(file)).ok();
    let text = read("memory.max").or_else(|| read("memory/memory.limit_in_bytes"))?;
    // v2 writes "max" and v1 a number near i64::MAX for "no limit".
    text.trim().parse::<u64>().ok().filter(|&bytes| bytes < 1 << 60)
}

/// Parses records with at most [`decode_slots`] image decodes at once.
#[derive(Clone, Debug)]
pub struct Decoder {
    limits: ImageLimits,
    slots: Arc<Semaphore>,
}

impl Decoder {
    pub fn new(limits: ImageLimits, budget_mb: u64) -> Decoder {
        let slots = decode_slots(budget_mb.saturating_mul(1 << 20), &limits);
        tracing::info!(
            "decoding images up to {} pixels, {slots} at once (budget {budget_mb} MiB, {} MiB per decode)",
            limits.max_pixels,
            limits.bytes_per_decode() >> 20
        );
        Decoder { limits, slots: Arc::new(Semaphore::new(slots)) }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// [`message::parse`] of a record's payload, off the async threads, under a permit. The
    /// record goes to the blocking thread and comes back with the verdict, so that its payload
    /// is not copied. `None` when the runtime shut down first (only that cancels a blocking
    /// task): the record is then neither handled nor dead-lettered, and is read again later.
    pub async fn parse(&self, inbound: Inbound) -> Option<(Inbound, Result<ImageMessage, Malformed>)> {
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            unreachable!("the decode semaphore is never closed")
        };
        let limits = self.limits;
        let decoded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // The `image` crate must not panic on input; if it does, that image is bad.
            let parsed = std::panic::catch_unwind(|| message::parse(inbound.payload.as_deref(), &limits))
                .unwrap_or_else(|_| Err(Malformed::BadImage("the image decoder panicked on it".into())));
            (inbound, parsed)
        })
        .await;
        decoded.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn slots_are_the_budget_over_the_worst_case_decode() {
        let limits = ImageLimits { max_pixels: 2048 * 2048 };
        assert_eq!(limits.bytes_per_decode(), 64 * MIB);
        assert_eq!(decode_slots(256 * MIB, &limits), 4);
        assert_eq!(decode_slots(255 * MIB, &limits), 3);
        assert_eq!(decode_slots(128 * MIB, &limits), 2);
    }

    #[test]
    fn at_least_one_decode_runs_whatever_the_budget() {
        let limits = ImageLimits { max_pixels: 8192 * 8192 };
        assert_eq!(decode_slots(0, &limits), 1);
        assert_eq!(decode_slots(256 * MIB, &limits), 1);
        assert_eq!(decode_slots(u64::MAX, &ImageLimits { max_pixels: 0 }), usize::MAX);
    }

    #[test]
    fn cgroup_limits_v2_v1_and_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None, "v1 without a limit");
        std::fs::write(dir.path().join("memory/memory.limit_in_bytes"), "536870912\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), Some(512 * MIB));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None, "v2 without a limit");
        std::fs::write(dir.path().join("memory.max"), "1073741824\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), Some(1024 * MIB));
    }
}
