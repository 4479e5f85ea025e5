//! Child processes of a test: signals, a guard that kills one child when dropped, and a named
//! set of children logging to files.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{env_or, now_ms};

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

/// One child process, killed (and reaped) when the guard is dropped, whether the test passed or
/// not. A stopped child is continued first, so that it can die.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `command`, failing the test with the command line if it cannot start.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        ChildGuard::new(child)
    }

    /// Guards a child spawned elsewhere (e.g. by a benchmark that reports spawn errors itself).
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child, exited: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig`; false if the child is gone.
    pub fn signal(&self, sig: Signal) -> bool {
        self.exited.is_none() && signal(self.pid(), sig)
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `within` for the child to exit by itself; its status, or None if it runs on.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`wait_exit`](Self::wait_exit), but a child still running after `within` fails the
    /// test.
    pub fn expect_exit(&mut self, within: Duration) -> ExitStatus {
        let pid = self.pid();
        self.wait_exit(within).unwrap_or_else(|| panic!("process {pid} still runs after {within:?}"))
    }

    /// SIGTERM, then up to `within` for the child to exit; SIGKILL after that. Its status if it
    /// exited by itself, None if it had to be killed.
    pub fn terminate_within(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal(Signal::Term);
        let exited = self.wait_exit(within);
        if exited.is_none() {
            self.kill();
        }
        exited
    }

    /// SIGKILL: no chance to commit or flush anything.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            self.signal(Signal::Cont);
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Child processes by name, each logging (stdout and stderr) to `<logs>/<name>.log`; all are
/// killed when dropped.
pub struct Children {
    logs: PathBuf,
    running: Vec<(String, ChildGuard)>,
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
        self.running.retain(|(n, _)| n != name);
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
        self.running.push((name.to_owned(), ChildGuard::spawn(&mut command)));
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

    fn child(&mut self, name: &str) -> &mut ChildGuard {
        let found = self.running.iter_mut().find(|(n, _)| n == name);
        &mut found.unwrap_or_else(|| panic!("no child {name}")).1
    }

    fn take(&mut self, name: &str) -> ChildGuard {
        let at = self.running.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("no child {name}"));
        self.running.remove(at).1
    }

    pub fn pid(&self, name: &str) -> u32 {
        let found = self.running.iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("no child {name}")).1.pid()
    }

    /// True if `name` was started and has not exited.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.running.iter_mut().find(|(n, _)| n == name).is_some_and(|(_, child)| child.is_running())
    }

    /// SIGKILL: no chance to commit or flush anything.
    pub fn kill(&mut self, name: &str) {
        self.take(name).kill();
    }

    /// SIGTERM, then up to `within` for the child to exit (SIGKILL after that). True only if it
    /// exited by itself, with status 0.
    pub fn terminate(&mut self, name: &str, within: Duration) -> bool {
        self.take(name).terminate_within(within).is_some_and(|status| status.success())
    }

    /// Waits up to `within` for `name` to exit by itself; its status, or None if it still runs.
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Option<ExitStatus> {
        let status = self.child(name).wait_exit(within);
        if status.is_some() {
            self.take(name);
        }
        status
    }

    /// The last lines of every log in the folder, for failure messages.
    pub fn log_tails(&self) -> String {
        log_tails(&self.logs, 15)
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
