//! Writes generated records with a known answer: JSON Lines or a JSON array, and the answer CSV.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use iot_bench::{write_records, Spec};

/// Generate stored records with known per-producer errors.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    producers: u32,
    #[arg(long, default_value_t = 0.3)]
    error_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    pending_rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give some producers names that need CSV quoting.
    #[arg(long)]
    awkward_names: bool,
    /// Give inferred records an `InferredAt` (extended JSON), spread evenly over this long from
    /// 2026-11-01, e.g. 30d; without it they have none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    inferred_over: Option<std::time::Duration>,
    /// Write one JSON array instead of JSON Lines.
    #[arg(long)]
    json_array: bool,
    #[arg(long)]
    output: PathBuf,
    /// Also write the expected `ProducerID,total_errors` here.
    #[arg(long)]
    answer: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let spec = Spec {
        records: args.records,
        producers: args.producers,
        error_rate: args.error_rate,
        pending_rate: args.pending_rate,
        seed: args.seed,
        awkward_names: args.awkward_names,
        inferred_span_ms: args.inferred_over.map(|span| span.as_millis() as i64),
    };
    let file =
        std::fs::File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let answer = write_records(&spec, file, args.json_array)?;
    if let Some(path) = args.answer {
        let mut csv = csv::Writer::from_path(&path)?;
        csv.write_record(["ProducerID", "total_errors"])?;
        for (producer, truth) in &answer {
            csv.write_record([producer.as_str(), &truth.errors.to_string()])?;
        }
        csv.flush()?;
    }
    eprintln!("wrote {} records from {} producers to {}", args.records, answer.len(), args.output.display());
    Ok(())
}
