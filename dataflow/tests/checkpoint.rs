//! `dataflow count --follow --checkpoint-dir`: a restarted follower takes its state from the last
//! checkpoint and reads only the change log since, and falls back to a full load, saying why,
//! whenever the checkpoint cannot be trusted. Every case ends with the CSV equal to what the
//! test wrote and to a fresh batch count.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use iot_bench::testkit::Signal;

const RESTORED: &str = "from checkpoint";
const FULL_LOAD: &str = "loading in full";

/// A follower of one database with checkpoints in `dir/checkpoints`, logging to `dir/<name>.log`.
struct Setup {
    dir: tempfile::TempDir,
    uri: String,
    output: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("follow.csv");
        Setup { dir, uri: mongo_uri(), output }
    }

    fn checkpoints(&self) -> PathBuf {
        self.dir.path().join("checkpoints")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn start(&self, db: &str, name: &str, extra: &[&str]) -> Follower {
        let checkpoints = self.checkpoints();
        let mut args =
            vec!["--mongo-uri", &self.uri, "--db", db, "-w", "2", "--checkpoint-dir", checkpoints.to_str().unwrap()];
        args.extend(extra);
        start_follower_logged(&args, &self.output, &self.log(name))
    }

    /// The batch count of `db` agrees with what the test wrote, and so does the followed CSV.
    fn check(&self, db: &str, model: &Model) {
        wait_for_csv(&self.output, &errors_of(model), Duration::from_secs(60));
        let (batch, _) = count(self.dir.path(), "batch.csv", &["--mongo-uri", &self.uri, "--db", db]);
        assert_eq!(batch, errors_of(model));
    }
}

fn generation(checkpoints: &Path) -> u64 {
    let manifest = std::fs::read_to_string(checkpoints.join("manifest.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&manifest).ok().and_then(|m| m["generation"].as_u64()).unwrap_or(0)
}

fn wait_for_generation(checkpoints: &Path, at_least: u64) {
    let started = Instant::now();
    while generation(checkpoints) < at_least {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint {at_least} in {}", checkpoints.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(follower: &mut Follower) {
    let status = follower.terminate_within(Duration::from_secs(30)).expect("--follow stops on SIGTERM");
    assert!(status.success(), "{status}");
}

/// SIGTERM writes a checkpoint; the restart reads only the change log, including what was
/// written while it was down, and so does a restart after a SIGKILL.
#[test]
fn a_restart_after_sigterm_or_sigkill_replays_only_the_changes_since_the_checkpoint() {
    let (db, model) = base(3_000, 31);
    let database = db.client.database(&db.name);
    let setup = Setup::new();
    let mut follower = setup.start(&db.name, "first", &[]);
    wait_for_csv(&setup.output, &errors_of(&model), Duration::from_secs(60));
    wait_for_generation(&setup.checkpoints(), 1); // the one after the initial load
    let changed = write_changes(&database, &model, 2);
    wait_for_csv(&setup.output, &errors_of(&changed), Duration::from_secs(60));
    stop(&mut follower);
    assert_eq!(generation(&setup.checkpoints()), 2, "SIGTERM writes a checkpoint");

    let changed_while_stopped = write_changes(&database, &changed, 3);
    let mut follower = setup.start(&db.name, "second", &[]);
    wait_for_log(&setup.log("second"), RESTORED, Duration::from_secs(30));
    setup.check(&db.name, &changed_while_stopped);

    // Killed without warning: the restart takes the checkpoint SIGTERM wrote, and replays
    // everything since, both what this follower had applied and what was written while down.
    let changed_again = write_changes(&database, &changed_while_stopped, 2);
    wait_for_csv(&setup.output, &errors_of(&changed_again), Duration::from_secs(60));
    follower.signal(Signal::Kill);
    follower.wait_exit(Duration::from_secs(10));
    let changed_while_killed = write_changes(&database, &changed_again, 3);
    let _follower = setup.start(&db.name, "third", &[]);
    wait_for_log(&setup.log("third"), RESTORED, Duration::from_secs(30));
    assert!(!read_log(&setup.log("third")).contains(FULL_LOAD));
    setup.check(&db.name, &changed_while_killed);
}

/// A follower killed while its workers write the next checkpoint leaves a file no manifest
/// names; the restart uses the previous checkpoint, whole, and removes the leftovers.
#[test]
fn a_follower_killed_while_writing_a_checkpoint_restarts_from_the_previous_one() {
    let (db, model) = base(2_000, 32);
    let database = db.client.database(&db.name);
    let setup = Setup::new();
    // Every worker writes checkpoint 1 (after the load); in checkpoint 2 each stops after writing
    // its state, before the file is whole and named.
    let mut follower = ChildGuard::spawn(
        dataflow()
            .args(["count", "--follow", "--poll-interval-ms", "100", "--status-every", "0", "--checkpoint-every", "1"])
            .args(["--mongo-uri", &setup.uri, "--db", &db.name, "-w", "2", "--output"])
            .arg(&setup.output)
            .arg("--checkpoint-dir")
            .arg(setup.checkpoints())
            .env("FAILPOINTS", "checkpoint-worker-file-written=2*off->sleep(600000)")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(setup.log("killed")).unwrap()),
    );
    wait_for_csv(&setup.output, &errors_of(&model), Duration::from_secs(60));
    wait_for_generation(&setup.checkpoints(), 1);
    let started = Instant::now();
    let unfinished = |dir: &Path| {
        std::fs::read_dir(dir).unwrap().any(|entry| entry.unwrap().file_name().to_string_lossy().starts_with(".state-"))
    };
    while !unfinished(&setup.checkpoints()) {
        assert!(started.elapsed() < Duration::from_secs(30), "checkpoint 2 was never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    follower.signal(Signal::Kill);
    follower.wait_exit(Duration::from_secs(10));
    assert_eq!(generation(&setup.checkpoints()), 1, "the unfinished checkpoint is not committed");

    let changed_while_down = write_changes(&database, &model, 3);
    let mut follower = setup.start(&db.name, "restarted", &[]);
    wait_for_log(&setup.log("restarted"), "restored 2000 records from checkpoint 1", Duration::from_secs(30));
    setup.check(&db.name, &changed_while_down);
    stop(&mut follower);
    assert!(!unfinished(&setup.checkpoints()), "the next checkpoint removes what the killed one left");
}

/// A checkpoint older than the change log's retention, one of another collection, and a damaged
/// one are each refused with the reason, and the follower loads in full.
#[test]
fn a_checkpoint_too_old_of_another_collection_or_damaged_is_not_used() {
    let (db, model) = base(1_000, 33);
    let (other_db, other_model) = base(700, 34);
    let database = db.client.database(&db.name);
    let setup = Setup::new();
    let short_log = ["--change-retention-s", "10", "--settle-ms", "500"];
    let mut follower = setup.start(&db.name, "first", &short_log);
    wait_for_csv(&setup.output, &errors_of(&model), Duration::from_secs(60));
    stop(&mut follower);

    // Another collection: same folder, another database.
    let mut follower = setup.start(&other_db.name, "other", &short_log);
    wait_for_log(&setup.log("other"), FULL_LOAD, Duration::from_secs(30));
    assert!(read_log(&setup.log("other")).contains(&format!("the checkpoint is of {}.inferences", db.name)));
    setup.check(&other_db.name, &other_model);
    stop(&mut follower); // its checkpoint replaces the first database's

    // Damaged: one byte of a worker's file flipped.
    let state = setup.checkpoints().join(format!("state-{}-1.bin", generation(&setup.checkpoints())));
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[20] ^= 0x10;
    std::fs::write(&state, bytes).unwrap();
    let mut follower = setup.start(&other_db.name, "damaged", &short_log);
    wait_for_log(&setup.log("damaged"), FULL_LOAD, Duration::from_secs(30));
    assert!(read_log(&setup.log("damaged")).contains("damaged"), "{}", read_log(&setup.log("damaged")));
    setup.check(&other_db.name, &other_model);
    stop(&mut follower);

    // Too old: down for longer than the change log is kept (10 s), with writes meanwhile.
    let mut follower = setup.start(&db.name, "back", &short_log);
    wait_for_csv(&setup.output, &errors_of(&model), Duration::from_secs(60));
    stop(&mut follower);
    let changed = write_changes(&database, &model, 2);
    std::thread::sleep(Duration::from_secs(11));
    let _follower = setup.start(&db.name, "too-old", &short_log);
    wait_for_log(&setup.log("too-old"), FULL_LOAD, Duration::from_secs(30));
    assert!(read_log(&setup.log("too-old")).contains("the change log keeps only 10 s"));
    setup.check(&db.name, &changed);
}

/// A 2-process cluster, each process with a folder of its own (no shared disk): SIGTERM to one
/// member checkpoints the whole cluster, and the restarted cluster restores every worker's share.
#[test]
fn a_cluster_restores_each_processs_share_from_its_own_folder() {
    let (db, model) = base(2_000, 35);
    let database = db.client.database(&db.name);
    let setup = Setup::new();
    let hosts = hostfile(setup.dir.path(), 2);
    let start = |run: &str| -> Vec<Follower> {
        (0..2)
            .map(|p| {
                let folder = setup.dir.path().join(format!("checkpoints-{p}"));
                let (index, folder) = (p.to_string(), folder.to_str().unwrap().to_owned());
                let args = ["--mongo-uri", &setup.uri, "--db", &db.name, "--checkpoint-dir", &folder];
                let cluster = ["-w", "2", "-n", "2", "-p", &index, "-h", hosts.to_str().unwrap()];
                let args: Vec<&str> = args.into_iter().chain(cluster).collect();
                start_follower_logged(&args, &setup.output, &setup.log(&format!("{run}-{p}")))
            })
            .collect()
    };
    let mut cluster = start("first");
    wait_for_csv(&setup.output, &errors_of(&model), Duration::from_secs(60));
    let changed = write_changes(&database, &model, 2);
    wait_for_csv(&setup.output, &errors_of(&changed), Duration::from_secs(60));
    cluster[1].signal(Signal::Term);
    cluster.iter_mut().for_each(|member| assert!(member.expect_exit(Duration::from_secs(30)).success()));
    let files = |p: usize| {
        let folder = setup.dir.path().join(format!("checkpoints-{p}"));
        let mut names: Vec<String> =
            std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    // Checkpoint 1 after the load, 2 on SIGTERM. Process 0 has the manifest and its workers'
    // files of 2; process 1, whose workers are told what is committed only with the next
    // request, keeps 1 as well, never more than two generations.
    assert_eq!(files(0), ["manifest.json", "state-2-0.bin", "state-2-1.bin"]);
    assert_eq!(files(1), ["state-1-2.bin", "state-1-3.bin", "state-2-2.bin", "state-2-3.bin"]);

    let changed_while_stopped = write_changes(&database, &changed, 3);
    let _cluster = start("second");
    wait_for_log(&setup.log("second-0"), RESTORED, Duration::from_secs(30));
    setup.check(&db.name, &changed_while_stopped);
}
