//! How long one worker takes to write and to restore its share of a checkpoint, without a
//! database: generated records become a worker's state (as the follower holds it), which is
//! written with the follower's own checkpoint code, read back, checked, and timed. The restore
//! time is most of a restart's; the rest is reading the change log since the checkpoint.
//!
//! ```sh
//! cargo run --release -p iot-dataflow --example checkpoint_speed -- --records 5000000
//! ```

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use iot_bench::{generate, Spec};
use iot_dataflow::checkpoint::{read_worker, write_worker};
use iot_dataflow::follow_state::{digest, RecordState, Records};
use iot_dataflow::record::{Observation, Verdict};

#[derive(Parser)]
struct Args {
    /// Records of this worker (a 10M follower on 2 workers holds 5M each).
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    producers: u32,
    /// Where to write it (a temporary folder there).
    #[arg(long, default_value = ".cache/bench")]
    dir: std::path::PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let spec =
        Spec { records: args.records, producers: args.producers, pending_rate: 0.05, seed: 7, ..Spec::default() };
    let mut upserts = Vec::with_capacity(args.records as usize);
    generate(&spec, |r| {
        let observation = Observation::new(r.producer_id, r.ground_truth, r.inferred);
        upserts.push((digest(&r.doc_id), Some(RecordState::from(observation))));
    });
    let state: Records = upserts.into_iter().collect();
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;

    let started = Instant::now();
    let file = write_worker(dir.path(), 1, 0, &state)?;
    let written_in = started.elapsed();
    let bytes = std::fs::metadata(dir.path().join(&file.name))?.len();

    let started = Instant::now();
    let restored = read_worker(dir.path(), &file)?;
    let restored_in = started.elapsed();
    let entries = restored.entries();
    ensure!(entries == state.entries(), "the restored state differs from the written one");
    let incorrect = entries
        .iter()
        .filter(|(_, state)| matches!(state, RecordState::Counted(observation) if observation.verdict() == Verdict::Incorrect))
        .count();

    let per_second = |seconds: f64| args.records as f64 / seconds / 1e6;
    println!(
        "{} records ({incorrect} incorrect): file {:.1} MiB ({:.1} B/record); written in {:.2} s \
         ({:.1} M records/s), restored in {:.2} s ({:.1} M records/s)",
        args.records,
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / args.records as f64,
        written_in.as_secs_f64(),
        per_second(written_in.as_secs_f64()),
        restored_in.as_secs_f64(),
        per_second(restored_in.as_secs_f64()),
    );
    Ok(())
}
