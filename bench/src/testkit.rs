//! Helpers for tests that run the project's real binaries against real services: a guard over
//! child processes, free ports, the workspace's binaries and assets, and a private Kafka +
//! MongoDB stack (`scripts/stack` with a folder and ports of its own) for tests that must kill or
//! freeze a service without touching the shared one.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's root folder (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace folder").to_path_buf()
}

/// `target/<profile>`: where cargo puts the workspace's binaries. Test executables live in its
/// `deps/` folder.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's folder");
    deps.parent().expect("target/<profile>").to_path_buf()
}

/// A binary of any workspace package (a test can only name its own package's). `scripts/test`
/// (`cargo test --workspace`) builds them all; when one is missing or older than a source file
/// of the workspace, the first call in a test process runs `cargo test --workspace --no-run`,
/// the same build. (Building one package alone, `cargo build -p`, would resolve dependency
/// features differently and compile a second copy of half the dependency tree.)
pub fn workspace_binary(bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = profile_dir().join(bin);
    if !is_fresh(&path) {
        BUILT.get_or_init(build_workspace);
    }
    assert!(path.is_file(), "{} is missing after building the workspace", path.display());
    path
}

fn build_workspace() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args(["test", "--workspace", "--no-run", "--quiet"]);
    if profile_dir().ends_with("release") {
        build.arg("--release");
    }
    // What cargo set for this test's package must not leak into the build: some build scripts
    // (ring's) watch CARGO_MANIFEST_DIR, and a changed value rebuilds half the tree.
    for (key, _) in std::env::vars_os() {
        if is_set_by_cargo_for_tests(&key.to_string_lossy()) {
            build.env_remove(key);
        }
    }
    let status = build.status().unwrap_or_else(|e| panic!("cannot run cargo to build the binaries: {e}"));
    assert!(status.success(), "`cargo test --workspace --no-run` failed");
}

/// True if `binary` exists and is newer than `Cargo.lock` and every file under a `src/` folder
/// of the workspace.
fn is_fresh(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = workspace_root();
    let mut pending: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .filter(|p| p.is_dir())
        .collect();
    let mut newest = root.join("Cargo.lock").metadata().and_then(|m| m.modified()).ok();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest.is_none_or(|n| n <= built)
}

/// The variables cargo sets when it runs a test of one package.
fn is_set_by_cargo_for_tests(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// A file the test needs, or a failure that says how to get it.
pub fn required(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.is_file(), "{} is missing: {how}", path.display());
    path
}

/// `$IOT_ASSETS_DIR`, or `../shared/assets` beside the workspace.
pub fn assets_dir() -> PathBuf {
    PathBuf::from(env_or("IOT_ASSETS_DIR", &workspace_root().join("../shared/assets").to_string_lossy()))
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, or where `scripts/setup` installs it.
pub fn ort_library() -> PathBuf {
    let default = workspace_root().join(".cache/onnxruntime/lib/libonnxruntime.so");
    required(PathBuf::from(env_or("ORT_DYLIB_PATH", &default.to_string_lossy())), "run scripts/setup")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

/// Sends `signal` to one process; false if it is gone.
pub fn signal(pid: u32, signal: Signal) -> bool {
    let number = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    unsafe { libc::kill(pid as libc::pid_t, number) == 0 }
}

/// True while a process exists (a zombie counts until its parent reaps it).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Child processes by name, each logging (stdout and stderr) to `<logs>/<name>.log`; all are
/// killed when the guard is dropped, whether the test passed or not.
pub struct Children {
    logs: PathBuf,
    running: Vec<(String, Child)>,
}

impl Children {
    pub fn new(logs: &Path) -> Children {
        std::fs::create_dir_all(logs).expect("log folder");
        Children { logs: logs.to_path_buf(), running: Vec::new() }
    }

    /// Starts `program ARGS` as `name`, logging at `info` unless `RUST_LOG` says otherwise. A
    /// name used before (a restart) appends to the same log. The child gets none of the caller's
    /// `IOT_*` settings (e.g. a shared stack's addresses), so the test's flags are all it sees.
    pub fn spawn<A: AsRef<OsStr>>(&mut self, name: &str, program: &Path, args: impl IntoIterator<Item = A>) {
        assert!(!self.is_running(name), "{name} is already running");
        let mut command = Command::new(program);
        command.args(args).env("RUST_LOG", env_or("RUST_LOG", "info"));
        let mut log = OpenOptions::new().create(true).append(true).open(self.log_path(name)).expect("log file");
        let _ = writeln!(log, "=== {} {command:?}", now_ms());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("IOT_") {
                command.env_remove(key);
            }
        }
        command.stdin(Stdio::null()).stdout(log.try_clone().expect("log file")).stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        self.running.push((name.to_owned(), child));
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Everything `name` logged so far, restarts included.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        self.running.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.running.iter().find(|(n, _)| n == name).map(|(_, c)| c.id()).unwrap_or_else(|| panic!("no child {name}"))
    }

    /// True if `name` was started and has not exited (an exit is noticed here, not reaped).
    pub fn is_running(&mut self, name: &str) -> bool {
        let Some((_, child)) = self.running.iter_mut().find(|(n, _)| n == name) else {
            return false;
        };
        matches!(child.try_wait(), Ok(None))
    }

    fn take(&mut self, name: &str) -> Child {
        let at = self.running.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("no child {name}"));
        self.running.remove(at).1
    }

    /// SIGKILL: no chance to commit or flush anything.
    pub fn kill(&mut self, name: &str) {
        let mut child = self.take(name);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then up to `within` for the child to exit (SIGKILL after that). True only if it
    /// exited by itself, with status 0.
    pub fn terminate(&mut self, name: &str, within: Duration) -> bool {
        let pid = self.pid(name);
        signal(pid, Signal::Term);
        let exited = self.wait_exit(name, within);
        if exited.is_none() {
            self.kill(name);
        }
        exited.is_some_and(|status| status.success())
    }

    /// Waits up to `within` for `name` to exit by itself; its status, or None if it still runs.
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let at = self.running.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("no child {name}"));
            if let Ok(Some(status)) = self.running[at].1.try_wait() {
                self.running.remove(at);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every log in the folder, for failure messages.
    pub fn log_tails(&self) -> String {
        log_tails(&self.logs, 15)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of every `*.log` file in `dir`, each under its path.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut out = String::new();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
        out += &format!("\n--- {} (last lines) ---\n", path.display());
        out += &tail(&std::fs::read_to_string(&path).unwrap_or_default(), lines);
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().map(|l| format!("{l}\n")).collect()
}

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

/// Feeds every committed input of the fuzz target `target` (`fuzz/corpus/TARGET/`) through
/// `entry_point`, the function the fuzzer calls, on the stable toolchain: a fixed find stays fixed
/// on machines without nightly or cargo-fuzz (docs/fuzzing.md).
pub fn replay_fuzz_corpus(target: &str, entry_point: fn(&[u8])) {
    let dir = workspace_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    for input in inputs {
        let data = std::fs::read(&input).unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry_point(&data)));
        assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
    }
}
