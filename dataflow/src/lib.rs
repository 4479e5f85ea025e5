//! iot-dataflow: per-producer inference error counts on a timely/differential dataflow cluster.
//!
//! [`count::error_counts`] is the whole computation. [`source`] adapters read records into
//! [`load::Reading`]s, which one [`load::Loader`] turns into observations and statistics;
//! [`job`] runs the batch count across the cluster described by [`cluster`], [`follow`] keeps
//! it current, both through the [`worker_zero`] plumbing; [`sink`] writes the result.

pub mod alerts;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod consolidate;
pub mod count;
pub mod follow;
pub mod follow_checkpoint;
pub mod follow_state;
pub mod fuzzing;
pub mod job;
pub mod load;
pub mod progress;
pub mod record;
pub mod report;
pub mod serve;
pub mod sink;
pub mod source;
pub mod stamp;
pub mod stats;
pub mod views;
pub mod worker_zero;
