//! The timely cluster flags, as in timely's own examples: `-w` workers per process, `-n`
//! processes, `-p` this process's index, `-h` a host file of `host:port` lines.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use iot_schema::exit;
use timely::{CommunicationConfig, WorkerConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Worker threads in this process [default: every core this process may use, within a
    /// container's CPU limit too].
    #[arg(short = 'w', long = "workers", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: u16,
    /// This process's index, 0 to processes-1; process 0 writes the output.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: u16,
    /// Host file: one `host:port` line per process, in process order (needed with -n > 1).
    #[arg(short = 'h', long = "hostfile", value_name = "HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// Give up if the cluster has not connected after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub connect_timeout: u64,
}

impl ClusterArgs {
    pub fn single(workers: u16) -> Self {
        ClusterArgs { workers: Some(workers), processes: 1, process: 0, hostfile: None, connect_timeout: 60 }
    }

    /// Worker threads in this process: `-w`, else as many as the cores this process may use.
    /// The standard library's count honours CPU affinity and cgroup quotas, so a pod limited to
    /// two CPUs gets two workers on a 64-core node rather than 64 threads throttled to two.
    pub fn threads(&self) -> usize {
        self.workers.map_or_else(available_cores, usize::from)
    }

    /// Checks the flags and builds timely's configuration.
    pub fn timely_config(&self) -> Result<timely::Config> {
        ensure!(
            self.process < self.processes,
            "-p {} is not a process index of a {}-process cluster (use 0 to {})",
            self.process,
            self.processes,
            self.processes - 1
        );
        let threads = self.threads();
        let communication = if self.processes > 1 {
            let Some(hostfile) = &self.hostfile else {
                bail!("-n {} needs a host file (-h FILE) with one host:port line per process", self.processes);
            };
            let mut addresses = read_hostfile(hostfile)?;
            ensure!(
                addresses.len() >= self.processes as usize,
                "host file {} lists {} address(es) but -n is {}; add one host:port line per process",
                hostfile.display(),
                addresses.len(),
                self.processes
            );
            addresses.truncate(self.processes as usize);
            CommunicationConfig::Cluster {
                threads,
                process: self.process as usize,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if threads > 1 {
            CommunicationConfig::Process(threads)
        } else {
            CommunicationConfig::Thread
        };
        Ok(timely::Config { communication, worker: WorkerConfig::default() })
    }

    /// Timely retries connections forever; this makes an unreachable peer an error instead.
    /// Call `connected()` on the result once `timely::execute` has returned.
    pub fn connect_watchdog(&self) -> ConnectWatchdog {
        let connected = Arc::new(AtomicBool::new(false));
        if self.processes > 1 {
            let flag = connected.clone();
            let timeout = Duration::from_secs(self.connect_timeout);
            let process = self.process;
            std::thread::spawn(move || {
                std::thread::sleep(timeout);
                if !flag.load(Ordering::SeqCst) {
                    eprintln!(
                        "error: process {process} could not connect to every process of the cluster within {}s; \
                         check that all processes are started with the same -n and host file, \
                         and that the addresses in the host file are reachable",
                        timeout.as_secs()
                    );
                    std::process::exit(exit::PEER_TIMEOUT.into());
                }
            });
        }
        ConnectWatchdog { connected }
    }
}

/// The cores this process may use; one when the system cannot tell.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

impl ClusterArgs {
    /// Runs `work` on every worker of this process, once the whole cluster has connected, and
    /// returns each worker's result; any worker's error or panic is the run's error.
    pub fn execute<T, F>(&self, work: F) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(&mut timely::worker::Worker) -> Result<T, String> + Send + Sync + 'static,
    {
        let config = self.timely_config()?;
        let watchdog = self.connect_watchdog();
        exit_when_a_peer_is_lost_or_a_worker_fails(self.process);
        let guards =
            timely::execute(config, work).map_err(|err| anyhow::anyhow!("cannot start the timely cluster: {err}"))?;
        watchdog.connected();
        if self.processes > 1 {
            tracing::info!(
                process = self.process,
                processes = self.processes,
                "connected to every process of the cluster"
            );
        }
        guards
            .join()
            .into_iter()
            .map(|result| match result {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => bail!(err),
                Err(panic) => bail!("a worker failed: {panic}"),
            })
            .collect()
    }
}

pub struct ConnectWatchdog {
    connected: Arc<AtomicBool>,
}

impl ConnectWatchdog {
    pub fn connected(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }
}

/// Timely's network threads panic when a connection to a peer breaks: the panic message starts
/// with "timely communication error" (which timely keeps stable so that callers can recognise
/// it), and the panic then poisons the queues of every worker. Timely offers no error value to
/// handle instead, so the first such panic is turned into one clear message and exit code
/// [`exit::PEER_LOST`], before any panic output: a cluster that lost a member cannot finish its
/// rounds, and only a restart of every process (which reloads) gives an exact count again.
///
/// A panic in a worker (a bug) exits the process too, after the panic's own output: the other
/// workers would otherwise wait for the failed one's progress for ever.
fn exit_when_a_peer_is_lost_or_a_worker_fails(process: u16) {
    static INSTALL: Once = Once::new();
    static EXITING: AtomicBool = AtomicBool::new(false);
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if !is_lost_peer(message) {
                previous(info);
                // The other workers would wait for a panicked worker's progress for ever: a bug
                // must stop the process, not wedge it.
                let thread = std::thread::current();
                if let Some(worker) = thread.name().and_then(|name| name.strip_prefix("timely:work-")) {
                    if !EXITING.swap(true, Ordering::SeqCst) {
                        eprintln!("error: worker {worker} of process {process} failed (above); stopping");
                        std::process::exit(exit::FAILED.into());
                    }
                }
                return;
            }
            if EXITING.swap(true, Ordering::SeqCst) {
                // Another thread is already exiting; its message is the one to read.
                loop {
                    std::thread::park();
                }
            }
            let thread = std::thread::current();
            eprintln!("error: {}", lost_peer_message(process, thread.name(), message));
            std::process::exit(exit::PEER_LOST.into());
        }));
    });
}

fn is_lost_peer(panic_message: &str) -> bool {
    panic_message.starts_with("timely communication error")
        || ["MergeQueue poisoned", "Send thread panic", "Recv thread panic"].iter().any(|m| panic_message.contains(m))
}

/// Names the peer when the panicking thread is one of timely's per-peer network threads
/// (`timely:recv-P`, `timely:send-P`).
fn lost_peer_message(process: u16, thread: Option<&str>, panic_message: &str) -> String {
    let peer = thread
        .and_then(|name| name.strip_prefix("timely:recv-").or_else(|| name.strip_prefix("timely:send-")))
        .map_or_else(|| "a cluster peer".to_owned(), |index| format!("process {index}"));
    let cause = panic_message.strip_prefix("timely communication error: ").unwrap_or(panic_message);
    format!(
        "cluster peer lost: process {process} lost its connection to {peer} ({cause}); the cluster cannot go on \
         without it: restart every process"
    )
}

/// Reads `host:port` lines; blank lines and `#` comments are ignored.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read host file {}", path.display()))?;
    let mut addresses = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let valid = line
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        ensure!(
            valid,
            "host file {} line {}: {:?} is not host:port (for example 10.0.0.5:2101)",
            path.display(),
            number + 1,
            line
        );
        addresses.push(line.to_owned());
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn hostfile(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn args(processes: u16, process: u16, hostfile: Option<&Path>) -> ClusterArgs {
        ClusterArgs { processes, process, hostfile: hostfile.map(Path::to_path_buf), ..ClusterArgs::single(2) }
    }

    #[test]
    fn host_file_lines_comments_and_errors() {
        let good = hostfile("# cluster\nlocalhost:2101\n\n10.0.0.2:2101\n[::1]:2102\n");
        assert_eq!(read_hostfile(good.path()).unwrap(), ["localhost:2101", "10.0.0.2:2101", "[::1]:2102"]);
        for bad in ["localhost\n", "host:notaport\n", ":80\n", "h:0\n"] {
            let err = read_hostfile(hostfile(bad).path()).unwrap_err();
            assert!(err.to_string().contains("is not host:port"), "{bad:?}: {err}");
        }
        let err = read_hostfile(Path::new("/nonexistent/hosts.txt")).unwrap_err();
        assert!(err.to_string().contains("cannot read host file"), "{err}");
    }

    #[test]
    fn timely_network_panics_are_recognised_and_name_the_peer() {
        assert!(is_lost_peer("timely communication error: reading data: socket closed"));
        assert!(is_lost_peer("MergeQueue poisoned."));
        assert!(!is_lost_peer("index out of bounds"));
        let message =
            lost_peer_message(0, Some("timely:recv-2"), "timely communication error: reading data: socket closed");
        assert!(message.starts_with(
            "cluster peer lost: process 0 lost its connection to process 2 (reading data: socket closed)"
        ));
        assert!(message.ends_with("restart every process"), "{message}");
        assert!(lost_peer_message(1, Some("timely:work-0"), "MergeQueue poisoned.").contains("to a cluster peer"));
    }

    #[test]
    fn flags_are_checked_before_anything_starts() {
        let two = hostfile("127.0.0.1:1\n127.0.0.1:2\n");
        assert!(args(2, 1, Some(two.path())).timely_config().is_ok());
        let err = args(2, 2, Some(two.path())).timely_config().unwrap_err();
        assert!(err.to_string().contains("-p 2 is not a process index"), "{err}");
        let err = args(2, 0, None).timely_config().unwrap_err();
        assert!(err.to_string().contains("needs a host file"), "{err}");
        let err = args(3, 0, Some(two.path())).timely_config().unwrap_err();
        assert!(err.to_string().contains("lists 2 address(es) but -n is 3"), "{err}");
    }
}
