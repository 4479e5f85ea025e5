//! `--alert-webhook URL`: each event POSTed as JSON, in order, each retried with a growing delay
//! until it is accepted or its attempts run out. Delivery never holds up the follower; the
//! Kafka topic stays the record of what was announced.

use std::time::Duration;

use iot_schema::alert::AlertEvent;
use tokio::sync::mpsc;

/// The delay before the first retry; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping follower waits for queued deliveries.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct WebhookOptions {
    pub url: reqwest::Url,
    /// Tries per event, the first included.
    pub attempts: u32,
}

/// The URL may hold a token: only its scheme and host are ever shown.
impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookOptions {{ url: {}, attempts: {} }}", shown(&self.url), self.attempts)
    }
}

/// `https://hooks.example.com/…`: where events go, without path, query or credentials.
pub fn shown(url: &reqwest::Url) -> String {
    format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or(""))
}

/// `http(s)://…` only.
pub fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url),
        _ => Err("the webhook must be an http:// or https:// URL with a host".to_owned()),
    }
}

pub struct Webhook {
    queue: mpsc::UnboundedSender<String>,
    delivering: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub fn start(options: &WebhookOptions, runtime: tokio::runtime::Handle) -> Webhook {
        let (queue, events) = mpsc::unbounded_channel();
        let delivering = runtime.spawn(deliver_in_order(options.clone(), events));
        Webhook { queue, delivering }
    }

    pub fn deliver(&self, event: &AlertEvent) {
        match serde_json::to_string(event) {
            Ok(body) => {
                let _ = self.queue.send(body);
            }
            Err(err) => tracing::warn!("alert event not serialised for the webhook: {err}"),
        }
    }

    /// Waits a little for the queue to drain.
    pub fn finish(self, runtime: &tokio::runtime::Handle) {
        drop(self.queue);
        let delivering = self.delivering;
        if runtime.block_on(tokio::time::timeout(FINISH_TIMEOUT, delivering)).is_err() {
            tracing::warn!("stopping with alert webhook deliveries still queued");
        }
    }
}

async fn deliver_in_order(options: WebhookOptions, mut events: mpsc::UnboundedReceiver<String>) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("no alert webhook client: {err}");
            return;
        }
    };
    let target = shown(&options.url);
    while let Some(body) = events.recv().await {
        let mut delay = FIRST_DELAY;
        for attempt in 1..=options.attempts.max(1) {
            let sent = client
                .post(options.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            // The error's text may quote the URL: only its kind is logged.
            let failure = match sent {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("answered {}", response.status())),
                Err(err) if err.is_timeout() => Some("timed out".to_owned()),
                Err(err) if err.is_connect() => Some("could not connect".to_owned()),
                Err(_) => Some("request failed".to_owned()),
            };
            let Some(failure) = failure else { break };
            if attempt == options.attempts.max(1) {
                tracing::warn!(webhook = %target, attempt, "alert webhook {failure}; giving this event up");
            } else {
                tracing::warn!(webhook = %target, attempt, "alert webhook {failure}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_and_shown_without_secrets() {
        let url = parse_url("https://user:pw@hooks.example.com/T0KEN?key=secret").unwrap();
        assert_eq!(shown(&url), "https://hooks.example.com/…");
        let options = WebhookOptions { url, attempts: 3 };
        assert!(!format!("{options:?}").contains("T0KEN"));
        for bad in ["ftp://x/", "hooks.example.com", "http://", "mailto:a@b"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
