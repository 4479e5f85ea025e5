//! The exit codes of every iot-dataflow binary (`producer`, `db-consumer`, `infer-consumer`,
//! `infer-service`, `dataflow`, the benchmarks): one convention, so scripts, Kubernetes probes
//! and tests can tell a bad invocation from a failure. The README lists them.

/// The run failed: bad input, an unreachable or stalled service, an I/O error. What was
/// committed before the failure stays committed; nothing half-written is left behind.
pub const FAILED: u8 = 1;
/// Bad flags or arguments (clap's own code for a usage error, so every binary agrees with it).
pub const USAGE: u8 = 2;
/// `dataflow` cluster: a peer did not connect within `--connect-timeout`.
pub const PEER_TIMEOUT: u8 = 3;
/// `dataflow` cluster: a peer was lost after the cluster had connected; restart every process.
pub const PEER_LOST: u8 = 4;
