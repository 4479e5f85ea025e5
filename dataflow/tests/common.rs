//! Helpers shared by the integration tests: running the real `dataflow` binary and reading its CSV.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use iot_bench::expected::{error_counts, read_error_counts};
use iot_bench::Answer;

pub fn dataflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dataflow"));
    command.env_remove("IOT_MONGO_URI");
    command
}

/// Runs `dataflow count` with `args` plus `--output <dir>/<name>`; returns the CSV's counts.
pub fn count(dir: &Path, name: &str, args: &[&str]) -> (BTreeMap<String, u64>, Output) {
    let output = dir.join(name);
    let result = dataflow().arg("count").args(args).arg("--output").arg(&output).output().unwrap();
    assert!(result.status.success(), "dataflow {args:?} failed:\n{}", String::from_utf8_lossy(&result.stderr));
    (read_error_counts(&output).unwrap(), result)
}

pub fn expected(answer: &Answer) -> BTreeMap<String, u64> {
    error_counts(answer)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn mongo_uri() -> String {
    std::env::var("IOT_MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned())
}

/// A database name no other test uses.
pub fn unique_db(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Free loopback ports for a host file: one `127.0.0.1:port` line per process.
pub fn hostfile(dir: &Path, processes: usize) -> PathBuf {
    let listeners: Vec<_> = (0..processes).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let lines: String = listeners.iter().map(|l| format!("{}\n", l.local_addr().unwrap())).collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Runs one `dataflow count` process per host-file line, with `workers` each; returns process
/// 0's CSV counts. Every process must succeed.
pub fn count_on_cluster(dir: &Path, processes: usize, workers: usize, args: &[&str]) -> BTreeMap<String, u64> {
    let hosts = hostfile(dir, processes);
    let output = dir.join("cluster.csv");
    let children: Vec<_> = (0..processes)
        .map(|p| {
            dataflow()
                .arg("count")
                .args(args)
                .args(["-w", &workers.to_string(), "-n", &processes.to_string(), "-p", &p.to_string()])
                .arg("-h")
                .arg(&hosts)
                .arg("--output")
                .arg(&output)
                .arg("--connect-timeout")
                .arg("60")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "process {p} failed:\n{}", stderr(&result));
    }
    read_error_counts(&output).unwrap()
}

/// A `dataflow count --follow` process, killed when dropped.
pub struct Follower {
    pub child: Child,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_follower(args: &[&str], output: &Path) -> Follower {
    let child = dataflow()
        .args(["count", "--follow", "--poll-interval-ms", "100", "--status-every", "0"])
        .args(args)
        .arg("--output")
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Follower { child }
}

/// Waits until the CSV says `expected`, or fails after `limit` with what it said last.
pub fn wait_for_csv(path: &Path, expected: &std::collections::BTreeMap<String, u64>, limit: Duration) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        if let Ok(counts) = read_error_counts(path) {
            if &counts == expected {
                return;
            }
            last = Some(counts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("after {limit:?} the CSV still says\n{last:?}\ninstead of\n{expected:?}");
}
