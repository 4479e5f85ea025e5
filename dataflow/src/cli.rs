//! The `dataflow` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

use crate::alerts::{webhook, AlertOptions, Alerter, KafkaOptions, WebhookOptions};
use crate::cluster::ClusterArgs;
use crate::follow::{self, FollowOptions};
use crate::follow_checkpoint::CheckpointOptions;
use crate::job::{self, CountJob, Outcome};
use crate::progress::Progress;
use crate::record::Windowing;
use crate::report::{self, ReportContext};
use crate::serve::{Board, ServeOptions, Server};
use crate::sink::{rfc3339, write_atomically, AsOf, Output};
use crate::source::mongo::MongoSource;
use crate::source::Source;
use crate::views::alerts::{AlertRules, Rule};
use crate::views::drift::Reference;
use crate::views::sink::ViewFiles;
use crate::views::{reference_file, ViewOptions};

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
    Count(Box<CountArgs>),
    /// Write the monitoring views (error rates, their windows, confusion, per-class scores,
    /// drift) as one self-contained HTML page that opens in a browser with no server.
    #[command(disable_help_flag = true)]
    Report(Box<ReportArgs>),
}

#[derive(Clone, Debug, Args)]
pub struct CountArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where process 0 writes the CSV; `<output>.meta.json` says how current it is.
    #[arg(long, default_value = "data/output/error_counts_per_producer.csv")]
    pub output: PathBuf,
    /// Permission bits of the CSV and its sidecar, in octal.
    #[arg(long, default_value = "644", value_name = "OCTAL", value_parser = parse_mode)]
    pub output_mode: u32,
    /// Add `total` (judged records) and `error_rate` columns.
    #[arg(long)]
    pub detail: bool,
    #[command(flatten)]
    pub views: ViewArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
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
    /// With --follow on MongoDB: keep a checkpoint of the follower's state here (every
    /// --checkpoint-every, after the initial load and on stop), and restart from it: only the
    /// changes since are read again (see docs/follow.md#checkpoints). Each process of a cluster
    /// writes its own workers' files to its own folder.
    #[arg(long, value_name = "DIR", requires = "follow")]
    pub checkpoint_dir: Option<PathBuf>,
    /// With --follow: serve a live page, /metrics (Prometheus) and /api (JSON) of the counts and
    /// every view on this address, e.g. 0.0.0.0:9100 (process 0 only). Turns the views on.
    #[arg(long, value_name = "ADDR", requires = "follow")]
    pub serve: Option<SocketAddr>,
    /// With --serve: producers with their own /metrics series (those with the most errors); the
    /// others are summed under producer="_other".
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_series: usize,
    /// With --checkpoint-dir: how often to write a checkpoint.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
}

/// Where the records come from: shared by `count` and `report`.
#[derive(Clone, Debug, Args)]
pub struct SourceArgs {
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
    /// Seconds to wait for MongoDB to be reachable before giving up.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub mongo_timeout: u64,
    /// Seconds one MongoDB round trip (a query, a batch of results, a lookup) may go unanswered
    /// before the server counts as stalled: the batch job fails, --follow logs the stall and
    /// polls again.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub mongo_op_timeout: u64,
}

/// Write the monitoring views as one self-contained HTML page (docs/monitoring.md).
#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where process 0 writes the page.
    #[arg(short = 'o', long, default_value = "data/output/report.html", value_name = "FILE")]
    pub output: PathBuf,
    /// Permission bits of the page (and of any view CSV), in octal.
    #[arg(long, default_value = "644", value_name = "OCTAL", value_parser = parse_mode)]
    pub output_mode: u32,
    /// Classes each confusion heatmap shows, by support; the others are summed as one, "(N others)".
    #[arg(long, default_value_t = 12, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub top_classes: u16,
    /// The view options; any view file named here is written as well.
    #[command(flatten)]
    pub views: ViewArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The monitoring views (docs/monitoring.md): any of the files turns them on.
#[derive(Clone, Debug, Args)]
pub struct ViewArgs {
    /// Write confusion counts here: `ProducerID,GroundTruth,Inferred,count`, the rows over all
    /// producers first with an empty ProducerID.
    #[arg(long, value_name = "FILE")]
    pub confusion: Option<PathBuf>,
    /// Write per-class precision, recall and F1 here, per producer and over all.
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Write the error rate per producer per window here:
    /// `ProducerID,window_start,judged,errors,error_rate`.
    #[arg(long, value_name = "FILE")]
    pub windows: Option<PathBuf>,
    /// Write each producer's predicted-label drift here: its latest window against its reference.
    #[arg(long, value_name = "FILE")]
    pub drift: Option<PathBuf>,
    /// The width of the tumbling windows of InferredAt, aligned to the epoch (UTC): 15m, 1h, 1d.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// A producer's drift reference: its windows that start within this long of its first.
    #[arg(long, default_value = "1d", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reference: Duration,
    /// A fixed drift reference instead, as `ProducerID,Inferred,count` rows (an empty ProducerID:
    /// for every producer without rows of its own).
    #[arg(long, value_name = "FILE", conflicts_with = "reference")]
    pub reference_file: Option<PathBuf>,
    /// Flag a drift when the chi-square test's p-value is below this.
    #[arg(long, default_value_t = 0.01, value_name = "P", value_parser = parse_probability)]
    pub drift_alpha: f64,
}

/// Alerts (docs/monitoring.md#alerts), with --follow.
#[derive(Clone, Debug, Args)]
pub struct AlertArgs {
    /// With --follow: alert when a producer's error rate crosses a line, e.g.
    /// 'error_rate > 0.3 over 1h min 50' or 'error_rate > reference + 3 sd over 1h min 50'
    /// (optionally `clear LEVEL`, below which it resolves); repeatable. Events go to
    /// --alert-topic. Turns the views on.
    #[arg(long = "alert", value_name = "RULE", requires = "follow", value_parser = parse_rule)]
    pub rules: Vec<Rule>,
    /// Kafka bootstrap servers for alert events.
    #[arg(long, env = "IOT_KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_name = "HOST:PORT,...")]
    pub alert_brokers: String,
    /// The topic alert events go to; a restarted follower reads it back.
    #[arg(long, env = "IOT_ALERT_TOPIC", default_value = iot_schema::alert::TOPIC_ALERTS, value_name = "TOPIC")]
    pub alert_topic: String,
    /// Extra librdkafka settings for the alert producer (e.g. `security.protocol=SASL_SSL`),
    /// repeatable; in the environment, comma-separated.
    #[arg(long = "kafka-opt", env = "IOT_KAFKA_OPTS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = iot_schema::redact::parse_key_value)]
    pub kafka_settings: Vec<(String, String)>,
    /// Also POST each alert event, as JSON, to this http(s) URL (never logged beyond its host).
    #[arg(long, env = "IOT_ALERT_WEBHOOK", value_name = "URL", value_parser = webhook::parse_url, hide_env_values = true)]
    pub alert_webhook: Option<reqwest::Url>,
    /// Tries per event at the webhook, with a delay doubling from 0.5 s to 30 s.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub alert_webhook_attempts: u32,
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    text.parse()
}

impl AlertArgs {
    /// The rules' evidence, checked against the views' windows and reference.
    fn evidence(&self, views: &ViewOptions) -> Result<Option<AlertRules>> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let window_ms = views.windowing.width_ms;
        for rule in &self.rules {
            rule.windows(window_ms).map_err(anyhow::Error::msg)?;
        }
        let reference_ms = match views.reference {
            Reference::FirstPeriod { length_ms } => length_ms,
            Reference::Fixed(_) if self.rules.iter().any(Rule::is_relative) => {
                bail!("a rule relative to the reference compares with each producer's first --reference period, which --reference-file replaces; use --reference DURATION")
            }
            Reference::Fixed(_) => i64::MAX,
        };
        Ok(Some(AlertRules { rules: self.rules.clone().into(), window_ms, reference_ms }))
    }

    fn options(&self) -> Option<AlertOptions> {
        (!self.rules.is_empty()).then(|| AlertOptions {
            rules: self.rules.clone().into(),
            kafka: KafkaOptions {
                brokers: self.alert_brokers.clone(),
                topic: self.alert_topic.clone(),
                settings: self.kafka_settings.clone(),
            },
            webhook: self
                .alert_webhook
                .clone()
                .map(|url| WebhookOptions { url, attempts: self.alert_webhook_attempts }),
        })
    }
}

impl ViewArgs {
    pub fn files(&self, mode: u32) -> ViewFiles {
        ViewFiles {
            confusion: self.confusion.clone(),
            classes: self.classes.clone(),
            windows: self.windows.clone(),
            drift: self.drift.clone(),
            mode,
        }
    }

    /// The views' options, checked; built whether or not a view is asked for.
    pub fn options(&self) -> Result<ViewOptions> {
        let Some(windowing) = Windowing::new(self.window) else {
            bail!("--window must be at least 1ms");
        };
        let reference = match &self.reference_file {
            Some(path) => reference_file::read(path)?,
            None if self.reference < self.window => {
                bail!(
                    "--reference ({}) is shorter than one --window ({})",
                    humantime::format_duration(self.reference),
                    humantime::format_duration(self.window)
                )
            }
            None => Reference::FirstPeriod { length_ms: i64::try_from(self.reference.as_millis()).unwrap_or(i64::MAX) },
        };
        Ok(ViewOptions { windowing, reference, drift_alpha: self.drift_alpha, alerts: None })
    }
}

/// A p-value threshold: strictly between 0 and 1.
fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!("{text:?} is not a probability between 0 and 1 (exclusive), such as 0.01")),
    }
}

/// The sample the README's first command counts when no services run.
pub const SAMPLE_INPUT: &str = "data/mongo_entries.json";

impl SourceArgs {
    pub fn source(&self) -> Result<Source> {
        if let Some(uri) = &self.mongo_uri {
            if self.input.is_none() {
                return Ok(Source::Mongo(MongoSource {
                    uri: uri.clone(),
                    db: self.db.clone(),
                    collection: self.collection.clone(),
                    batch_size: self.batch_size,
                    timeout: Duration::from_secs(self.mongo_timeout),
                    op_timeout: Duration::from_secs(self.mongo_op_timeout),
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

impl CountArgs {
    pub fn output(&self) -> Output {
        Output {
            path: self.output.clone(),
            detail: self.detail,
            mode: self.output_mode,
            views: self.views.files(self.output_mode),
        }
    }

    /// The views' options when a view file, the live page or an alert is asked for.
    fn views(&self) -> Result<Option<ViewOptions>> {
        if !self.views.files(self.output_mode).any() && self.serve.is_none() && self.alerts.rules.is_empty() {
            return Ok(None);
        }
        let mut options = self.views.options()?;
        options.alerts = self.alerts.evidence(&options)?;
        Ok(Some(options))
    }
}

impl CountArgs {
    fn checkpoints(&self, source: &Source) -> Result<Option<CheckpointOptions>> {
        let Some(dir) = &self.checkpoint_dir else { return Ok(None) };
        if matches!(source, Source::File(_)) {
            bail!("--checkpoint-dir needs --mongo-uri: a followed file is counted from its lines, not from a state");
        }
        Ok(Some(CheckpointOptions { dir: dir.clone(), every: Duration::from_secs(self.checkpoint_every) }))
    }
}

/// `644`, `0644` or `0o644`: permission bits, nothing else.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 644 or 600")),
    }
}

/// What one run does, decided once from the flags: count once, or count and keep following.
#[derive(Debug)]
pub enum Plan {
    Batch { job: CountJob, output: Output },
    Follow { source: Source, cluster: ClusterArgs, options: Box<FollowOptions> },
    Report { job: CountJob, output: ReportOutput },
}

/// Where and how `report` writes.
#[derive(Debug)]
pub struct ReportOutput {
    pub path: PathBuf,
    pub mode: u32,
    pub top_classes: usize,
    pub window_ms: i64,
    pub drift_alpha: f64,
    /// View CSVs to write as well, if any.
    pub views: ViewFiles,
}

impl Cli {
    /// The plan the flags ask for. Flags that parse but do not fit together (a host file
    /// without `host:port` lines, an input file that does not exist, `-p` outside `-n`) are
    /// usage errors, as clap's own are: exit code 2 and the usage line.
    pub fn plan(self) -> Result<Plan, clap::Error> {
        let plan = match self.command {
            Some(Command::Count(args)) => args.plan(),
            Some(Command::Report(args)) => args.plan(),
            None => self.count.plan(),
        };
        plan.map_err(|err| Cli::command().error(clap::error::ErrorKind::ValueValidation, format!("{err:#}")))
    }
}

impl CountArgs {
    fn plan(&self) -> Result<Plan> {
        self.cluster.timely_config()?; // flags first: a usage error needs no input
        let views = self.views()?;
        let source = self.source.source()?;
        let cluster = self.cluster.clone();
        if !self.follow {
            return Ok(Plan::Batch { job: CountJob { source, cluster, views }, output: self.output() });
        }
        let options = FollowOptions {
            output: self.output(),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            settle: Duration::from_millis(self.settle_ms),
            change_retention: Duration::from_secs(self.change_retention_s),
            print_changes: self.changes,
            status_every: Duration::from_secs(self.status_every),
            stop: Arc::new(AtomicBool::new(false)),
            checkpoints: self.checkpoints(&source)?,
            views,
            serve: self.serve.map(|addr| ServeOptions { addr, max_series: self.max_series }),
            server: None,
            alerts: self.alerts.options(),
            alerter: None,
        };
        Ok(Plan::Follow { source, cluster, options: Box::new(options) })
    }
}

impl ReportArgs {
    fn plan(&self) -> Result<Plan> {
        self.cluster.timely_config()?;
        let options = self.views.options()?;
        let output = ReportOutput {
            path: self.output.clone(),
            mode: self.output_mode,
            top_classes: usize::from(self.top_classes),
            window_ms: options.windowing.width_ms,
            drift_alpha: options.drift_alpha,
            views: self.views.files(self.output_mode),
        };
        let job = CountJob { source: self.source.source()?, cluster: self.cluster.clone(), views: Some(options) };
        Ok(Plan::Report { job, output })
    }
}

/// Runs the plan: one function per mode.
pub fn run(plan: Plan) -> Result<()> {
    match plan {
        Plan::Batch { job, output } => count_once(job, &output),
        Plan::Follow { source, cluster, options } => count_and_follow(source, cluster, *options),
        Plan::Report { job, output } => write_report(job, &output),
    }
}

fn reading(source: &Source) -> Progress {
    Progress::stderr(&match source {
        Source::File(path) => format!("reading {}", path.display()),
        Source::Mongo(m) => format!("reading {}.{}", m.db, m.collection),
    })
}

/// The batch count: process 0 writes the CSV, its sidecar and a summary.
fn count_once(job: CountJob, output: &Output) -> Result<()> {
    let started = Instant::now();
    let as_of = SystemTime::now();
    let progress = reading(&job.source);
    let description = job.source.describe();
    let job_views = job.views.clone();
    let outcome = job::run(job, progress.clone());
    progress.finish();
    if let Some(outcome) = outcome? {
        let as_of = AsOf::of(&outcome.table, as_of, outcome.stats.skipped, description);
        output.write(&outcome.table, &as_of)?;
        if let (Some(snapshot), Some(options)) = (&outcome.views, &job_views) {
            output.views.write(snapshot, options.drift_alpha)?;
        }
        eprintln!("{}", summary(&outcome, started.elapsed(), output, &as_of));
    }
    Ok(())
}

/// The batch count with every view; process 0 writes the page (and any view CSV asked for).
fn write_report(job: CountJob, output: &ReportOutput) -> Result<()> {
    let started = Instant::now();
    let context = ReportContext {
        source: job.source.describe(),
        as_of: rfc3339(SystemTime::now()),
        window_ms: output.window_ms,
        drift_alpha: output.drift_alpha,
        top_classes: output.top_classes,
    };
    let progress = reading(&job.source);
    let outcome = job::run(job, progress.clone());
    progress.finish();
    let Some(outcome) = outcome? else { return Ok(()) };
    let page = report::render(&outcome, &context);
    write_atomically(&output.path, output.mode, |file| Ok(file.write_all(page.as_bytes())?))?;
    if let Some(snapshot) = &outcome.views {
        output.views.write(snapshot, output.drift_alpha)?;
    }
    let total = outcome.total();
    eprintln!(
        "reported {} records from {} producers in {:.2}s: {} judged, {} wrong, {} pending, {} malformed, {} untimed\nwrote {} (as of {})",
        outcome.stats.records,
        outcome.table.len(),
        started.elapsed().as_secs_f64(),
        total.judged(),
        total.incorrect,
        total.pending,
        outcome.stats.skipped,
        outcome.stats.untimed,
        output.path.display(),
        context.as_of,
    );
    Ok(())
}

/// `--follow`: count, then keep the CSV current until Ctrl-C or SIGTERM. With `--serve`, every
/// process serves from the start, so that one flag fits every pod of a cluster: process 0 the
/// counts (a page that says it is loading until the load is done), the others an empty board
/// that says where the counts are.
fn count_and_follow(source: Source, cluster: ClusterArgs, mut options: FollowOptions) -> Result<()> {
    if let Some(serve) = &options.serve {
        let as_of = match cluster.process {
            0 => "loading…".to_owned(),
            process => format!("nothing here: this is process {process}, the counts are served by process 0"),
        };
        let board = Board { as_of, source: source.describe(), ..Board::default() };
        options.server = Some(Arc::new(Server::start(serve, board)?));
    }
    // Process 0 announces alerts; it learns what was announced before it loads anything, so
    // that a broker or topic that is not there stops it at once.
    if let (Some(alerts), 0) = (&options.alerts, cluster.process) {
        options.alerter = Some(Arc::new(Mutex::new(Alerter::start(alerts, source.describe())?)));
    }
    let progress = reading(&source);
    let stop = options.stop.clone();
    ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))?;
    follow::run(source, cluster, options, progress)
}

fn summary(outcome: &Outcome, elapsed: Duration, output: &Output, as_of: &AsOf) -> String {
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
    if stats.untimed > 0 {
        text += &format!(
            "\n{} inferred record(s) have no readable InferredAt: counted, and in the confusion counts, but in no window",
            stats.untimed
        );
    }
    if stats.skipped > 0 {
        text += &format!(
            "\nskipped {} malformed record(s), for example:\n  {}",
            stats.skipped,
            stats.skipped_examples.join("\n  ")
        );
    }
    text + &format!(
        "\nwrote {} (as of {}; see {})",
        output.path.display(),
        as_of.as_of,
        output.sidecar_path().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        for bad in ["rw-r--r--", "1777", "8", ""] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }
}
