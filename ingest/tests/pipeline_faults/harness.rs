//! The fault harness: each case runs the whole pipeline (producers → Kafka → db-consumer and
//! infer-consumer → the real inference service → MongoDB, with a `dataflow count --follow`
//! watching) on a private stack of its own, injects its fault, waits until the pipeline is quiet
//! and then proves, with [`Exactness::check`], that nothing was lost, duplicated or miscounted.
//!
//! A case is a [`Case`] (what runs, what to expect) plus a fault closure over a [`Run`]:
//!
//! ```ignore
//! Case::new("kafka-killed").run(|run| {
//!     run.wait_inferred(100);
//!     run.outage("Kafka down", |run| { run.stack.kill(Part::Kafka); run.sleep_s(15); run.stack.start_missing(); });
//! });
//! ```

// Parts of the API serve cases that other fault tests add (dead letters, no follower, streams).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use iot_bench::testkit::{self, Children, PrivateStack};
use iot_ingest::args::KafkaArgs;
use iot_ingest::dlq::DeadLetter;
use iot_ingest::truth_log::{self, TruthRow};
use mongodb::sync::{Client, Collection};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub use iot_bench::testkit::{Part, Signal};

const TOPIC: &str = iot_schema::TOPIC_IMAGES;
const DLQ_TOPIC: &str = iot_schema::TOPIC_DEAD_LETTERS;
const DB: &str = iot_schema::DEFAULT_DB;
const DB_GROUP: &str = "faults-db";
const INFER_GROUP: &str = "faults-infer";
const MODEL_ID: &str = "mobilenetv2-int8-faults";
/// Longest wait for producers to finish, and then for the consumers to catch up.
const PRODUCERS_WAIT: Duration = Duration::from_secs(180);
const QUIET_WAIT: Duration = Duration::from_secs(180);
/// How long a follower may take to show the final counts once the pipeline is quiet.
const FOLLOWER_WAIT: Duration = Duration::from_secs(60);
/// How long every process gets to stop on SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The producers of a case: `processes` producer binaries, each sending as `ids_per_process`
/// ProducerIDs, `records` messages per ProducerID at `rate` messages/s each.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    pub processes: usize,
    pub ids_per_process: usize,
    pub records: u64,
    pub rate: f64,
}

impl Stream {
    pub fn total(&self) -> u64 {
        (self.processes * self.ids_per_process) as u64 * self.records
    }
}

impl Default for Stream {
    /// 600 records over about 25 s: long enough to break something in the middle even when
    /// the machine is slow to get going (inference, not sending, sets the pace of a case).
    fn default() -> Self {
        Stream { processes: 2, ids_per_process: 2, records: 150, rate: 6.0 }
    }
}

/// What a process is to the harness.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Runs for the whole case; `ready_url` answers 2xx once it can serve.
    Service { ready_url: Option<String> },
    /// A consumer: must still run at the end and stop with status 0 on SIGTERM.
    Consumer,
    /// Runs to completion (status 0), writing the truth log.
    Producer { truth_log: PathBuf },
    /// `dataflow count --follow` (process 0 of a follower cluster): its CSV must reach the
    /// expected counts.
    Follower { csv: PathBuf },
    /// Another process of a follower cluster: runs to the end and stops with process 0.
    Member,
}

/// One process of the pipeline, started in the order of [`Plan::processes`].
#[derive(Clone, Debug)]
pub struct Process {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub role: Role,
}

/// Every process a case runs; a case may change it (add a second consumer, replace the
/// inference service with a stub, pass a flag) before anything starts.
#[derive(Clone, Debug)]
pub struct Plan {
    pub processes: Vec<Process>,
}

impl Plan {
    pub fn process_mut(&mut self, name: &str) -> &mut Process {
        self.processes.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name} in the plan"))
    }

    pub fn process(&self, name: &str) -> &Process {
        self.processes.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name} in the plan"))
    }

    /// Adds flags to one process.
    pub fn add_args(&mut self, name: &str, args: &[&str]) {
        self.process_mut(name).args.extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// Sets `--flag=value` for one process, replacing the flag's value if it has one.
    pub fn set_flag(&mut self, name: &str, flag: &str, value: &str) {
        let args = &mut self.process_mut(name).args;
        args.retain(|a| !a.starts_with(&format!("{flag}=")));
        args.push(format!("{flag}={value}"));
    }

    /// The real inference service's URL.
    pub fn infer_url(&self) -> String {
        let listen = self.process("infer-service").args.iter().find_map(|a| a.strip_prefix("--listen="));
        format!("http://{}", listen.expect("the inference service's --listen flag"))
    }
}

/// Dead letters a case expects: `records` distinct records dead-lettered with `reason_code`.
/// Their truth-log rows (matched by ProducerID, ID and SentAt in the letter's payload) are left
/// out of what must be stored and counted.
#[derive(Clone, Debug)]
pub struct ExpectedLetters {
    pub reason_code: String,
    pub records: usize,
}

/// A change to the plan before anything starts.
type Tweak = Box<dyn FnOnce(&mut Plan)>;

/// One fault case.
pub struct Case {
    name: String,
    stream: Stream,
    /// Processes of the `dataflow count --follow` cluster watching the run; 0 for none.
    followers: usize,
    tweaks: Vec<Tweak>,
    dead_letters: Vec<ExpectedLetters>,
}

impl Case {
    pub fn new(name: &str) -> Case {
        Case {
            name: name.to_owned(),
            stream: Stream::default(),
            followers: 1,
            tweaks: Vec::new(),
            dead_letters: Vec::new(),
        }
    }

    pub fn stream(mut self, stream: Stream) -> Case {
        self.stream = stream;
        self
    }

    /// No follower through the fault; the check then runs a fresh one at the end.
    pub fn without_follower(mut self) -> Case {
        self.followers = 0;
        self
    }

    /// The follower as a cluster of `processes` processes of one worker each
    /// (`follower-0`, `follower-1`, ...; process 0 writes the CSV).
    pub fn follower_cluster(mut self, processes: usize) -> Case {
        self.followers = processes;
        self
    }

    /// Changes the plan before anything starts.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut Plan) + 'static) -> Case {
        self.tweaks.push(Box::new(tweak));
        self
    }

    pub fn expect_dead_letters(mut self, reason_code: &str, records: usize) -> Case {
        self.dead_letters.push(ExpectedLetters { reason_code: reason_code.to_owned(), records });
        self
    }

    /// Starts the stack and the pipeline, runs `fault`, then checks everything.
    pub fn run(self, fault: impl FnOnce(&mut Run)) {
        let Case { name, stream, followers, tweaks, dead_letters } = self;
        let started = Instant::now();
        // Build before starting anything that would wait for the build.
        testkit::workspace_binary("dataflow");
        // Kept when the case fails (logs, truth logs, CSVs), or when IOT_FAULTS_KEEP=1.
        let work = tempfile::Builder::new().prefix(&format!("faults-{name}-")).tempdir().expect("temp dir").keep();
        eprintln!("[{name}] working folder {}", work.display());
        let stack = PrivateStack::new(&work.join("stack"));
        let mut plan = default_plan(&work, &stack, stream, followers);
        tweaks.into_iter().for_each(|tweak| tweak(&mut plan));
        stack.start_missing();
        let mongo = mongo_client(&stack.mongo_uri(), Duration::from_secs(2));
        let mut run = Run {
            children: Children::new(&work.join("logs")),
            stack,
            name,
            started,
            mongo,
            plan,
            stream,
            notes: Notes::default(),
            work: work.clone(),
        };
        run.phase(&format!("private stack up ({:?})", run.stack.ports));
        run.start_pipeline();
        fault(&mut run);
        run.finish(&dead_letters);
        drop(run);
        if testkit::env_or("IOT_FAULTS_KEEP", "0") != "1" {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
}

/// Writes a case declares it made, checked at the end.
#[derive(Default)]
struct Notes {
    outages: Vec<Outage>,
    logged: Vec<(String, String)>,
}

/// A window of time during which a fault was in force.
#[derive(Clone, Debug)]
pub struct Outage {
    pub what: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Records inferred when it began.
    pub inferred_before: u64,
}

/// A running case: the stack, the processes and what the fault closure may use.
pub struct Run {
    /// Dropped first: the processes stop before the stack they use.
    pub children: Children,
    pub stack: PrivateStack,
    pub name: String,
    pub plan: Plan,
    pub stream: Stream,
    pub work: PathBuf,
    mongo: Client,
    started: Instant,
    notes: Notes,
}

impl Run {
    pub fn phase(&self, what: &str) {
        eprintln!("[{} {:6.1}s] {what}", self.name, self.started.elapsed().as_secs_f64());
    }

    pub fn sleep_s(&self, seconds: u64) {
        std::thread::sleep(Duration::from_secs(seconds));
    }

    pub fn records(&self) -> Collection<Document> {
        self.mongo.database(DB).collection(iot_schema::DEFAULT_COLLECTION)
    }

    /// Starts (or restarts) a process of the plan by name, and waits until a service is ready.
    pub fn start(&mut self, name: &str) {
        let process = self.plan.process(name).clone();
        self.children.spawn(&process.name, &process.program, &process.args);
        if let Role::Service { ready_url: Some(url) } = &process.role {
            self.wait_ready(name, url);
        }
    }

    fn wait_ready(&mut self, name: &str, url: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let answers =
            || runtime.block_on(async { client.get(url).send().await }).is_ok_and(|r| r.status().is_success());
        let deadline = Instant::now() + Duration::from_secs(90);
        while !answers() {
            assert!(self.children.is_running(name), "{name} exited while starting{}", self.children.log_tails());
            assert!(Instant::now() < deadline, "{name} not ready at {url} after 90 s{}", self.children.log_tails());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts a second instance of a plan process (same program and flags) as `name`, outside
    /// the plan: the case stops it again before the end.
    pub fn start_copy(&mut self, of: &str, name: &str) {
        let process = self.plan.process(of).clone();
        self.children.spawn(name, &process.program, &process.args);
    }

    /// Adds a process to the plan and starts it now: it is checked at the end like the others.
    pub fn launch(&mut self, process: Process) {
        let name = process.name.clone();
        self.plan.processes.push(process);
        self.start(&name);
    }

    /// The names of the follower cluster's processes, process 0 first.
    pub fn followers(&self) -> Vec<String> {
        self.processes_with(|r| matches!(r, Role::Follower { .. } | Role::Member)).into_iter().map(|p| p.name).collect()
    }

    /// Starts every follower process again (after the cluster stopped).
    pub fn restart_followers(&mut self) {
        for name in self.followers() {
            self.start(&name);
        }
    }

    /// Sends raw payloads to the pipeline's topic, as a client outside the project would.
    pub fn send_raw(&self, messages: &[(&str, &[u8])]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.stack.brokers())
            .set("message.max.bytes", "1048576")
            .create()
            .expect("Kafka producer");
        for (key, payload) in messages {
            producer.send(BaseRecord::to(TOPIC).key(*key).payload(*payload)).expect("queue a raw message");
        }
        producer.flush(Duration::from_secs(30)).expect("raw messages delivered");
    }

    /// Appends a change-log entry for an inferred record, stamped `ahead` of now, as a client
    /// that writes `ChangedAt` with its own (wrong) clock would. Returns the record's `_id`.
    pub fn stamp_change_ahead(&mut self, ahead: Duration) -> String {
        use iot_schema::{field, write::change_log};
        let record = self
            .records()
            .find_one(doc! { "Inferred": { "$exists": true } })
            .run()
            .expect("find an inferred record")
            .expect("an inferred record");
        let id = record.get_str("_id").expect("a string _id").to_owned();
        let at = bson::DateTime::from_millis(testkit::now_ms() + ahead.as_millis() as i64);
        self.mongo
            .database(DB)
            .collection::<Document>(&change_log(iot_schema::DEFAULT_COLLECTION))
            .insert_one(doc! { "_id": bson::oid::ObjectId::new(), field::CHANGED_RECORD: &id, field::CHANGED_AT: at })
            .run()
            .expect("insert the change-log entry");
        id
    }

    fn start_pipeline(&mut self) {
        let names: Vec<String> = self.plan.processes.iter().map(|p| p.name.clone()).collect();
        for name in names {
            self.start(&name);
        }
        self.phase(&format!("pipeline started: {}", self.children.names().join(", ")));
    }

    /// Polls until at least `n` records carry an inference (MongoDB must be answering).
    pub fn wait_inferred(&mut self, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let have = self.records().count_documents(doc! { "Inferred": { "$exists": true } }).run().unwrap_or(0);
            if have >= n {
                return have;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} records inferred after 120 s{}",
                self.children.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `fault`, recording the window it covered: at the end the producers must have sent
    /// records inside it, and the pipeline must not have finished before it began, so the fault
    /// really hit a stream in progress.
    pub fn outage(&mut self, what: &str, fault: impl FnOnce(&mut Run)) {
        let inferred_before =
            self.records().count_documents(doc! { "Inferred": { "$exists": true } }).run().unwrap_or(0);
        let from_ms = testkit::now_ms();
        self.phase(&format!("{what}: begins ({inferred_before} records inferred)"));
        fault(self);
        let to_ms = testkit::now_ms();
        self.phase(&format!("{what}: over after {:.1}s", (to_ms - from_ms) as f64 / 1000.0));
        self.notes.outages.push(Outage { what: what.to_owned(), from_ms, to_ms, inferred_before });
    }

    /// At the end, `process`'s log must contain `needle` (e.g. a retry it had to make).
    pub fn expect_logged(&mut self, process: &str, needle: &str) {
        self.notes.logged.push((process.to_owned(), needle.to_owned()));
    }

    /// True if MongoDB answers a ping within 3 s. The ping runs on a thread of its own with a
    /// fresh client: the driver has no socket timeout, so a ping to a frozen server waits until
    /// it resumes.
    pub fn mongo_answers(&self) -> bool {
        let (answered, answer) = std::sync::mpsc::channel();
        let uri = self.stack.mongo_uri();
        std::thread::spawn(move || {
            let ping =
                mongo_client(&uri, Duration::from_secs(2)).database("admin").run_command(doc! { "ping": 1 }).run();
            let _ = answered.send(ping.is_ok());
        });
        answer.recv_timeout(Duration::from_secs(3)).unwrap_or(false)
    }

    fn processes_with(&self, pick: impl Fn(&Role) -> bool) -> Vec<Process> {
        self.plan.processes.iter().filter(|p| pick(&p.role)).cloned().collect()
    }

    fn finish(&mut self, expected_letters: &[ExpectedLetters]) {
        for producer in self.processes_with(|r| matches!(r, Role::Producer { .. })) {
            let status = self.children.wait_exit(&producer.name, PRODUCERS_WAIT);
            assert!(
                status.is_some_and(|s| s.success()),
                "{} did not finish with status 0 within {PRODUCERS_WAIT:?} ({status:?}){}",
                producer.name,
                self.children.log_tails()
            );
        }
        self.phase("producers done");
        self.wait_quiet();
        self.phase("pipeline quiet");
        for process in self.processes_with(|r| !matches!(r, Role::Producer { .. })) {
            assert!(
                self.children.is_running(&process.name),
                "{} exited during the run{}",
                process.name,
                self.children.log_tails()
            );
        }

        let truth = self.truth();
        assert!(truth.len() as u64 >= self.stream.total(), "the truth logs have only {} rows", truth.len());
        self.check_fault_was_real(&truth);
        let letters = read_dead_letters(&self.kafka());
        let excluded = excluded_by_letters(&letters, expected_letters, &truth);
        let included: Vec<TruthRow> = truth.into_iter().filter(|row| !excluded.iter().any(|e| e.row == *row)).collect();
        let unlabelled: Vec<TruthRow> = excluded.into_iter().filter(|e| e.stored_unlabelled).map(|e| e.row).collect();
        let exactness = Exactness {
            mongo_uri: self.stack.mongo_uri(),
            db: DB.to_owned(),
            dataflow: testkit::workspace_binary("dataflow"),
            out_dir: self.work.clone(),
            log_tails: self.children.log_tails(),
        };
        let follower_csv = self.processes_with(|r| matches!(r, Role::Follower { .. })).first().map(|p| match &p.role {
            Role::Follower { csv } => csv.clone(),
            _ => unreachable!(),
        });
        let summary = exactness.check(&included, &unlabelled, follower_csv.as_deref());
        self.phase(&format!(
            "exact: {} records inferred once, {} errors; batch and follow CSVs equal the truth; {} dead letter(s)",
            summary.records,
            summary.errors.values().sum::<u64>(),
            letters.len()
        ));

        for process in self.processes_with(|r| !matches!(r, Role::Producer { .. } | Role::Service { .. })) {
            assert!(
                self.children.terminate(&process.name, STOP_WAIT),
                "{} did not exit 0 on SIGTERM{}",
                process.name,
                self.children.log_tails()
            );
        }
        self.phase("passed");
    }

    fn kafka(&self) -> KafkaArgs {
        KafkaArgs { brokers: self.stack.brokers(), topic: TOPIC.to_owned(), kafka_opts: Vec::new() }
    }

    /// Every producer's truth log, together.
    fn truth(&self) -> Vec<TruthRow> {
        let mut rows = Vec::new();
        for producer in self.processes_with(|r| matches!(r, Role::Producer { .. })) {
            let Role::Producer { truth_log } = &producer.role else { unreachable!() };
            rows.extend(truth_log::read(truth_log).unwrap_or_else(|e| panic!("{}: {e:#}", producer.name)));
        }
        rows
    }

    /// Quiet: both groups have committed every record of the topic, and neither MongoDB nor
    /// the dead-letter topic changed over the last poll.
    fn wait_quiet(&mut self) {
        let kafka = self.kafka();
        let lag = GroupLag::new(&kafka, &[DB_GROUP, INFER_GROUP]);
        let deadline = Instant::now() + QUIET_WAIT;
        let mut previous = None;
        loop {
            let lags = lag.lags();
            let state = (self.records().count_documents(doc! {}).run().ok(), dead_letter_end(&lag.consumer));
            let caught_up = lags.as_ref().is_ok_and(|l| l.values().all(|n| *n == 0));
            if caught_up && previous.as_ref() == Some(&state) && state.0.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not quiet after {QUIET_WAIT:?}: lag per group {lags:?}, (records, dead letters) {state:?}{}",
                self.children.log_tails()
            );
            previous = Some(state);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Each fault hit a stream in progress: records were sent while it was in force, and not
    /// every record had been inferred when it began. Each expected log line is there.
    fn check_fault_was_real(&self, truth: &[TruthRow]) {
        for outage in &self.notes.outages {
            let sent_during = truth.iter().filter(|r| (outage.from_ms..=outage.to_ms).contains(&r.sent_at_ms)).count();
            assert!(sent_during > 0, "no record was sent during '{}' ({outage:?})", outage.what);
            assert!(
                outage.inferred_before < truth.len() as u64,
                "every record was inferred before '{}' began ({outage:?})",
                outage.what
            );
            self.phase(&format!("'{}': {sent_during} records sent while it lasted", outage.what));
        }
        for (process, needle) in &self.notes.logged {
            let log = self.children.log(process);
            let hits = log.matches(needle.as_str()).count();
            assert!(hits > 0, "{process} never logged {needle:?}{}", self.children.log_tails());
            self.phase(&format!("{process} logged {needle:?} {hits} time(s)"));
        }
    }
}

/// The standard pipeline: the real inference service, one db-consumer, one infer-consumer, a
/// follower cluster of `followers` processes (none if 0) and `stream.processes` producers.
fn default_plan(work: &Path, stack: &PrivateStack, stream: Stream, followers: usize) -> Plan {
    let root = testkit::workspace_root();
    let assets = testkit::assets_dir();
    let asset = |name: &str| testkit::required(assets.join(name), "set IOT_ASSETS_DIR to the assets folder");
    let (brokers, mongo_uri) = (stack.brokers(), stack.mongo_uri());
    let infer_port = testkit::free_port();
    let infer_url = format!("http://127.0.0.1:{infer_port}");
    let mut processes = vec![Process {
        name: "infer-service".to_owned(),
        program: testkit::workspace_binary("infer-service"),
        args: vec![
            format!("--model={}", asset("mobilenetv2-12-int8.onnx").display()),
            format!("--classes={}", asset("imagenet_classes.txt").display()),
            format!("--label-map={}", root.join("data/label_maps/imagenet_to_cifar10.csv").display()),
            format!("--listen=127.0.0.1:{infer_port}"),
            format!("--ort-dylib={}", testkit::ort_library().display()),
            format!("--model-id={MODEL_ID}"),
            // Cases run two at a time on two cores.
            "--intra-threads=1".to_owned(),
        ],
        role: Role::Service { ready_url: Some(format!("{infer_url}/healthz")) },
    }];
    let consumer = |group: &str| -> Vec<String> {
        vec![
            format!("--brokers={brokers}"),
            format!("--mongo-uri={mongo_uri}"),
            format!("--group={group}"),
            // A lost member's partitions move on after 6 s; retries come at least every second.
            "--session-timeout-ms=6000".to_owned(),
            "--retry-max-ms=1000".to_owned(),
        ]
    };
    let mut db_args = consumer(DB_GROUP);
    db_args.push("--batch-size=50".to_owned());
    let mut infer_args = consumer(INFER_GROUP);
    infer_args.extend([
        format!("--infer-url={infer_url}"),
        "--images-per-request=8".to_owned(),
        "--in-flight=3".to_owned(),
    ]);
    for (name, bin, args) in [("db-consumer", "db-consumer", db_args), ("infer-consumer", "infer-consumer", infer_args)]
    {
        processes.push(Process {
            name: name.to_owned(),
            program: testkit::workspace_binary(bin),
            args,
            role: Role::Consumer,
        });
    }
    match followers {
        0 => {}
        1 => processes.push(follower_process("follower", work, &mongo_uri)),
        n => processes.extend(follower_cluster(n, work, &mongo_uri)),
    }
    for p in 0..stream.processes {
        let truth_log = work.join(format!("truth-{p}.csv"));
        let first_id = p as u64 * stream.ids_per_process as u64 * stream.records;
        processes.push(Process {
            name: format!("producer-{p}"),
            program: testkit::workspace_binary("producer"),
            args: vec![
                format!("--brokers={brokers}"),
                format!("--producers={}", stream.ids_per_process),
                format!("--producer-prefix=p{p}-cam-"),
                format!("--count={}", stream.records),
                format!("--start-id={first_id}"),
                "--disjoint-ids".to_owned(),
                // Records 0..1016 are the bit-exact CIFAR-10 pixels.
                "--image-limit=1017".to_owned(),
                format!("--cifar={}", asset("cifar10_test_batch.bin").display()),
                format!("--rate={}", stream.rate),
                format!("--truth-log={}", truth_log.display()),
            ],
            role: Role::Producer { truth_log },
        });
    }
    Plan { processes }
}

/// `dataflow count --follow` over the stack's MongoDB, writing `<work>/<name>.csv`.
pub fn follower_process(name: &str, work: &Path, mongo_uri: &str) -> Process {
    let csv = work.join(format!("{name}.csv"));
    Process {
        name: name.to_owned(),
        program: testkit::workspace_binary("dataflow"),
        args: vec![
            "count".to_owned(),
            "--follow".to_owned(),
            format!("--mongo-uri={mongo_uri}"),
            format!("--db={DB}"),
            "--poll-interval-ms=100".to_owned(),
            "--status-every=0".to_owned(),
            format!("--output={}", csv.display()),
        ],
        role: Role::Follower { csv },
    }
}

/// `processes` followers that form one cluster (`-n processes -p i -h hosts.txt`, one worker
/// each); process 0 writes `<work>/follower.csv`.
fn follower_cluster(processes: usize, work: &Path, mongo_uri: &str) -> Vec<Process> {
    let hosts = work.join("hosts.txt");
    let lines: String = (0..processes).map(|_| format!("127.0.0.1:{}\n", testkit::free_port())).collect();
    std::fs::write(&hosts, lines).expect("host file");
    (0..processes)
        .map(|p| {
            let mut process = follower_process("follower", work, mongo_uri);
            process.name = format!("follower-{p}");
            let cluster = ["-w", "1", "-n", &processes.to_string(), "-p", &p.to_string(), "-h"].map(str::to_owned);
            process.args.extend(cluster);
            process.args.push(hosts.display().to_string());
            if p > 0 {
                process.role = Role::Member;
            }
            process
        })
        .collect()
}

fn mongo_client(uri: &str, selection_timeout: Duration) -> Client {
    let mut options = mongodb::options::ClientOptions::parse(uri).run().expect("MongoDB URI");
    options.server_selection_timeout = Some(selection_timeout);
    options.connect_timeout = Some(selection_timeout);
    Client::with_options(options).expect("MongoDB client")
}

/// Committed offsets of consumer groups against the topic's end.
struct GroupLag {
    consumer: BaseConsumer,
    groups: Vec<(String, BaseConsumer)>,
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

impl GroupLag {
    fn new(kafka: &KafkaArgs, groups: &[&str]) -> GroupLag {
        let client = |group: &str| -> BaseConsumer {
            iot_ingest::kafka::consumer_config(kafka, group, 6000).create().expect("Kafka client")
        };
        GroupLag {
            consumer: client("faults-observer"),
            groups: groups.iter().map(|g| ((*g).to_owned(), client(g))).collect(),
        }
    }

    /// Records not yet committed, per group.
    fn lags(&self) -> Result<BTreeMap<String, i64>, String> {
        let metadata = self.consumer.fetch_metadata(Some(TOPIC), KAFKA_TIMEOUT).map_err(|e| e.to_string())?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
        let mut ends = Vec::new();
        for partition in 0..partitions {
            ends.push(self.consumer.fetch_watermarks(TOPIC, partition, KAFKA_TIMEOUT).map_err(|e| e.to_string())?.1);
        }
        let mut lags = BTreeMap::new();
        for (group, client) in &self.groups {
            let mut wanted = TopicPartitionList::new();
            (0..partitions).for_each(|p| {
                wanted.add_partition(TOPIC, p);
            });
            let committed = client.committed_offsets(wanted, KAFKA_TIMEOUT).map_err(|e| e.to_string())?;
            let mut lag = 0;
            for (partition, end) in ends.iter().enumerate() {
                let at = match committed.find_partition(TOPIC, partition as i32).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                lag += end - at;
            }
            lags.insert(group.clone(), lag);
        }
        Ok(lags)
    }
}

fn dead_letter_end(consumer: &BaseConsumer) -> Option<i64> {
    consumer.fetch_watermarks(DLQ_TOPIC, 0, KAFKA_TIMEOUT).ok().map(|(_, high)| high)
}

/// Every letter in the dead-letter topic (one partition), from the start to its end.
fn read_dead_letters(kafka: &KafkaArgs) -> Vec<DeadLetter> {
    let consumer: BaseConsumer =
        iot_ingest::kafka::consumer_config(kafka, "faults-dlq-reader", 6000).create().expect("Kafka client");
    let end = dead_letter_end(&consumer).expect("the dead-letter topic's end offset");
    let mut from_start = TopicPartitionList::new();
    from_start.add_partition_offset(DLQ_TOPIC, 0, Offset::Beginning).expect("partition");
    consumer.assign(&from_start).expect("assign the dead-letter topic");
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0;
    while next < end {
        assert!(Instant::now() < deadline, "read {next} of {end} dead letters in 60 s");
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else { continue };
        next = message.offset() + 1;
        let letter = serde_json::from_slice(message.payload().unwrap_or_default())
            .unwrap_or_else(|e| panic!("a dead letter that is not an envelope ({e}): {:?}", message.payload()));
        letters.push(letter);
    }
    letters
}

/// What identifies a record in a dead letter's payload.
#[derive(serde::Deserialize)]
struct Identity {
    #[serde(rename = "ProducerID")]
    producer_id: String,
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "SentAt")]
    sent_at_ms: Option<i64>,
}

/// A truth row some consumer group dead-lettered.
#[derive(Clone, Debug, PartialEq)]
pub struct LetteredRow {
    pub row: TruthRow,
    /// Only the infer-consumer gave up on it: the db-consumer stored its metadata, so MongoDB
    /// holds it without a label (pending, not counted).
    pub stored_unlabelled: bool,
}

/// Checks the dead letters against what the case expects and returns the truth rows they cover:
/// every letter has an expected reason, and each reason covers the expected number of distinct
/// records (a record may be dead-lettered by both groups).
fn excluded_by_letters(letters: &[DeadLetter], expected: &[ExpectedLetters], truth: &[TruthRow]) -> Vec<LetteredRow> {
    let mut records_by_reason: HashMap<&str, HashSet<(&str, i32, i64)>> = HashMap::new();
    for letter in letters {
        assert!(
            expected.iter().any(|e| e.reason_code == letter.reason_code),
            "unexpected dead letter ({}): {letter:?}",
            letter.reason_code
        );
        records_by_reason.entry(&letter.reason_code).or_default().insert((
            &letter.topic,
            letter.partition,
            letter.offset,
        ));
    }
    for expectation in expected {
        let got = records_by_reason.get(expectation.reason_code.as_str()).map_or(0, HashSet::len);
        assert_eq!(got, expectation.records, "records dead-lettered with {}", expectation.reason_code);
    }
    let identities: Vec<(Identity, &str)> = letters
        .iter()
        .filter_map(|l| {
            let identity = l.payload.as_deref().and_then(|p| serde_json::from_str(p).ok())?;
            Some((identity, l.consumer_group.as_str()))
        })
        .collect();
    truth
        .iter()
        .filter_map(|row| {
            let groups: HashSet<&str> = identities
                .iter()
                .filter(|(i, _)| {
                    i.producer_id == row.producer_id
                        && i.id == row.id
                        && i.sent_at_ms.is_none_or(|t| t == row.sent_at_ms)
                })
                .map(|(_, group)| *group)
                .collect();
            let stored_unlabelled = groups.len() == 1 && groups.contains(INFER_GROUP);
            (!groups.is_empty()).then(|| LetteredRow { row: row.clone(), stored_unlabelled })
        })
        .collect()
}

/// The exactness check every case ends with; usable on its own by any test that has truth logs
/// and a MongoDB the pipeline wrote to.
pub struct Exactness {
    pub mongo_uri: String,
    pub db: String,
    /// The `dataflow` binary.
    pub dataflow: PathBuf,
    /// Where the batch CSV (and a fresh follower's) is written.
    pub out_dir: PathBuf,
    /// Appended to failure messages.
    pub log_tails: String,
}

pub struct Summary {
    pub records: usize,
    pub errors: BTreeMap<String, u64>,
}

impl Exactness {
    /// Every row of `truth` is in MongoDB exactly once (no other record is), with the metadata
    /// the producer sent and an inference; `dataflow count` and `dataflow count --follow` (the
    /// running follower's CSV at `follower_csv`, or else a fresh one) both write exactly the
    /// per-producer error counts computed from `truth` and the stored labels.
    /// The records of `unlabelled` are stored with their metadata but without a label (pending,
    /// not counted).
    pub fn check(&self, truth: &[TruthRow], unlabelled: &[TruthRow], follower_csv: Option<&Path>) -> Summary {
        let tails = &self.log_tails;
        let by_id: HashMap<String, &TruthRow> =
            truth.iter().map(|r| (iot_schema::doc_id(&r.producer_id, r.id), r)).collect();
        assert_eq!(by_id.len(), truth.len(), "the truth logs name a record twice");
        let mut pending: HashMap<String, &TruthRow> =
            unlabelled.iter().map(|r| (iot_schema::doc_id(&r.producer_id, r.id), r)).collect();

        let client = mongo_client(&self.mongo_uri, Duration::from_secs(10));
        let records = client.database(&self.db).collection::<Document>(iot_schema::DEFAULT_COLLECTION);
        let mut labels: HashMap<String, String> = HashMap::new();
        for doc in records.find(doc! {}).run().expect("find") {
            let doc = doc.expect("MongoDB cursor");
            let id = doc.get_str("_id").unwrap_or_else(|_| panic!("a record without a string _id: {doc}")).to_owned();
            if let Some(row) = pending.remove(&id) {
                assert_metadata(&doc, row, tails);
                assert!(!doc.contains_key("Inferred"), "a record the infer-consumer dead-lettered has a label: {doc}");
                continue;
            }
            let Some(row) = by_id.get(&id) else {
                panic!(
                    "MongoDB has a record no producer sent (or one that should have been dead-lettered): {doc}{tails}"
                )
            };
            assert_metadata(&doc, row, tails);
            assert_eq!(doc.get_str("ModelId"), Ok(MODEL_ID), "{doc}{tails}");
            let label = doc.get_str("Inferred").unwrap_or_else(|_| panic!("not inferred: {doc}{tails}"));
            assert!(labels.insert(id, label.to_owned()).is_none(), "a record appears twice");
        }
        assert!(pending.is_empty(), "dead-lettered records whose metadata was never stored: {pending:?}{tails}");
        let missing: Vec<&String> = by_id.keys().filter(|id| !labels.contains_key(*id)).take(10).collect();
        assert!(
            missing.is_empty(),
            "{} records never reached MongoDB, e.g. {missing:?}{tails}",
            truth.len() - labels.len()
        );
        let distinct: HashSet<&str> = labels.values().map(String::as_str).collect();
        assert!(distinct.len() > 2, "the model gave suspiciously few distinct labels: {distinct:?}");

        let errors = error_counts(truth, &labels);
        let expected = counts_csv(&errors);
        let batch = self.out_dir.join("batch.csv");
        let output = Command::new(&self.dataflow)
            .args(["count", "--mongo-uri", &self.mongo_uri, "--db", &self.db, "--output"])
            .arg(&batch)
            .output()
            .expect("run dataflow count");
        assert!(output.status.success(), "dataflow count failed: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(std::fs::read_to_string(&batch).expect("batch CSV"), expected, "dataflow count vs the truth");

        match follower_csv {
            Some(csv) => wait_for_csv(csv, &expected, FOLLOWER_WAIT, tails),
            None => self.fresh_follower(&expected),
        }
        Summary { records: labels.len(), errors }
    }

    fn fresh_follower(&self, expected: &str) {
        let process = follower_process("final-follower", &self.out_dir, &self.mongo_uri);
        let mut children = Children::new(&self.out_dir.join("logs"));
        children.spawn(&process.name, &process.program, &process.args);
        let Role::Follower { csv } = &process.role else { unreachable!() };
        wait_for_csv(csv, expected, FOLLOWER_WAIT, &children.log_tails());
        assert!(children.terminate(&process.name, STOP_WAIT), "the follower did not exit 0 on SIGTERM");
    }
}

/// The stored record holds what the producer sent for it, and the db-consumer's metadata.
fn assert_metadata(doc: &Document, row: &TruthRow, tails: &str) {
    assert_eq!(doc.get_str("ProducerID"), Ok(row.producer_id.as_str()), "{doc}");
    assert_eq!(doc.get_i64("ID").or_else(|_| doc.get_i32("ID").map(i64::from)), Ok(row.id), "{doc}");
    assert_eq!(doc.get_str("GroundTruth"), Ok(row.ground_truth.as_str()), "{doc}");
    assert_eq!(doc.get_datetime("SentAt").map(|d| d.timestamp_millis()), Ok(row.sent_at_ms), "{doc}");
    assert!(doc.get_datetime("StoredAt").is_ok(), "no metadata from the db-consumer: {doc}{tails}");
}

/// `ProducerID -> errors` from the truth and the stored labels.
pub fn error_counts(truth: &[TruthRow], labels: &HashMap<String, String>) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    for row in truth {
        let label = &labels[&iot_schema::doc_id(&row.producer_id, row.id)];
        *errors.entry(row.producer_id.clone()).or_default() += u64::from(*label != row.ground_truth);
    }
    errors
}

/// The CSV `dataflow count` must write for these counts.
fn counts_csv(errors: &BTreeMap<String, u64>) -> String {
    let mut csv = String::from("ProducerID,total_errors\n");
    for (producer, n) in errors {
        csv += &format!("{producer},{n}\n");
    }
    csv
}

fn wait_for_csv(path: &Path, expected: &str, limit: Duration, tails: &str) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = std::fs::read_to_string(path).unwrap_or_default();
        if last == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("after {limit:?} the follower's CSV {} says\n{last}instead of\n{expected}{tails}", path.display());
}
