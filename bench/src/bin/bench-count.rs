//! The `dataflow count` benchmark: whole-process wall time and peak memory on generated JSON
//! Lines files, and MongoDB reads next to a bare single-cursor read with the same driver.
//! Every run's CSV is checked against the generator's answer; figures are printed, not asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bson::{doc, RawDocumentBuf};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use iot_bench::expected::{error_counts, read_error_counts};
use iot_bench::run::{measure, median, Measured};
use iot_bench::{write_records, Answer, Spec, Truth};
use iot_schema::field;

/// Benchmark `dataflow count` (see docs/benchmarks.md).
#[derive(Parser)]
struct Args {
    /// Record counts of the JSON Lines files.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000u64, 10_000_000])]
    sizes: Vec<u64>,
    /// Worker counts to run; 0 runs without -w, at the default (every core).
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 1, 2])]
    workers: Vec<u16>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where generated files are kept between runs.
    #[arg(long, default_value = ".cache/bench")]
    dir: PathBuf,
    #[arg(long, default_value = "target/release/dataflow")]
    dataflow: PathBuf,
    /// Also benchmark the MongoDB source on this server.
    #[arg(long)]
    mongo_uri: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    mongo_records: u64,
    #[arg(long, default_value_t = 3)]
    mongo_runs: usize,
    /// Skip the file benchmark.
    #[arg(long)]
    mongo_only: bool,
    /// Instead: the plain count against the count with every view on (`--confusion --classes
    /// --windows --drift`), run after run in turn on one file whose records carry `InferredAt`
    /// (spread over 30 days: 720 one-hour windows per producer).
    #[arg(long)]
    views: bool,
    /// A Python with duckdb (`scripts/setup bench` makes .cache/bench-venv): runs DuckDB on the
    /// same files, paired run by run with `dataflow count` at its default flags.
    #[arg(long, value_name = "PYTHON")]
    duckdb: Option<PathBuf>,
}

/// The `-w` flag for a worker count; 0 is the default, no flag.
fn worker_flags(workers: u16) -> Vec<String> {
    if workers == 0 {
        Vec::new()
    } else {
        vec!["-w".to_owned(), workers.to_string()]
    }
}

fn workers_label(workers: u16) -> String {
    if workers == 0 {
        format!("default ({})", std::thread::available_parallelism().map_or(1, |cores| cores.get()))
    } else {
        workers.to_string()
    }
}

fn spec(records: u64) -> Spec {
    Spec { records, producers: 100, seed: 42, ..Spec::default() }
}

/// Records with an `InferredAt` over 30 days, for the views.
fn timed_spec(records: u64) -> Spec {
    Spec { inferred_span_ms: Some(30 * 86_400_000), ..spec(records) }
}

/// The plain count and the count with every view, paired run by run on the same timed file.
fn views(args: &Args) -> Result<()> {
    println!("| records | file MB | plain median s | peak MiB | all views median s | peak MiB | views / plain |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &records in &args.sizes {
        let (path, answer) = generated_file(&args.dir, &timed_spec(records), "timed-records")?;
        let bytes = std::fs::metadata(&path)?.len();
        let output = args.dir.join("bench-out.csv");
        let count = |with_views: bool| -> Result<Measured> {
            let mut command = Command::new(&args.dataflow);
            command.arg("count").arg("--input").arg(&path).arg("--output").arg(&output).stderr(Stdio::null());
            if with_views {
                for view in ["confusion", "classes", "windows", "drift"] {
                    command.arg(format!("--{view}")).arg(args.dir.join(format!("bench-{view}.csv")));
                }
            }
            let measured = measure(&mut command)?;
            ensure!(read_error_counts(&output)? == error_counts(&answer), "wrong counts for {records} records");
            Ok(measured)
        };
        let (mut plain, mut all) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            plain.push(count(false)?);
            all.push(count(true)?);
        }
        let wall = |runs: &[Measured]| median(runs.iter().map(|m| m.wall).collect()).as_secs_f64();
        let peak = |runs: &[Measured]| runs.iter().map(|m| m.max_rss).max().unwrap_or(0) as f64 / (1 << 20) as f64;
        println!(
            "| {records} | {:.0} | {:.3} | {:.1} | {:.3} | {:.1} | {:.2} |",
            bytes as f64 / 1e6,
            wall(&plain),
            peak(&plain),
            wall(&all),
            peak(&all),
            wall(&all) / wall(&plain)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.dataflow.is_file(),
        "{} not found: build it with cargo build --release -p iot-dataflow",
        args.dataflow.display()
    );
    std::fs::create_dir_all(&args.dir)?;
    if args.views {
        return views(&args);
    }
    if !args.mongo_only {
        files(&args)?;
    }
    if let Some(python) = &args.duckdb {
        against_duckdb(&args, python)?;
    }
    if let Some(uri) = &args.mongo_uri {
        mongo(&args, uri)?;
    }
    Ok(())
}

fn files(args: &Args) -> Result<()> {
    println!("| records | file MB | workers | median s | min s | MB/s | records/s | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &records in &args.sizes {
        let (path, answer) = generated_file(&args.dir, &spec(records), "records")?;
        let bytes = std::fs::metadata(&path)?.len();
        for &workers in &args.workers {
            let output = args.dir.join("bench-out.csv");
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let measured = measure(
                    Command::new(&args.dataflow)
                        .arg("count")
                        .args(worker_flags(workers))
                        .arg("--input")
                        .arg(&path)
                        .arg("--output")
                        .arg(&output)
                        .stderr(Stdio::null()),
                )?;
                ensure!(read_error_counts(&output)? == error_counts(&answer), "wrong counts for {records} records");
                runs.push(measured);
            }
            report_file_row(records, bytes, workers, &runs);
        }
    }
    Ok(())
}

/// `dataflow count` at its default flags and DuckDB on the same file, run after run in turn so
/// that both see the same machine; both CSVs are checked against the generator's answer.
fn against_duckdb(args: &Args, python: &Path) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/duckdb_count.py");
    println!(
        "\n| records | dataflow (default flags) median s | peak MiB | DuckDB median s | peak MiB | dataflow / DuckDB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &records in &args.sizes {
        let (path, answer) = generated_file(&args.dir, &spec(records), "records")?;
        let (ours, theirs) = (args.dir.join("bench-out.csv"), args.dir.join("bench-duckdb.csv"));
        let mut pairs = Vec::new();
        for _ in 0..args.runs {
            let dataflow = measure(
                Command::new(&args.dataflow)
                    .arg("count")
                    .arg("--input")
                    .arg(&path)
                    .arg("--output")
                    .arg(&ours)
                    .stderr(Stdio::null()),
            )?;
            ensure!(read_error_counts(&ours)? == error_counts(&answer), "dataflow: wrong counts for {records} records");
            let duckdb = measure(Command::new(python).arg(&script).arg(&path).arg(&theirs))?;
            ensure!(read_error_counts(&theirs)? == error_counts(&answer), "DuckDB: wrong counts for {records} records");
            pairs.push((dataflow, duckdb));
        }
        let wall = |pick: fn(&(Measured, Measured)) -> Measured| median(pairs.iter().map(|p| pick(p).wall).collect());
        let peak = |pick: fn(&(Measured, Measured)) -> Measured| {
            pairs.iter().map(|p| pick(p).max_rss).max().unwrap_or(0) as f64 / (1 << 20) as f64
        };
        let (ours, theirs) = (wall(|p| p.0), wall(|p| p.1));
        println!(
            "| {records} | {:.3} | {:.1} | {:.3} | {:.1} | {:.2} |",
            ours.as_secs_f64(),
            peak(|p| p.0),
            theirs.as_secs_f64(),
            peak(|p| p.1),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
    Ok(())
}

fn report_file_row(records: u64, bytes: u64, workers: u16, runs: &[Measured]) {
    let wall = median(runs.iter().map(|m| m.wall).collect()).as_secs_f64();
    let min = runs.iter().map(|m| m.wall).min().unwrap_or_default().as_secs_f64();
    let peak = runs.iter().map(|m| m.max_rss).max().unwrap_or(0) as f64 / (1 << 20) as f64;
    println!(
        "| {records} | {:.0} | {} | {wall:.3} | {min:.3} | {:.0} | {:.2e} | {peak:.1} |",
        bytes as f64 / 1e6,
        workers_label(workers),
        bytes as f64 / 1e6 / wall,
        records as f64 / wall,
    );
}

/// A JSON Lines file of `records` records and its answer, generated once and kept.
fn generated_file(dir: &Path, spec: &Spec, name: &str) -> Result<(PathBuf, Answer)> {
    let records = spec.records;
    let path = dir.join(format!("{name}-{records}.jsonl"));
    let answer_path = dir.join(format!("{name}-{records}.answer.csv"));
    if path.is_file() && answer_path.is_file() {
        let answer = read_error_counts(&answer_path)?
            .into_iter()
            .map(|(producer, errors)| (producer, Truth { errors, ..Truth::default() }))
            .collect();
        return Ok((path, answer));
    }
    eprintln!("generating {records} records into {}", path.display());
    let answer = write_records(spec, std::fs::File::create(&path)?, false)?;
    let mut csv = csv::Writer::from_path(&answer_path)?;
    csv.write_record(["ProducerID", "total_errors"])?;
    for (producer, truth) in &answer {
        csv.write_record([producer.as_str(), &truth.errors.to_string()])?;
    }
    csv.flush()?;
    Ok((path, answer))
}

/// `dataflow count --mongo-uri` at each worker count, next to a bare single-cursor read.
fn mongo(args: &Args, uri: &str) -> Result<()> {
    let (db, collection_name) = ("iot_bench", "inferences");
    let client = mongodb::sync::Client::with_uri_str(uri)?;
    let collection = client.database(db).collection::<RawDocumentBuf>(collection_name);
    let answer = mongo_base(args, uri, &collection)?;
    let bare = median((0..args.mongo_runs).map(|_| bare_read(args, &collection)).collect::<Result<_>>()?);
    let ids = generated_ids(args.mongo_records);
    let rate = |d: Duration| args.mongo_records as f64 / d.as_secs_f64();
    println!("\n| MongoDB read of {} records | median s | records/s | vs bare cursor |", args.mongo_records);
    println!("|---|---:|---:|---:|");
    println!(
        "| bare single cursor (same driver, projection, batch size) | {:.2} | {:.0} | 1.00 |",
        bare.as_secs_f64(),
        rate(bare)
    );
    for &workers in &args.workers {
        let output = args.dir.join("bench-mongo.csv");
        let mut runs = Vec::new();
        for _ in 0..args.mongo_runs {
            let flags = ["--mongo-uri", uri, "--db", db, "--mongo-timeout", "60"];
            let measured = measure(
                Command::new(&args.dataflow)
                    .arg("count")
                    .args(worker_flags(workers))
                    .args(flags)
                    .arg("--output")
                    .arg(&output)
                    .stderr(Stdio::null()),
            )?;
            ensure!(read_error_counts(&output)? == error_counts(&answer), "wrong counts from MongoDB");
            runs.push(measured.wall);
        }
        let wall = median(runs);
        if workers > 1 {
            let cuts = quantiles(&ids, workers.into());
            let runs = (0..args.mongo_runs).map(|_| bare_parallel_read(args, &collection, &cuts));
            let parallel = median(runs.collect::<Result<_>>()?);
            println!(
                "| bare cursors, one per worker ({workers}, `_id` ranges split at the ids' quantiles) | {:.2} | {:.0} | {:.2} |",
                parallel.as_secs_f64(),
                rate(parallel),
                rate(parallel) / rate(bare)
            );
        }
        println!(
            "| dataflow count, workers {} (whole process) | {:.2} | {:.0} | {:.2} |",
            workers_label(workers),
            wall.as_secs_f64(),
            rate(wall),
            rate(wall) / rate(bare)
        );
    }
    Ok(())
}

/// The generated collection's ids, sorted as MongoDB compares strings (by their UTF-8 bytes).
fn generated_ids(records: u64) -> Vec<String> {
    let mut ids = Vec::with_capacity(records as usize);
    iot_bench::generate(&spec(records), |record| ids.push(record.doc_id.clone()));
    ids.sort();
    ids
}

/// The ids that cut sorted `ids` into `shares` equal parts: the best split a planner could find.
fn quantiles(ids: &[String], shares: usize) -> Vec<String> {
    (1..shares).map(|i| ids[i * ids.len() / shares].clone()).collect()
}

/// One bare cursor per `_id` range, all at once: what parallel reading costs without the engine.
/// (The generated ids are all strings, so no share needs the non-string ids.)
fn bare_parallel_read(
    args: &Args,
    collection: &mongodb::sync::Collection<RawDocumentBuf>,
    cuts: &[String],
) -> Result<Duration> {
    let started = Instant::now();
    let bounds: Vec<(Option<&String>, Option<&String>)> =
        (0..=cuts.len()).map(|i| (i.checked_sub(1).map(|j| &cuts[j]), cuts.get(i))).collect();
    let seen: u64 = std::thread::scope(|scope| {
        let readers: Vec<_> =
            bounds.iter().map(|&(from, to)| scope.spawn(move || bare_range_read(collection, from, to))).collect();
        readers.into_iter().map(|reader| reader.join().expect("reader thread")).sum::<Result<u64>>()
    })?;
    ensure!(seen == args.mongo_records, "bare parallel read saw {seen} documents");
    Ok(started.elapsed())
}

fn bare_range_read(
    collection: &mongodb::sync::Collection<RawDocumentBuf>,
    from: Option<&String>,
    to: Option<&String>,
) -> Result<u64> {
    let mut range = doc! { "$gte": from.cloned().unwrap_or_default() };
    if let Some(to) = to {
        range.insert("$lt", to);
    }
    let projection = doc! { field::PRODUCER_ID: 1, field::GROUND_TRUTH: 1, field::INFERRED: 1, field::DELETED: 1 };
    let mut seen = 0u64;
    for document in collection.find(doc! { field::DOC_ID: range }).projection(projection).batch_size(10_000).run()? {
        seen += u64::from(document?.get_str(field::PRODUCER_ID).is_ok());
    }
    Ok(seen)
}

/// The generated collection, loaded unless it is already there with the right size; its answer.
fn mongo_base(args: &Args, uri: &str, collection: &mongodb::sync::Collection<RawDocumentBuf>) -> Result<Answer> {
    let present = collection.estimated_document_count().run().context("MongoDB unreachable")?;
    let spec = spec(args.mongo_records);
    if present == args.mongo_records {
        return Ok(iot_bench::generate(&spec, |_| {}));
    }
    collection.drop().run()?;
    let bar = ProgressBar::new(args.mongo_records).with_style(
        ProgressStyle::with_template("loading {human_pos}/{human_len} ({per_sec}) {elapsed}").expect("template"),
    );
    let db = collection.namespace().db;
    let answer = iot_bench::mongo::load(uri, &db, collection.name(), &spec, |n| bar.inc(n))?;
    bar.finish_and_clear();
    Ok(answer)
}

/// One cursor, the same projection and batch size the dataflow uses.
fn bare_read(args: &Args, collection: &mongodb::sync::Collection<RawDocumentBuf>) -> Result<Duration> {
    let started = Instant::now();
    let projection = doc! { field::PRODUCER_ID: 1, field::GROUND_TRUTH: 1, field::INFERRED: 1, field::DELETED: 1 };
    let mut seen = 0u64;
    for document in collection.find(doc! {}).projection(projection).batch_size(10_000).run()? {
        seen += u64::from(document?.get_str(field::PRODUCER_ID).is_ok());
    }
    ensure!(seen == args.mongo_records, "bare read saw {seen} documents");
    Ok(started.elapsed())
}
