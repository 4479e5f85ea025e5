//! Alerts (`--alert RULE`): which rules fire for which producers, decided with hysteresis from the
//! alert evidence view ([`crate::views::alerts`]) after each round, and announced as
//! [`AlertEvent`]s on Kafka (and to a webhook).
//!
//! [`AlertBook`] is the pure part: the alerts that are firing, and the events that the current
//! evidence calls for. [`Alerter`] is the adapter: it restores the book from the topic itself at
//! start (so a restarted follower never announces a firing twice), sends each event before it
//! counts it as announced, and hands it to the webhook.

mod kafka;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use iot_schema::alert::{AlertEvent, AlertState};
use serde::Serialize;

use crate::sink::rfc3339;
use crate::views::alerts::{Evidence, Level, Rule};
use crate::views::sink::timestamp;

pub use kafka::KafkaOptions;

/// Per `(rule index, producer)`, as the evidence view gives it.
pub type EvidenceTable = BTreeMap<(usize, String), Evidence>;

/// The alerts that are firing: `(rule, producer) -> when it fired`, rules by their normalised text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertBook {
    firing: BTreeMap<(String, String), String>,
}

impl AlertBook {
    /// The book that a sequence of events (oldest first) leaves behind.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a AlertEvent>) -> AlertBook {
        let mut book = AlertBook::default();
        events.into_iter().for_each(|event| book.record(event));
        book
    }

    /// Counts an event as announced.
    pub fn record(&mut self, event: &AlertEvent) {
        let key = (event.rule.clone(), event.producer.clone());
        match event.state {
            AlertState::Firing => self.firing.insert(key, event.fired_at.clone()),
            AlertState::Resolved => self.firing.remove(&key),
        };
    }

    pub fn is_firing(&self, rule: &str, producer: &str) -> bool {
        self.firing.contains_key(&(rule.to_owned(), producer.to_owned()))
    }

    /// `(rule, producer, fired_at)` of every firing alert.
    pub fn firing(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.firing.iter().map(|((rule, producer), at)| (rule.as_str(), producer.as_str(), at.as_str()))
    }

    /// The events the evidence calls for: a rule above its threshold fires unless it is firing;
    /// a firing one resolves at or below its clear level, or when its producer has no judged
    /// record left. Between the two, or with too little evidence, nothing changes. Alerts of
    /// rules not in `rules` (a follower restarted with other rules) are left as they are.
    pub fn changes(&self, rules: &[Rule], evidence: &EvidenceTable, source: &str, at: SystemTime) -> Vec<AlertEvent> {
        let at = rfc3339(at);
        let names: Vec<String> = rules.iter().map(Rule::to_string).collect();
        let mut events = Vec::new();
        for ((index, producer), found) in evidence {
            let (Some(rule), Some(name)) = (rules.get(*index), names.get(*index)) else { continue };
            let Some(judgement) = rule.judge(found) else { continue };
            let fired_at = self.firing.get(&(name.clone(), producer.clone()));
            let state = match (judgement.level, fired_at) {
                (Level::Above, None) => AlertState::Firing,
                (Level::Clear, Some(_)) => AlertState::Resolved,
                _ => continue,
            };
            let reason = match state {
                AlertState::Firing => format!(
                    "error rate {} > {} over {} judged",
                    shown(judgement.error_rate),
                    shown(judgement.threshold),
                    found.judged
                ),
                AlertState::Resolved => format!(
                    "error rate {} <= {} over {} judged",
                    shown(judgement.error_rate),
                    shown(judgement.clear_below),
                    found.judged
                ),
            };
            events.push(AlertEvent {
                state,
                rule: name.clone(),
                producer: producer.clone(),
                source: source.to_owned(),
                fired_at: fired_at.cloned().unwrap_or_else(|| at.clone()),
                at: at.clone(),
                window_start: Some(timestamp(found.window_start)),
                judged: Some(found.judged),
                errors: Some(found.errors),
                error_rate: Some(judgement.error_rate),
                threshold: Some(judgement.threshold),
                clear_below: Some(judgement.clear_below),
                reason,
            });
        }
        let judged_producers: std::collections::BTreeSet<(&str, &str)> = evidence
            .keys()
            .filter_map(|(index, producer)| Some((names.get(*index)?.as_str(), producer.as_str())))
            .collect();
        for ((rule, producer), fired_at) in &self.firing {
            if names.contains(rule) && !judged_producers.contains(&(rule.as_str(), producer.as_str())) {
                events.push(AlertEvent {
                    state: AlertState::Resolved,
                    rule: rule.clone(),
                    producer: producer.clone(),
                    source: source.to_owned(),
                    at: at.clone(),
                    fired_at: fired_at.clone(),
                    window_start: None,
                    judged: None,
                    errors: None,
                    error_rate: None,
                    threshold: None,
                    clear_below: None,
                    reason: "no judged record of the producer is left in any window".to_owned(),
                });
            }
        }
        events
    }
}

/// A rate for a reason line: four decimals are enough to read, and stable to test.
fn shown(rate: f64) -> String {
    let text = format!("{rate:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A firing alert, as the board and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FiringAlert {
    pub rule: String,
    pub producer: String,
    /// RFC 3339 UTC.
    pub fired_at: String,
}

/// What `--alert` asks for, checked.
#[derive(Clone, Debug)]
pub struct AlertOptions {
    pub rules: Arc<[Rule]>,
    pub kafka: KafkaOptions,
    /// Where to POST each event as well, if anywhere.
    pub webhook: Option<webhook::WebhookOptions>,
}

pub use webhook::WebhookOptions;

/// How long a round waits for Kafka to acknowledge its alert events before the follower moves
/// on (they stay in flight): long enough for a broker that answers, short enough that one that
/// does not never holds up the counts.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// After a failed send, the first wait before the alerts are judged and sent again; it doubles
/// up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Worker 0's alerting: the book, kept equal to what the topic says was announced.
pub struct Alerter {
    rules: Arc<[Rule]>,
    source: String,
    book: AlertBook,
    publisher: kafka::Publisher,
    webhook: Option<webhook::Webhook>,
    /// Events sent and not yet acknowledged (or refused).
    in_flight: Option<InFlight>,
    /// The alerts must be judged again even without a change: an update found events in flight,
    /// or a send failed.
    stale: bool,
    /// After a failed send: not before then, and how long the next wait is.
    retry_at: Option<Instant>,
    retry_delay: Duration,
}

struct InFlight {
    events: Vec<AlertEvent>,
    sends: tokio::task::JoinHandle<Vec<Result<()>>>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter").field("rules", &self.rules).field("book", &self.book).finish_non_exhaustive()
    }
}

impl Alerter {
    /// Connects to Kafka and reads back which of this source's alerts are firing.
    pub fn start(options: &AlertOptions, source: String) -> Result<Alerter> {
        let publisher = kafka::Publisher::connect(&options.kafka)?;
        let announced = publisher.read_back(&source)?;
        let book = AlertBook::replay(&announced);
        let firing = book.firing.len();
        tracing::info!(topic = %options.kafka.topic, events = announced.len(), firing, "alert state read back");
        let webhook = options.webhook.as_ref().map(|options| webhook::Webhook::start(options, publisher.runtime()));
        Ok(Alerter {
            rules: options.rules.clone(),
            source,
            book,
            publisher,
            webhook,
            in_flight: None,
            stale: false,
            retry_at: None,
            retry_delay: FIRST_RETRY_DELAY,
        })
    }

    /// Takes in the events Kafka has answered for, without waiting. Returns whether any alert
    /// changed, and whether the alerts are due to be judged again, changes or not.
    pub fn tick(&mut self) -> (bool, bool) {
        let changed = self.settle(Duration::ZERO);
        let due = self.stale && self.in_flight.is_none() && self.retry_at.is_none_or(|at| Instant::now() >= at);
        (changed, due)
    }

    /// Announces what the evidence calls for. The events are sent to Kafka together, and each
    /// counts as announced (is logged, recorded and handed to the webhook) only once Kafka has it;
    /// the round waits up to [`ACK_WAIT`] for that. Events Kafka refuses are worked out again
    /// later, with a growing delay. Returns whether any alert changed.
    pub fn update(&mut self, evidence: &EvidenceTable, at: SystemTime) -> bool {
        let mut changed = self.settle(Duration::ZERO);
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        if self.in_flight.is_some() || waiting {
            self.stale = true;
            return changed;
        }
        self.stale = false;
        let events = self.book.changes(&self.rules, evidence, &self.source, at);
        if !events.is_empty() {
            let sends = self.publisher.send_all(events.clone());
            self.in_flight = Some(InFlight { events, sends });
            changed |= self.settle(ACK_WAIT);
        }
        changed
    }

    /// Records the events in flight once Kafka answered for all of them (waiting up to `wait`).
    fn settle(&mut self, wait: Duration) -> bool {
        let Some(in_flight) = self.in_flight.as_mut() else { return false };
        let runtime = self.publisher.runtime();
        let sends = &mut in_flight.sends;
        let outcomes = match runtime.block_on(async { tokio::time::timeout(wait, sends).await }) {
            Err(_still_in_flight) => return false,
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(panicked)) => {
                in_flight.events.iter().map(|_| Err(anyhow::anyhow!("the send task failed: {panicked}"))).collect()
            }
        };
        let events = self.in_flight.take().map(|in_flight| in_flight.events).unwrap_or_default();
        let mut changed = false;
        let mut failed = false;
        // Each event is a different alert's, so those sent stand whatever became of the others.
        for (event, outcome) in events.iter().zip(outcomes) {
            if let Err(err) = outcome {
                tracing::warn!(rule = %event.rule, producer = %event.producer, "alert event not sent, trying again in {:?}: {err:#}", self.retry_delay);
                failed = true;
                continue;
            }
            match event.state {
                AlertState::Firing => {
                    tracing::warn!(rule = %event.rule, producer = %event.producer, "alert firing: {}", event.reason)
                }
                AlertState::Resolved => {
                    tracing::info!(rule = %event.rule, producer = %event.producer, "alert resolved: {}", event.reason)
                }
            }
            self.book.record(event);
            if let Some(webhook) = &self.webhook {
                webhook.deliver(event);
            }
            changed = true;
        }
        if failed {
            self.stale = true;
            self.retry_at = Some(Instant::now() + self.retry_delay);
            self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
        } else {
            (self.retry_at, self.retry_delay) = (None, FIRST_RETRY_DELAY);
        }
        changed
    }

    /// The alerts of the rules given that are firing (an alert of a rule no longer given stays
    /// as the topic says, unshown).
    pub fn firing(&self) -> Vec<FiringAlert> {
        let names: Vec<String> = self.rules.iter().map(Rule::to_string).collect();
        self.book
            .firing()
            .filter(|(rule, _, _)| names.iter().any(|name| name == rule))
            .map(|(rule, producer, fired_at)| FiringAlert {
                rule: rule.to_owned(),
                producer: producer.to_owned(),
                fired_at: fired_at.to_owned(),
            })
            .collect()
    }

    /// Gives Kafka and the webhook a few seconds to take what is in flight.
    pub fn finish(&mut self) {
        self.settle(Duration::from_secs(5));
        if let Some(webhook) = self.webhook.take() {
            webhook.finish(&self.publisher.runtime());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn rule(text: &str) -> Rule {
        text.parse().unwrap()
    }

    fn evidence(producer: &str, judged: u64, errors: u64) -> ((usize, String), Evidence) {
        ((0, producer.to_owned()), Evidence { window_start: 5 * HOUR, judged, errors, reference: None })
    }

    /// Applies each round's evidence to the book and returns the events of each round as
    /// `(state, producer)`.
    fn run(
        rules: &[Rule],
        rounds: &[Vec<((usize, String), Evidence)>],
        book: &mut AlertBook,
    ) -> Vec<Vec<(AlertState, String)>> {
        rounds
            .iter()
            .map(|round| {
                let table: EvidenceTable = round.iter().cloned().collect();
                let events = book.changes(rules, &table, "src", SystemTime::UNIX_EPOCH);
                events.iter().for_each(|event| book.record(event));
                events.into_iter().map(|event| (event.state, event.producer)).collect()
            })
            .collect()
    }

    #[test]
    fn alerts_fire_once_hold_between_the_levels_and_resolve_below_the_clear_level() {
        let rules = [rule("error_rate > 0.3 min 50 clear 0.2")];
        let rounds = vec![
            vec![evidence("a", 100, 35), evidence("b", 100, 10)],
            vec![evidence("a", 100, 40), evidence("b", 40, 30)], // b: too few judged to say
            vec![evidence("a", 100, 25), evidence("b", 100, 31)], // a: between; b fires
            vec![evidence("a", 100, 31), evidence("b", 100, 31)], // a: still firing, no second event
            vec![evidence("a", 100, 20), evidence("b", 100, 29)], // a: clear (0.2 <= 0.2)
            vec![evidence("a", 100, 29), evidence("b", 100, 21)], // a: between, stays resolved
            vec![evidence("a", 100, 31)],                        // b: no judged record left
        ];
        let mut book = AlertBook::default();
        let fired = |p: &str| (AlertState::Firing, p.to_owned());
        let resolved = |p: &str| (AlertState::Resolved, p.to_owned());
        assert_eq!(
            run(&rules, &rounds, &mut book),
            [
                vec![fired("a")],
                vec![],
                vec![fired("b")],
                vec![],
                vec![resolved("a")],
                vec![],
                vec![fired("a"), resolved("b")]
            ]
        );
        assert_eq!(book.firing().map(|(_, p, _)| p).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_book_replayed_from_its_events_announces_nothing_new() {
        let rules = [rule("error_rate > 0.3")];
        let mut book = AlertBook::default();
        let round = vec![evidence("a", 100, 50), evidence("b", 100, 50), evidence("c", 100, 1)];
        let table: EvidenceTable = round.into_iter().collect();
        let mut events = book.changes(&rules, &table, "src", SystemTime::UNIX_EPOCH);
        events.iter().for_each(|event| book.record(event));
        assert_eq!(events.len(), 2);
        // b is corrected; its resolution is announced too.
        let corrected: EvidenceTable =
            [evidence("a", 100, 50), evidence("b", 100, 5), evidence("c", 100, 1)].into_iter().collect();
        let resolution = book.changes(&rules, &corrected, "src", SystemTime::UNIX_EPOCH);
        events.extend(resolution);
        // A restart: the book is what the topic says.
        let restarted = AlertBook::replay(&events);
        assert!(restarted.is_firing("error_rate > 0.3 min 30 clear 0.24", "a"));
        assert!(!restarted.is_firing("error_rate > 0.3 min 30 clear 0.24", "b"));
        assert!(restarted.changes(&rules, &corrected, "src", SystemTime::UNIX_EPOCH).is_empty());
        // Another rule list leaves the old rule's alert alone.
        let other = [rule("error_rate > 0.9")];
        assert!(restarted.changes(&other, &EvidenceTable::new(), "src", SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn events_say_why() {
        let rules = [rule("error_rate > 0.3 over 1h min 50")];
        let table: EvidenceTable = [evidence("cam \"7\"", 60, 25)].into_iter().collect();
        let events = AlertBook::default().changes(&rules, &table, "src", SystemTime::UNIX_EPOCH);
        let event = &events[0];
        assert_eq!(event.rule, "error_rate > 0.3 over 1h min 50 clear 0.24");
        assert_eq!(event.reason, "error rate 0.4167 > 0.3 over 60 judged");
        assert_eq!((event.judged, event.errors, event.threshold), (Some(60), Some(25), Some(0.3)));
        assert_eq!(event.window_start.as_deref(), Some("1970-01-01T05:00:00Z"));
        assert_eq!((event.at.as_str(), event.fired_at.as_str()), ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"));
        let json = serde_json::to_value(event).unwrap();
        assert_eq!(json["state"], "firing");
        assert_eq!(json["producer"], "cam \"7\"");
    }
}
