//! Reading samples out of a Prometheus text exposition (what a `/metrics` endpoint answers).

use prometheus_parse::{Sample, Scrape, Value};

/// The value of one series of `exposition`, or None if it has no such series. `series` is written
/// as in the exposition, labels in any order: `infer_queue_depth`,
/// `iot_ingest_mongo_stalls_total{consumer="db"}`, `infer_batch_size_bucket{le="1"}`.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    let wanted = parse(&format!("{series} 0")).samples.pop()?;
    let scrape = parse(exposition);
    let plain = scrape.samples.iter().find(|s| s.metric == wanted.metric && s.labels == wanted.labels);
    plain.and_then(scalar).or_else(|| bucket(&scrape, &wanted))
}

/// Like [`sample`], failing the test with the exposition when the series is missing.
pub fn expect_sample(exposition: &str, series: &str) -> f64 {
    sample(exposition, series).unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

/// Scrapes `url` and reads one series (see [`sample`]); fails the test if either fails.
pub async fn scrape_sample(url: &str, series: &str) -> f64 {
    let exposition = reqwest::get(url).await.expect("scrape").text().await.expect("metrics text");
    expect_sample(&exposition, series)
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("reading from memory cannot fail")
}

fn scalar(sample: &Sample) -> Option<f64> {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// The parser folds a histogram's `<name>_bucket{le=...}` lines into one sample of `<name>`.
fn bucket(scrape: &Scrape, wanted: &Sample) -> Option<f64> {
    let name = wanted.metric.strip_suffix("_bucket")?;
    let le: f64 = wanted.labels.get("le")?.parse().ok()?;
    let mut labels = (*wanted.labels).clone();
    labels.remove("le");
    let histogram = scrape.samples.iter().find(|s| s.metric == name && *s.labels == labels)?;
    let Value::Histogram(buckets) = &histogram.value else { return None };
    buckets.iter().find(|b| b.less_than == le).map(|b| b.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# TYPE infer_errors_total counter
infer_errors_total{kind=\"timeout\"} 1
infer_errors_total{kind=\"queue_full\"} 2
# TYPE infer_http_requests_total counter
infer_http_requests_total{route=\"/v1/infer\",status=\"503\"} 4
# TYPE infer_queue_depth gauge
infer_queue_depth 3
# TYPE infer_batch_size histogram
infer_batch_size_bucket{le=\"1\"} 5
infer_batch_size_bucket{le=\"+Inf\"} 7
infer_batch_size_sum 11
infer_batch_size_count 7
";

    #[test]
    fn reads_plain_labelled_and_histogram_series() {
        assert_eq!(sample(EXPOSITION, "infer_queue_depth"), Some(3.0));
        assert_eq!(sample(EXPOSITION, "infer_errors_total{kind=\"queue_full\"}"), Some(2.0));
        assert_eq!(sample(EXPOSITION, "infer_http_requests_total{status=\"503\",route=\"/v1/infer\"}"), Some(4.0));
        assert_eq!(sample(EXPOSITION, "infer_batch_size_bucket{le=\"1\"}"), Some(5.0));
        assert_eq!(sample(EXPOSITION, "infer_batch_size_sum"), Some(11.0));
        assert_eq!(sample(EXPOSITION, "infer_batch_size_count"), Some(7.0));
    }

    #[test]
    fn a_missing_series_or_label_value_is_none() {
        assert_eq!(sample(EXPOSITION, "infer_errors_total{kind=\"other\"}"), None);
        assert_eq!(sample(EXPOSITION, "infer_errors_total"), None);
        assert_eq!(sample(EXPOSITION, "nothing_total"), None);
    }
}
