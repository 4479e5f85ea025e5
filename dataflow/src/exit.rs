//! The exit codes of `dataflow`, one definition for the binary, its tests and the docs.

/// Bad input, a bad flag or host file, an unreachable or stalled MongoDB: nothing was written.
pub const FAILED: u8 = 2;
/// A cluster peer did not connect within `--connect-timeout`.
pub const PEER_TIMEOUT: i32 = 3;
/// A cluster peer was lost after the cluster had connected: every process must be restarted.
pub const PEER_LOST: i32 = 4;
