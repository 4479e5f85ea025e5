//! iot-dataflow: per-producer inference error counts on a timely/differential dataflow cluster.
//!
//! [`count::error_counts`] is the whole computation; [`source`] adapters feed it, [`sink`]
//! writes its result, [`job`] runs it across the cluster described by [`cluster`].

pub mod cli;
pub mod cluster;
pub mod consolidate;
pub mod count;
pub mod exit;
pub mod follow;
pub mod job;
pub mod progress;
pub mod record;
pub mod sink;
pub mod source;
pub mod stats;
