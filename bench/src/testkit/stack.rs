//! Servers of a test's own, for tests that must kill or freeze a service without touching the
//! shared stack: a whole Kafka + MongoDB stack (`scripts/stack` in a folder and on ports of its
//! own), or one MongoDB-compatible server.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::process::{alive, log_tails, signal, ChildGuard, Signal};
use super::{env_or, free_port, port_open, workspace_root};

/// One part of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Kafka,
    Mongo,
}

impl Part {
    fn file_stem(self) -> &'static str {
        match self {
            Part::Kafka => "kafka",
            Part::Mongo => "mongo",
        }
    }
}

/// Ports of one private stack.
#[derive(Clone, Copy, Debug)]
pub struct StackPorts {
    pub kafka: u16,
    pub kafka_controller: u16,
    pub mongo: u16,
}

/// Private stacks take their ports from fixed ranges, kept apart from the shared stack's
/// (9092/9093, 27017): Kafka and its controller from 19000-19199, MongoDB from 27500-27599.
/// Each call hands out the next slot whose ports are free, so stacks of one test process never
/// share one, and a slot another process is using is skipped.
pub fn next_free_ports() -> StackPorts {
    static NEXT_SLOT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT_SLOT.fetch_add(1, Ordering::SeqCst);
        assert!(slot < 100, "no free private-stack ports left in 19000-19199 / 27500-27599");
        let ports = StackPorts { kafka: 19000 + 2 * slot, kafka_controller: 19001 + 2 * slot, mongo: 27500 + slot };
        if ![ports.kafka, ports.kafka_controller, ports.mongo].into_iter().any(port_open) {
            return ports;
        }
    }
}

/// A Kafka + MongoDB stack of a test's own (`scripts/stack` in its own folder, on its own ports),
/// stopped and deleted (`scripts/stack down --purge`, which stops by pid file) when dropped.
pub struct PrivateStack {
    pub dir: PathBuf,
    pub ports: StackPorts,
    kafka_heap: String,
}

impl PrivateStack {
    /// A stack in `dir` on the next free ports, with a small Kafka heap; nothing runs yet (see
    /// [`start_missing`](Self::start_missing)), but dropping it stops whatever was started.
    pub fn new(dir: &Path) -> PrivateStack {
        PrivateStack { dir: dir.to_path_buf(), ports: next_free_ports(), kafka_heap: "256m".to_owned() }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports.kafka)
    }

    pub fn mongo_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.ports.mongo)
    }

    /// `scripts/stack ARGS` with this stack's folder and ports (and no other `IOT_*` setting).
    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(workspace_root().join("scripts/stack"));
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("IOT_") && key_text != "IOT_CACHE_DIR" {
                command.env_remove(&key);
            }
        }
        command
            .args(args)
            .env("IOT_STACK_DIR", &self.dir)
            .env("IOT_KAFKA_PORT", self.ports.kafka.to_string())
            .env("IOT_KAFKA_CONTROLLER_PORT", self.ports.kafka_controller.to_string())
            .env("IOT_MONGO_PORT", self.ports.mongo.to_string())
            .env("IOT_KAFKA_HEAP", &self.kafka_heap)
            .env("IOT_STACK_NO_SETUP", "1")
            .stdin(Stdio::null());
        command
    }

    /// `scripts/stack up`: starts whatever part is not running (same data folder) and waits until
    /// both answer. This is also how a test restarts a part it killed.
    pub fn start_missing(&self) {
        let output = self.script(&["up"]).output().expect("run scripts/stack up");
        assert!(
            output.status.success(),
            "scripts/stack up failed for the private stack in {} ({:?}):\n{}{}",
            self.dir.display(),
            self.ports,
            String::from_utf8_lossy(&output.stderr),
            self.log_tails()
        );
    }

    /// The server process of `part`, if it runs.
    pub fn pid(&self, part: Part) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.pid", part.file_stem()))).ok()?;
        text.trim().parse().ok().filter(|pid| alive(*pid))
    }

    /// Sends `sig` to `part`'s server process; panics if it is not running.
    pub fn signal(&self, part: Part, sig: Signal) {
        let pid = self.pid(part).unwrap_or_else(|| panic!("{part:?} is not running"));
        assert!(signal(pid, sig), "cannot signal {part:?} (pid {pid})");
    }

    /// SIGKILL to `part`, returning once the process is gone (the stack started it in a session
    /// of its own, so it is not our child: wait for it to disappear rather than reap it).
    pub fn kill(&self, part: Part) {
        let pid = self.pid(part).unwrap_or_else(|| panic!("{part:?} is not running"));
        signal(pid, Signal::Kill);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "{part:?} (pid {pid}) survived SIGKILL for 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the servers' logs.
    pub fn log_tails(&self) -> String {
        log_tails(&self.dir.join("logs"), 25)
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        // A frozen server would make `down` wait its whole grace period first.
        for part in [Part::Kafka, Part::Mongo] {
            if let Some(pid) = self.pid(part) {
                signal(pid, Signal::Cont);
            }
        }
        if std::thread::panicking() {
            eprintln!("private stack in {} at failure:{}", self.dir.display(), self.log_tails());
        }
        match self.script(&["down", "--purge"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("scripts/stack down --purge failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(err) => eprintln!("cannot run scripts/stack down: {err}"),
        }
    }
}

/// A MongoDB-compatible server of the test's own, which it may freeze: `mongod` when on PATH (as
/// `scripts/stack` prefers), else the FerretDB binary `scripts/setup` installs. Its data lives in
/// a temporary folder; it is killed when dropped.
pub struct PrivateMongo {
    pub uri: String,
    port: u16,
    server: ChildGuard,
    _dir: tempfile::TempDir,
}

impl PrivateMongo {
    /// Starts the server on a free port and waits until it listens (both servers listen only once
    /// they can serve). Needs no client, so async and blocking tests can both call it.
    pub fn start() -> PrivateMongo {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = File::create(dir.path().join("mongo.log")).expect("log file");
        let mut command = server_command(dir.path(), port);
        command.stdin(Stdio::null()).stdout(log.try_clone().expect("log file")).stderr(log);
        let uri = format!("mongodb://127.0.0.1:{port}");
        let mut server = PrivateMongo { uri, port, server: ChildGuard::spawn(&mut command), _dir: dir };
        server.wait_until_it_answers();
        server
    }

    fn wait_until_it_answers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(self.port) {
            assert!(self.server.is_running(), "the private MongoDB server exited:{}", log_tails(self._dir.path(), 20));
            assert!(Instant::now() < deadline, "the private MongoDB server at {} did not come up", self.uri);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.server.signal(Signal::Stop);
    }

    pub fn thaw(&self) {
        self.server.signal(Signal::Cont);
    }
}

fn server_command(dir: &Path, port: u16) -> Command {
    if let Some(mongod) = on_path("mongod") {
        let mut command = Command::new(mongod);
        command.arg("--dbpath").arg(dir).args(["--bind_ip", "127.0.0.1", "--port", &port.to_string()]);
        return command;
    }
    let cache = PathBuf::from(env_or("IOT_CACHE_DIR", &workspace_root().join(".cache").to_string_lossy()));
    let ferretdb = cache.join("bin/ferretdb");
    assert!(ferretdb.is_file(), "no mongod on PATH and no {}: run scripts/setup", ferretdb.display());
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    let mut command = Command::new(ferretdb);
    command
        .arg("--handler=sqlite")
        .arg(format!("--sqlite-url=file:{}/", dir.join("data").display()))
        .arg(format!("--listen-addr=127.0.0.1:{port}"))
        .arg(format!("--state-dir={}", dir.display()))
        .args(["--debug-addr=-", "--telemetry=disable", "--log-level=warn"]);
    command
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
