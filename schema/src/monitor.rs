//! The follower's HTTP surface (`dataflow count --follow --serve`): its routes and the Prometheus
//! metrics it exports. The Kubernetes checks and the Grafana dashboard are held to these.

/// The live page.
pub const ROUTE_PAGE: &str = "/";
/// Server-sent events: one `board` event with every view per change.
pub const ROUTE_EVENTS: &str = "/events";
/// Prometheus text.
pub const ROUTE_METRICS: &str = "/metrics";
/// Every view as JSON; `/api/{producers,confusion,classes,windows,drift,alerts}` for one of them.
pub const ROUTE_API_BOARD: &str = "/api/board";

/// The label that names a producer, and its value for the producers summed past `--max-series`.
pub const LABEL_PRODUCER: &str = "producer";
pub const OTHER_PRODUCERS: &str = "_other";

pub const METRIC_PRODUCER_ERRORS: &str = "iot_producer_errors";
pub const METRIC_PRODUCER_JUDGED: &str = "iot_producer_judged";
pub const METRIC_PRODUCER_PENDING: &str = "iot_producer_pending";
pub const METRIC_PRODUCER_ERROR_RATE: &str = "iot_producer_error_rate";
pub const METRIC_PRODUCER_WINDOW_ERROR_RATE: &str = "iot_producer_window_error_rate";
pub const METRIC_PRODUCER_DRIFT_HELLINGER: &str = "iot_producer_drift_hellinger";
pub const METRIC_PRODUCER_DRIFT_P_VALUE: &str = "iot_producer_drift_p_value";
pub const METRIC_PRODUCERS: &str = "iot_producers";
/// 1 per firing alert, labelled with its producer and [`LABEL_RULE`].
pub const METRIC_ALERT_FIRING: &str = "iot_alert_firing";
/// The label that names an alert rule (normalised, as on its events).
pub const LABEL_RULE: &str = "rule";
/// When the served counts were current (seconds since the epoch): how stale the page is.
pub const METRIC_AS_OF: &str = "iot_follower_as_of_seconds";

/// Every metric `/metrics` exports.
pub const METRICS: [&str; 10] = [
    METRIC_PRODUCER_ERRORS,
    METRIC_PRODUCER_JUDGED,
    METRIC_PRODUCER_PENDING,
    METRIC_PRODUCER_ERROR_RATE,
    METRIC_PRODUCER_WINDOW_ERROR_RATE,
    METRIC_PRODUCER_DRIFT_HELLINGER,
    METRIC_PRODUCER_DRIFT_P_VALUE,
    METRIC_PRODUCERS,
    METRIC_ALERT_FIRING,
    METRIC_AS_OF,
];
