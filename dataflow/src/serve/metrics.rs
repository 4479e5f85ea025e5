//! `/metrics`: the board in Prometheus text format. Label cardinality is bounded: the
//! `max_series` producers with the most errors get their own series, and the rest are summed
//! under `producer="_other"`, so a fleet of any size costs a scraper at most that many.

use iot_schema::monitor::*;
use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

use super::board::{Board, ProducerRow};

/// The label under which the producers past `max_series` are summed.
pub const OTHER: &str = OTHER_PRODUCERS;

pub fn render(board: &Board, max_series: usize) -> String {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| {
        let gauge = GaugeVec::new(Opts::new(name, help), &[LABEL_PRODUCER]).expect("a valid metric name");
        registry.register(Box::new(gauge.clone())).expect("each metric is registered once");
        gauge
    };
    let errors = gauge(METRIC_PRODUCER_ERRORS, "Judged records the model labelled wrong.");
    let judged = gauge(METRIC_PRODUCER_JUDGED, "Records with a ground truth and an inferred label.");
    let pending = gauge(METRIC_PRODUCER_PENDING, "Records waiting for an inference.");
    let rate = gauge(METRIC_PRODUCER_ERROR_RATE, "Errors over judged records (absent while none is judged).");
    let window_rate = gauge(METRIC_PRODUCER_WINDOW_ERROR_RATE, "The error rate of the producer's latest window.");
    let hellinger =
        gauge(METRIC_PRODUCER_DRIFT_HELLINGER, "Hellinger distance of the latest window's labels from the reference.");
    let p_value =
        gauge(METRIC_PRODUCER_DRIFT_P_VALUE, "Chi-square p-value of the latest window's labels against the reference.");

    let (shown, rest) = by_errors(&board.producers, max_series);
    for row in shown {
        let producer = [row.producer.as_str()];
        errors.with_label_values(&producer).set(row.errors as f64);
        judged.with_label_values(&producer).set(row.judged as f64);
        pending.with_label_values(&producer).set(row.pending as f64);
        if let Some(value) = row.error_rate {
            rate.with_label_values(&producer).set(value);
        }
        if let Some(value) = row.latest_window_error_rate {
            window_rate.with_label_values(&producer).set(value);
        }
        if let Some(drift) = board.drift.iter().find(|d| d.producer == row.producer) {
            if let Some(value) = drift.hellinger {
                hellinger.with_label_values(&producer).set(value);
            }
            if let Some(value) = drift.p_value {
                p_value.with_label_values(&producer).set(value);
            }
        }
    }
    if !rest.is_empty() {
        let sum = |value: fn(&ProducerRow) -> u64| rest.iter().map(|row| value(row)).sum::<u64>();
        let (other_errors, other_judged) = (sum(|r| r.errors), sum(|r| r.judged));
        errors.with_label_values(&[OTHER]).set(other_errors as f64);
        judged.with_label_values(&[OTHER]).set(other_judged as f64);
        pending.with_label_values(&[OTHER]).set(sum(|r| r.pending) as f64);
        if other_judged > 0 {
            rate.with_label_values(&[OTHER]).set(other_errors as f64 / other_judged as f64);
        }
    }
    // Firing alerts are few (and bounded by rules times producers): each has its own series.
    let firing = GaugeVec::new(
        Opts::new(METRIC_ALERT_FIRING, "1 while an --alert rule fires for a producer."),
        &[LABEL_PRODUCER, LABEL_RULE],
    )
    .expect("a valid metric name");
    for alert in &board.alerts {
        firing.with_label_values(&[alert.producer.as_str(), alert.rule.as_str()]).set(1.0);
    }
    registry.register(Box::new(firing)).expect("registered once");
    let producers = prometheus::Gauge::new(METRIC_PRODUCERS, "Producers with at least one record.").expect("valid");
    producers.set(board.producers.len() as f64);
    registry.register(Box::new(producers)).expect("registered once");
    if let Some(ms) = board.as_of_ms {
        let as_of = prometheus::Gauge::new(METRIC_AS_OF, "When the counts were current, in seconds since the epoch.")
            .expect("valid");
        as_of.set(ms as f64 / 1000.0);
        registry.register(Box::new(as_of)).expect("registered once");
    }

    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text).expect("text encoding does not fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}

/// The `max_series` producers with the most errors (then by name), and the others.
fn by_errors(producers: &[ProducerRow], max_series: usize) -> (Vec<&ProducerRow>, Vec<&ProducerRow>) {
    let mut sorted: Vec<&ProducerRow> = producers.iter().collect();
    sorted.sort_by(|a, b| b.errors.cmp(&a.errors).then_with(|| a.producer.cmp(&b.producer)));
    let rest = sorted.split_off(max_series.min(sorted.len()));
    (sorted, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::FiringAlert;

    fn row(producer: &str, errors: u64, judged: u64, pending: u64) -> ProducerRow {
        ProducerRow {
            producer: producer.into(),
            judged,
            errors,
            pending,
            error_rate: (judged > 0).then(|| errors as f64 / judged as f64),
            latest_window_error_rate: None,
            drifted: None,
            alerting: false,
        }
    }

    #[test]
    fn the_worst_producers_get_series_and_the_rest_are_summed() {
        let board = Board {
            producers: vec![row("a \"x\"", 1, 10, 0), row("b", 5, 10, 1), row("c", 2, 4, 2), row("idle", 0, 0, 3)],
            alerts: vec![FiringAlert {
                rule: "error_rate > 0.3 min 30 clear 0.24".into(),
                producer: "b".into(),
                fired_at: "2026-11-30T12:00:00Z".into(),
            }],
            ..Board::default()
        };
        let text = render(&board, 2);
        let sample = |series: &str| iot_bench_free_sample(&text, series);
        assert_eq!(sample(r#"iot_producer_errors{producer="b"}"#), Some(5.0));
        assert_eq!(sample(r#"iot_producer_errors{producer="c"}"#), Some(2.0));
        assert_eq!(sample(r#"iot_producer_errors{producer="_other"}"#), Some(1.0));
        assert_eq!(sample(r#"iot_producer_judged{producer="_other"}"#), Some(10.0));
        assert_eq!(sample(r#"iot_producer_pending{producer="_other"}"#), Some(3.0));
        assert_eq!(sample(r#"iot_producer_error_rate{producer="_other"}"#), Some(0.1));
        assert_eq!(sample(r#"iot_producer_error_rate{producer="b"}"#), Some(0.5));
        assert_eq!(sample("iot_producers"), Some(4.0));
        assert_eq!(sample(r#"iot_alert_firing{producer="b",rule="error_rate > 0.3 min 30 clear 0.24"}"#), Some(1.0));
        assert!(!text.contains(r#"producer="a"#), "{text}");
        let all = render(&board, 10);
        assert_eq!(iot_bench_free_sample(&all, r#"iot_producer_errors{producer="a \"x\""}"#), Some(1.0), "{all}");
        assert!(!all.contains(OTHER));
        assert!(!all.contains(r#"iot_producer_error_rate{producer="idle"}"#), "no rate without judged records");
    }

    /// The value of one exact series line.
    fn iot_bench_free_sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}
