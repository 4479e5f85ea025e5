//! A MongoDB server that is up but stalled (here: a private FerretDB frozen with SIGSTOP, never
//! the shared one): the batch job fails (exit code 1) instead of hanging, and the follower
//! logs the stall, keeps its last CSV and catches up once the server answers again.

mod common;

use std::net::TcpListener;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A FerretDB of this test's own, on a free port of `ports`, with its data in a temporary folder.
struct PrivateFerretDb {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateFerretDb {
    fn start(ports: Range<u16>) -> Self {
        let bin = std::env::var_os("IOT_FERRETDB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/bin/ferretdb")));
        assert!(bin.is_file(), "no FerretDB at {} (scripts/setup installs it)", bin.display());
        let port = ports.clone().find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok());
        let port = port.unwrap_or_else(|| panic!("no free port in {ports:?}"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let child = Command::new(&bin)
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", dir.path().join("data").display()))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg(format!("--state-dir={}", dir.path().display()))
            .args(["--debug-addr=-", "--telemetry=disable", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = PrivateFerretDb { child, port, _dir: dir };
        server.wait_until_it_answers();
        server
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    fn wait_until_it_answers(&self) {
        let uri = format!("{}/?serverSelectionTimeoutMS=1000", self.uri());
        let started = Instant::now();
        while mongodb::sync::Client::with_uri_str(&uri)
            .and_then(|client| client.database("admin").run_command(bson::doc! { "ping": 1 }).run())
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(30), "the private FerretDB did not start");
        }
    }

    fn freeze(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    fn thaw(&self) {
        signal(&self.child, libc::SIGCONT);
    }
}

impl Drop for PrivateFerretDb {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stalled_server_fails_the_batch_job_with_exit_code_1() {
    let server = PrivateFerretDb::start(27400..27450);
    let (db, model) = base_at(&server.uri(), 100, 41);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("never.csv");
    let uri = server.uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str(), "--mongo-op-timeout", "2"];
    assert_eq!(count(dir.path(), "before.csv", &args).0, errors_of(&model), "the server answers at first");

    server.freeze();
    let log = dir.path().join("batch.log");
    let mut batch = Follower {
        child: dataflow()
            .arg("count")
            .args(args)
            .arg("--output")
            .arg(&output)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    let status = wait_for_exit(&mut batch.child, Duration::from_secs(60));
    server.thaw();
    let said = read_log(&log);
    assert_eq!(status.code(), Some(iot_schema::exit::FAILED.into()), "{said}");
    assert!(said.contains(&format!("MongoDB at {uri} stopped answering")), "{said}");
    assert!(said.contains("no answer within 2s (--mongo-op-timeout)"), "{said}");
    assert!(!output.exists(), "no CSV");
}

#[test]
fn a_follower_logs_a_stall_and_catches_up_once_the_server_answers() {
    let server = PrivateFerretDb::start(27450..27500);
    let (db, mut model) = base_at(&server.uri(), 300, 42);
    let dir = tempfile::tempdir().unwrap();
    let (output, log) = (dir.path().join("follow.csv"), dir.path().join("follower.log"));
    let uri = server.uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str(), "--mongo-op-timeout", "2"];
    let _follower = start_follower_logged(&args, &output, &log);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));

    server.freeze();
    wait_for_log(&log, "MongoDB stalled", Duration::from_secs(30));
    server.thaw();
    let said = read_log(&log);
    assert!(said.contains("no answer within 2s") && said.contains("failing_s="), "{said}");
    assert_eq!(iot_bench::expected::read_error_counts(&output).unwrap(), errors_of(&model), "the last CSV stays");

    let database = db.database();
    for id in &correct_ids(&model)[..20] {
        let flipped = flip(&database, &model, id);
        model.insert(id.clone(), flipped);
    }
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    assert_eq!(count(dir.path(), "batch.csv", &args).0, errors_of(&model));
}
