//! The `dataflow` command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cluster::ClusterArgs;
use crate::follow::{self, FollowOptions};
use crate::job::{self, CountJob, Outcome};
use crate::progress::Progress;
use crate::sink;
use crate::source::mongo::MongoSource;
use crate::source::Source;

/// Counts, per producer, how many of the model's inferences were wrong.
///
/// With no subcommand, `dataflow` runs `count`, so `dataflow -w 8 -n 2 -p 0 -h hosts.txt`
/// works as in timely's examples.
#[derive(Debug, Parser)]
#[command(name = "dataflow", version, disable_help_flag = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub count: CountArgs,
    /// Print help (-h is the host file, as in timely).
    #[arg(long, action = ArgAction::Help, global = true)]
    help: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Count errors per producer and write `ProducerID,total_errors` as CSV.
    #[command(disable_help_flag = true)]
    Count(CountArgs),
}

#[derive(Clone, Debug, Args)]
pub struct CountArgs {
    /// Read records from this file: a JSON array (as mongoexport writes) or JSON Lines.
    /// Takes precedence over --mongo-uri, so a stack's IOT_MONGO_URI does not get in the way.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Read records from MongoDB at this URI instead of a file.
    #[arg(long, value_name = "URI", env = "IOT_MONGO_URI")]
    pub mongo_uri: Option<String>,
    #[arg(long, default_value = iot_schema::DEFAULT_DB)]
    pub db: String,
    #[arg(long, default_value = iot_schema::DEFAULT_COLLECTION)]
    pub collection: String,
    /// Documents per MongoDB cursor batch.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Seconds to wait for MongoDB before giving up.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub mongo_timeout: u64,
    /// Where process 0 writes the CSV.
    #[arg(long, default_value = "data/output/error_counts_per_producer.csv")]
    pub output: PathBuf,
    /// Add `total` (judged records) and `error_rate` columns.
    #[arg(long)]
    pub detail: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// After the initial load, keep running and keep the CSV current as records change in
    /// MongoDB, or as lines are appended to a JSON Lines file (see docs/follow.md). Stop with
    /// Ctrl-C or SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: how often to look for changes.
    #[arg(long, default_value_t = 200, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval_ms: u64,
    /// With --follow: how late a change-log entry may become visible after its ChangedAt and
    /// still be seen.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub settle_ms: u64,
    /// With --follow: change-log entries older than this are deleted. Every follower of one
    /// collection must use the same value; on FerretDB each poll reads the whole retained log.
    #[arg(long, default_value_t = 600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(10..))]
    pub change_retention_s: u64,
    /// With --follow: print `ProducerID,old_errors,new_errors` on stdout for each changed row.
    #[arg(long)]
    pub changes: bool,
    /// With --follow: log a status line this often (0: never).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub status_every: u64,
}

/// The sample the README's first command counts when no services run.
pub const SAMPLE_INPUT: &str = "data/mongo_entries.json";

impl CountArgs {
    pub fn source(&self) -> Result<Source> {
        if let Some(uri) = &self.mongo_uri {
            if self.input.is_none() {
                return Ok(Source::Mongo(MongoSource {
                    uri: uri.clone(),
                    db: self.db.clone(),
                    collection: self.collection.clone(),
                    batch_size: self.batch_size,
                    timeout: Duration::from_secs(self.mongo_timeout),
                }));
            }
        }
        let path = self.input.clone().unwrap_or_else(|| PathBuf::from(SAMPLE_INPUT));
        if !path.is_file() {
            bail!(
                "input file {} does not exist; pass --input FILE, or --mongo-uri URI to read MongoDB",
                path.display()
            );
        }
        Ok(Source::File(path))
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let args = match cli.command {
        Some(Command::Count(args)) => args,
        None => cli.count,
    };
    count(&args)
}

pub fn count(args: &CountArgs) -> Result<()> {
    let started = Instant::now();
    args.cluster.timely_config()?; // flags first: a usage error needs no input
    let source = args.source()?;
    let what = match &source {
        Source::File(path) => format!("reading {}", path.display()),
        Source::Mongo(m) => format!("reading {}.{}", m.db, m.collection),
    };
    let progress = Progress::stderr(&what);
    if args.follow {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
        let options = FollowOptions {
            output: args.output.clone(),
            detail: args.detail,
            poll_interval: Duration::from_millis(args.poll_interval_ms),
            settle: Duration::from_millis(args.settle_ms),
            change_retention: Duration::from_secs(args.change_retention_s),
            print_changes: args.changes,
            status_every: Duration::from_secs(args.status_every),
            stop,
        };
        return follow::run(source, args.cluster.clone(), options, progress);
    }
    let job = CountJob { source, cluster: args.cluster.clone() };
    let outcome = job::run(job, progress.clone());
    progress.finish();
    if let Some(outcome) = outcome? {
        sink::write_csv(&args.output, &outcome.table, args.detail)?;
        eprintln!("{}", summary(&outcome, started.elapsed(), &args.output));
    }
    Ok(())
}

fn summary(outcome: &Outcome, elapsed: Duration, output: &std::path::Path) -> String {
    let total = outcome.total();
    let stats = &outcome.stats;
    let mut text = format!(
        "counted {} records from {} producers in {:.2}s: {} judged, {} wrong, {} pending inference",
        stats.records,
        outcome.table.len(),
        elapsed.as_secs_f64(),
        total.judged(),
        total.incorrect,
        total.pending,
    );
    if stats.deleted > 0 {
        text += &format!(", {} deleted", stats.deleted);
    }
    if stats.skipped > 0 {
        text += &format!(
            "\nskipped {} malformed record(s), for example:\n  {}",
            stats.skipped,
            stats.skipped_examples.join("\n  ")
        );
    }
    text + &format!("\nwrote {}", output.display())
}
