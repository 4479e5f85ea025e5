//! Timing a whole process: wall time and peak resident memory, as a user would see them.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub wall: Duration,
    /// Peak resident set size of the process, in bytes.
    pub max_rss: u64,
}

/// Runs `command` to completion and measures it; a non-zero exit is an error.
pub fn measure(command: &mut Command) -> Result<Measured> {
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data, and wait4 writes it for the child we just spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if reaped < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status})");
    }
    Ok(Measured { wall, max_rss: usage.ru_maxrss as u64 * 1024 })
}

/// The median of some durations (the upper one for an even count).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}
