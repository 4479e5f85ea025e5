//! The alert event: what `dataflow count --follow --alert RULE` writes to Kafka topic
//! [`TOPIC_ALERTS`] (and POSTs to `--alert-webhook`) each time an alert fires or resolves.
//!
//! Messages are keyed by [`AlertEvent::key`], so that one alert's events stay in one partition,
//! in order. A restarted follower reads the topic back to learn which alerts are firing, which is
//! why it never announces the same firing twice.

use serde::{Deserialize, Serialize};

/// Kafka topic of alert events.
pub const TOPIC_ALERTS: &str = "iot_alerts";

/// Whether an alert started or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// One firing or resolution of one rule for one producer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub state: AlertState,
    /// The rule, as the follower normalised it: `error_rate > 0.3 over 1h min 50 clear 0.24`.
    pub rule: String,
    pub producer: String,
    /// The records the follower reads (as `dataflow` describes them, without a password): one
    /// topic can serve several followers.
    pub source: String,
    /// RFC 3339 UTC: when the follower saw the change (the start of the poll that found it).
    pub at: String,
    /// RFC 3339 UTC: when this alert fired; on a resolution, the firing it ends.
    pub fired_at: String,
    /// RFC 3339 UTC: the start of the producer's latest window of `InferredAt`, when it has one.
    pub window_start: Option<String>,
    /// Judged records and wrong ones over the rule's span (`over`), ending with that window.
    pub judged: Option<u64>,
    pub errors: Option<u64>,
    pub error_rate: Option<f64>,
    /// The error rate above which the rule fires, and at or below which it resolves.
    pub threshold: Option<f64>,
    pub clear_below: Option<f64>,
    /// Why: for example `error rate 0.42 > 0.3 over 60 judged` or `no judged records left`.
    pub reason: String,
}

impl AlertEvent {
    /// The Kafka key: one per (source, rule, producer).
    pub fn key(&self) -> String {
        alert_key(&self.source, &self.rule, &self.producer)
    }
}

/// The Kafka key of an alert's events.
pub fn alert_key(source: &str, rule: &str, producer: &str) -> String {
    serde_json::json!([source, rule, producer]).to_string()
}
