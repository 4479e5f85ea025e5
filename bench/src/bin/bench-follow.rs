//! The `dataflow count --follow` benchmark: delay from a write to the CSV that reflects it, for
//! single writes and bursts, and CPU time per change, on a base of generated records.
//! Writes go through the write contract (`iot_schema::write`); figures are printed. With
//! `--restart`, the follower keeps checkpoints and is then killed (SIGKILL), records change while
//! it is down, and the restart is timed until its CSV is current again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use iot_bench::expected::read_error_counts;
use iot_bench::testkit::ChildGuard;
use iot_bench::{generate, Spec, LABELS};
use iot_schema::{write, ImageMessage};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_uri: String,
    /// Base sizes (records loaded before following).
    #[arg(long, value_delimiter = ',', default_values_t = [20_000u64])]
    bases: Vec<u64>,
    #[arg(long, default_value_t = 20)]
    single_writes: usize,
    #[arg(long, default_value_t = 3)]
    bursts: usize,
    #[arg(long, default_value_t = 1000)]
    burst_size: usize,
    #[arg(long, default_value_t = 200)]
    poll_interval_ms: u64,
    /// Workers of the follower. One by default: FerretDB serves one cursor over the collection
    /// far faster than several `_id` ranges, each of which it answers with a full scan.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[arg(long, default_value = "target/release/dataflow")]
    dataflow: PathBuf,
    #[arg(long, default_value = ".cache/bench")]
    dir: PathBuf,
    /// Keep checkpoints, then kill the follower, change this many records while it is down, and
    /// time the restart until the CSV is current (0: no restart).
    #[arg(long, default_value_t = 0)]
    restart: usize,
    /// Only load the bases into MongoDB, for a later run with --keep-base.
    #[arg(long)]
    load_only: bool,
    /// Use a base an earlier --load-only run loaded, if no run has changed it since.
    #[arg(long)]
    keep_base: bool,
    /// Follow with every view on and the live page served (`--serve`, 1h windows), on a base
    /// whose records carry an `InferredAt` over 30 days.
    #[arg(long)]
    views: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    println!("| base records | writes | p50 delay ms | p99 delay ms | max ms | CPU ms per change |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &base in &args.bases {
        if args.load_only {
            let database = mongodb::sync::Client::with_uri_str(&args.mongo_uri)?.database(&base_db(base));
            fresh_base(&args, base, &database)?;
            eprintln!("base {base} loaded into {}", base_db(base));
        } else {
            run_base(&args, base)?;
        }
    }
    Ok(())
}

/// One base size: a fresh base, a follower that loads it, then single writes and bursts, each
/// timed until the follower's CSV shows it.
fn run_base(args: &Args, base: u64) -> Result<()> {
    let db = base_db(base);
    let database = mongodb::sync::Client::with_uri_str(&args.mongo_uri)?.database(&db);
    let mut flips = fresh_base(args, base, &database)?;
    let output = args.dir.join(format!("follow-{base}.csv"));
    let _ = std::fs::remove_file(&output);
    let checkpoints = args.dir.join(format!("checkpoints-{base}"));
    let _ = std::fs::remove_dir_all(&checkpoints);
    let mut follower = start_follower(args, &db, &output, &checkpoints, "load")?;
    let load_started = Instant::now();
    let mut counts = wait_until(&output, Duration::from_secs(3600), |_| true)?;
    let loaded_in = load_started.elapsed();
    let pid = follower.pid();
    let loaded_rss = status_kib(pid, "VmRSS").unwrap_or(0);

    let cpu_before = cpu_time(pid)?;
    let mut delays = Vec::new();
    for _ in 0..args.single_writes {
        let started = Instant::now();
        flips.flip(&database, &mut counts)?;
        wait_for_counts(&output, &counts)?;
        delays.push(started.elapsed());
    }
    report(base, "single", &mut delays, cpu_time(pid)? - cpu_before, args.single_writes);

    let cpu_before = cpu_time(pid)?;
    let mut delays = Vec::new();
    for _ in 0..args.bursts {
        for _ in 0..args.burst_size {
            flips.flip(&database, &mut counts)?;
        }
        // The delay runs from the last write of the burst: writing 1000 is the writer's time.
        let started = Instant::now();
        wait_for_counts(&output, &counts)?;
        delays.push(started.elapsed());
    }
    let changes = args.bursts * args.burst_size;
    report(base, &format!("bursts of {}", args.burst_size), &mut delays, cpu_time(pid)? - cpu_before, changes);
    let (rss, peak) = (status_kib(pid, "VmRSS").unwrap_or(0), status_kib(pid, "VmHWM").unwrap_or(0));
    let per_record = |kib: u64| kib as f64 * 1024.0 / base as f64;
    eprintln!(
        "base {base}: initial load {:.1} s; follower RSS after the load {} MiB ({:.1} B/record), after the \
         writes {} MiB ({:.1} B/record), peak {} MiB ({:.1} B/record)",
        loaded_in.as_secs_f64(),
        loaded_rss / 1024,
        per_record(loaded_rss),
        rss / 1024,
        per_record(rss),
        peak / 1024,
        per_record(peak),
    );
    if args.restart > 0 {
        time_restart(args, base, &db, &output, &checkpoints, &mut follower, &mut flips, &mut counts)?;
    }
    Ok(())
}

/// Kills the follower, changes `--restart` records, restarts it from its checkpoint and times it
/// until the CSV is current; prints what the follower's logs say about writing and reading it.
#[allow(clippy::too_many_arguments)]
fn time_restart(
    args: &Args,
    base: u64,
    db: &str,
    output: &Path,
    checkpoints: &Path,
    follower: &mut ChildGuard,
    flips: &mut Flips,
    counts: &mut BTreeMap<String, u64>,
) -> Result<()> {
    let database = mongodb::sync::Client::with_uri_str(&args.mongo_uri)?.database(db);
    follower.kill();
    for _ in 0..args.restart {
        flips.flip(&database, counts)?;
    }
    let bytes: u64 = std::fs::read_dir(checkpoints)?
        .map(|e| e.map(|e| e.metadata().map_or(0, |m| m.len())))
        .sum::<std::io::Result<_>>()?;
    let started = Instant::now();
    let restarted = start_follower(args, db, output, checkpoints, "restart")?;
    wait_for_counts(output, counts)?;
    let current_in = started.elapsed();
    let log =
        |name: &str| std::fs::read_to_string(args.dir.join(format!("follow-{base}-{name}.log"))).unwrap_or_default();
    let said = |name: &str, text: &str| log(name).lines().find(|line| line.contains(text)).map(str::to_owned);
    eprintln!(
        "base {base}: checkpoint {:.1} MiB ({:.1} B/record); written: {}; restart after SIGKILL with {} changes \
         while down: current again in {:.2} s; {}",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / base as f64,
        said("load", "checkpoint written").unwrap_or_else(|| "no checkpoint line".into()),
        args.restart,
        current_in.as_secs_f64(),
        said("restart", "restored").or_else(|| said("restart", "loading in full")).unwrap_or_default(),
    );
    drop(restarted);
    Ok(())
}

fn base_db(base: u64) -> String {
    format!("iot_follow_bench_{base}")
}

/// Where a load notes that it finished, and a run that it changed the base, so that --keep-base
/// reuses only a whole, unchanged base (counting the records would take FerretDB a full scan).
const LOADED_MARK: &str = "bench_loaded";
const CHANGED_MARK: &str = "bench_changed";

/// Loads a fresh base of `base` records (a previous run flipped records this one is about to
/// flip), or keeps an unchanged one with --keep-base, and returns the records whose label is
/// right: flipping one adds exactly one error.
fn fresh_base(args: &Args, base: u64, database: &mongodb::sync::Database) -> Result<Flips> {
    let inferred_span_ms = args.views.then_some(30 * 86_400_000);
    let spec = Spec { records: base, producers: 100, pending_rate: 0.0, seed: 5, inferred_span_ms, ..Spec::default() };
    let mark = |name: &str| database.collection::<bson::Document>(name);
    let base_mark = bson::doc! { "records": base as i64, "timed": args.views };
    let loaded = mark(LOADED_MARK).find_one(base_mark.clone()).run()?.is_some();
    let kept = args.keep_base && loaded && mark(CHANGED_MARK).find_one(bson::doc! {}).run()?.is_none();
    if !kept {
        database.drop().run()?;
        iot_bench::mongo::load(&args.mongo_uri, database.name(), "inferences", &spec, |_| {})?;
        mark(LOADED_MARK).insert_one(base_mark).run()?;
    }
    if !args.load_only {
        mark(CHANGED_MARK).insert_one(bson::doc! { "by": "bench-follow" }).run()?;
    }
    let mut correct = Vec::new();
    generate(&spec, |r| {
        if r.inferred == Some(r.ground_truth) {
            correct.push((r.doc_id.clone(), r.producer_id.to_owned(), r.ground_truth));
        }
    });
    let needed = args.single_writes + args.bursts * args.burst_size + args.restart;
    ensure!(correct.len() >= needed, "base too small for {needed} flips");
    Ok(Flips(correct.into_iter()))
}

/// A follower logging to `<dir>/follow-<output stem>-<name>.log`, with checkpoints if `--restart`.
fn start_follower(args: &Args, db: &str, output: &Path, checkpoints: &Path, name: &str) -> Result<ChildGuard> {
    let stem = output.file_stem().and_then(|stem| stem.to_str()).unwrap_or("follow");
    let log = std::fs::File::create(args.dir.join(format!("{stem}-{name}.log")))?;
    let mut command = Command::new(&args.dataflow);
    command
        .args(["count", "--follow", "-w", &args.workers.to_string(), "--status-every", "0"])
        .args(["--mongo-uri", &args.mongo_uri, "--db", db])
        .args(["--poll-interval-ms", &args.poll_interval_ms.to_string(), "--mongo-timeout", "120"])
        .arg("--output")
        .arg(output)
        .stdout(Stdio::null())
        .stderr(log);
    if args.restart > 0 {
        command.arg("--checkpoint-dir").arg(checkpoints);
    }
    if args.views {
        command.args(["--serve", "127.0.0.1:0", "--window", "1h", "--reference", "1d"]);
    }
    Ok(ChildGuard::new(command.spawn()?))
}

fn wait_for_counts(output: &Path, counts: &BTreeMap<String, u64>) -> Result<()> {
    wait_until(output, Duration::from_secs(600), |c| c == counts).map(drop)
}

/// Records judged right, each flipped to a wrong label once, through the write contract.
struct Flips(std::vec::IntoIter<(String, String, &'static str)>);

impl Flips {
    /// Flips the next record and adds its error to `counts`.
    fn flip(&mut self, database: &mongodb::sync::Database, counts: &mut BTreeMap<String, u64>) -> Result<()> {
        let (doc_id, producer, truth) = self.0.next().context("out of records")?;
        let wrong = LABELS.iter().find(|l| **l != truth).copied().unwrap_or("other");
        let id = doc_id.rsplit_once('/').and_then(|(_, id)| id.parse().ok()).unwrap_or(0);
        let msg = ImageMessage {
            id,
            producer_id: producer.clone(),
            ground_truth: truth.into(),
            data: String::new(),
            sent_at_ms: None,
        };
        let write = write::store_inference(&msg, wrong, "bench", bson::DateTime::now());
        iot_bench::mongo::apply(database, "inferences", &write)?;
        *counts.entry(producer).or_default() += 1;
        Ok(())
    }
}

fn report(base: u64, what: &str, delays: &mut [Duration], cpu: Duration, changes: usize) {
    delays.sort();
    let at = |p: f64| iot_bench::stats::percentile(delays, p).unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "| {base} | {what} | {:.0} | {:.0} | {:.0} | {:.3} |",
        at(50.0),
        at(99.0),
        at(100.0),
        cpu.as_secs_f64() * 1e3 / changes as f64
    );
}

/// Polls the CSV until `done` holds; returns what it says then.
fn wait_until(
    path: &Path,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> Result<BTreeMap<String, u64>> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(counts) = read_error_counts(path) {
            if done(&counts) {
                return Ok(counts);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{} did not reach the expected state within {limit:?}", path.display())
}

/// User plus system CPU time of a process so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(") ").context("bad stat")?.1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// A memory figure of a process in KiB: `VmRSS` (resident now) or `VmHWM` (resident at peak).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    value.trim().trim_end_matches(" kB").parse().ok()
}
