//! What the alert rules (`--alert`) judge: per rule and producer, the judged and wrong records
//! of the rule's span (its `over`, ending with the producer's latest window) and, for rules
//! relative to a reference, those of the producer's reference period.
//!
//! Like every view it is a pure function of the observations (here through the windows view), so
//! a corrected label or a deleted record changes the evidence exactly; whether an alert fires is
//! decided from the evidence by [`Rule::judge`], and when (with hysteresis) by
//! [`crate::alerts::AlertBook`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

use crate::record::Tally;

/// Judged records a rule needs in its span when the rule does not say (`min N`).
pub const DEFAULT_MIN_JUDGED: u64 = 30;

/// One `--alert` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub threshold: Threshold,
    /// The span judged, ending with the producer's latest window; `None`: one `--window`.
    pub over: Option<Duration>,
    /// Judged records needed in the span (and, for a relative rule, in the reference period).
    pub min_judged: u64,
}

/// Where a rule fires, and where an alert that fired resolves (lower, so that it does not flap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// `error_rate > 0.3 [clear 0.24]`.
    Absolute { above: f64, clear: f64 },
    /// `error_rate > reference + 3 sd [clear reference + 2 sd]`: standard errors of the
    /// reference's error rate at the span's sample size.
    Relative { k: f64, clear_k: f64 },
}

/// What the dataflow computes per rule and producer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Evidence {
    /// The start of the producer's latest window with a judged record.
    pub window_start: i64,
    /// Over the rule's span.
    pub judged: u64,
    pub errors: u64,
    /// `(judged, errors)` of the reference period, for a relative rule once the latest window is
    /// past that period.
    pub reference: Option<(u64, u64)>,
}

/// A rule's reading of its evidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judgement {
    pub level: Level,
    pub error_rate: f64,
    pub threshold: f64,
    pub clear_below: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Above the threshold: fire.
    Above,
    /// Between: an alert keeps its state.
    Between,
    /// At or below the clear level: a firing alert resolves.
    Clear,
}

impl Rule {
    /// How many windows the span covers; the span must be whole windows.
    pub fn windows(&self, window_ms: i64) -> Result<i64, String> {
        let Some(over) = self.over else { return Ok(1) };
        let over_ms = i64::try_from(over.as_millis()).unwrap_or(i64::MAX);
        if over_ms < window_ms || over_ms % window_ms != 0 {
            return Err(format!(
                "alert rule {self:?}: `over {}` is not a whole number of --window ({}) windows",
                humantime::format_duration(over),
                humantime::format_duration(Duration::from_millis(window_ms as u64)),
            ));
        }
        Ok(over_ms / window_ms)
    }

    pub fn is_relative(&self) -> bool {
        matches!(self.threshold, Threshold::Relative { .. })
    }

    /// `None` while the evidence is too thin to say: fewer judged records than `min`, or (for a
    /// relative rule) no reference past which the latest window lies.
    pub fn judge(&self, evidence: &Evidence) -> Option<Judgement> {
        if evidence.judged < self.min_judged.max(1) {
            return None;
        }
        let error_rate = evidence.errors as f64 / evidence.judged as f64;
        let (threshold, clear_below) = match self.threshold {
            Threshold::Absolute { above, clear } => (above, clear),
            Threshold::Relative { k, clear_k } => {
                let (judged, errors) = evidence.reference?;
                if judged < self.min_judged.max(1) {
                    return None;
                }
                let rate = errors as f64 / judged as f64;
                // The spread of the span's rate if the reference rate still held; the smoothed
                // rate keeps a spread when the reference had no errors (or only errors).
                let smoothed = (errors as f64 + 1.0) / (judged as f64 + 2.0);
                let standard_error = (smoothed * (1.0 - smoothed) / evidence.judged as f64).sqrt();
                (rate + k * standard_error, rate + clear_k * standard_error)
            }
        };
        let level = if error_rate > threshold {
            Level::Above
        } else if error_rate <= clear_below {
            Level::Clear
        } else {
            Level::Between
        };
        Some(Judgement { level, error_rate, threshold, clear_below })
    }
}

/// The rules the evidence is computed for, with what their spans are made of.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRules {
    pub rules: Arc<[Rule]>,
    /// The views' window width.
    pub window_ms: i64,
    /// The reference period of relative rules: each producer's windows that start less than
    /// this long after its first.
    pub reference_ms: i64,
}

/// `((rule index, producer), evidence)` for every rule and every producer with a judged record
/// in a window.
pub fn alert_evidence<'scope, T>(
    windows: VecCollection<'scope, T, ((String, i64), Tally), isize>,
    rules: AlertRules,
) -> VecCollection<'scope, T, ((usize, String), Evidence), isize>
where
    T: Timestamp + Lattice + Ord,
{
    windows
        .map(|((producer, window), tally)| (producer, (window, tally.judged(), tally.incorrect)))
        .reduce_named("AlertEvidence", move |_producer, windows, evidence| {
            // `windows` holds each producer's windows once, sorted by start.
            let windows: Vec<(i64, u64, u64)> = windows.iter().map(|(window, _)| **window).collect();
            for (index, rule) in rules.rules.iter().enumerate() {
                if let Some(found) = evidence_of(rule, &windows, &rules) {
                    evidence.push(((index, found), 1));
                }
            }
        })
        .map(|(producer, (index, evidence))| ((index, producer), evidence))
}

fn evidence_of(rule: &Rule, windows: &[(i64, u64, u64)], rules: &AlertRules) -> Option<Evidence> {
    let (first, latest) = (windows.first()?.0, windows.last()?.0);
    let span_windows = rule.windows(rules.window_ms).ok()?;
    let span_start = latest.saturating_sub((span_windows - 1).saturating_mul(rules.window_ms));
    let sum = |keep: &dyn Fn(i64) -> bool| {
        windows
            .iter()
            .filter(|(window, _, _)| keep(*window))
            .fold((0, 0), |(judged, errors), (_, j, e)| (judged + j, errors + e))
    };
    let (judged, errors) = sum(&|window| window >= span_start);
    let reference_end = first.saturating_add(rules.reference_ms);
    let reference = (rule.is_relative() && latest >= reference_end).then(|| sum(&|window| window < reference_end));
    Some(Evidence { window_start: latest, judged, errors, reference })
}

/// `error_rate > 0.3 over 1h min 50 clear 0.24`, `error_rate > reference + 3 sd over 1h min 50`;
/// `over` (one window), `min` (30) and `clear` (80 % of an absolute threshold; one sd less than
/// a relative one) may be left out.
impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Rule, String> {
        let usage = |what: &str| {
            format!(
                "alert rule {text:?}: {what}; write `error_rate > 0.3 over 1h min 50 [clear 0.24]` or \
                 `error_rate > reference + 3 sd over 1h min 50 [clear reference + 2 sd]`"
            )
        };
        let lower = text.to_ascii_lowercase();
        let mut words = lower.split_whitespace().peekable();
        if words.next() != Some("error_rate") || words.next() != Some(">") {
            return Err(usage("it must start with `error_rate >`"));
        }
        let number = |word: Option<&str>, what: &str| -> Result<f64, String> {
            word.and_then(|w| w.parse::<f64>().ok())
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| usage(&format!("{what} must be a number, not {:?}", word.unwrap_or(""))))
        };
        // `reference + K sd` (or `sigma`), after `>` or `clear`.
        let relative = |words: &mut std::iter::Peekable<std::str::SplitWhitespace>| -> Result<Option<f64>, String> {
            if words.peek() != Some(&"reference") {
                return Ok(None);
            }
            words.next();
            if words.next() != Some("+") {
                return Err(usage("`reference` must be followed by `+ K sd`"));
            }
            let k = number(words.next(), "K in `reference + K sd`")?;
            match words.next() {
                Some("sd" | "sigma") => Ok(Some(k)),
                _ => Err(usage("`reference + K` must be followed by `sd`")),
            }
        };
        let threshold = match relative(&mut words)? {
            Some(k) => Threshold::Relative { k, clear_k: (k - 1.0).max(0.0) },
            None => {
                let above = number(words.next(), "the threshold")?;
                if above >= 1.0 {
                    return Err(usage("an error rate threshold must be below 1"));
                }
                Threshold::Absolute { above, clear: above * 0.8 }
            }
        };
        let mut rule = Rule { threshold, over: None, min_judged: DEFAULT_MIN_JUDGED };
        while let Some(word) = words.next() {
            match word {
                "over" => {
                    let span = words.next().unwrap_or("");
                    let over = humantime::parse_duration(span)
                        .map_err(|_| usage(&format!("`over` needs a duration such as 1h, not {span:?}")))?;
                    rule.over = Some(over);
                }
                "min" => {
                    let n = words.next().unwrap_or("");
                    rule.min_judged = n.parse().map_err(|_| usage(&format!("`min` needs a count, not {n:?}")))?;
                }
                "clear" => {
                    rule.threshold = match (rule.threshold, relative(&mut words)?) {
                        (Threshold::Relative { k, .. }, Some(clear_k)) if clear_k <= k => {
                            Threshold::Relative { k, clear_k }
                        }
                        (Threshold::Absolute { above, .. }, None) => {
                            let clear = number(words.next(), "the clear level")?;
                            if clear > above {
                                return Err(usage("the clear level must not be above the threshold"));
                            }
                            Threshold::Absolute { above, clear }
                        }
                        (Threshold::Relative { .. }, Some(_)) => {
                            return Err(usage("the clear level must not be above the threshold"))
                        }
                        _ => return Err(usage("`clear` must be of the threshold's kind")),
                    };
                }
                other => return Err(usage(&format!("unexpected {other:?}"))),
            }
        }
        Ok(rule)
    }
}

/// The normalised rule: what events and the API name it by.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.threshold {
            Threshold::Absolute { above, .. } => write!(f, "error_rate > {above}")?,
            Threshold::Relative { k, .. } => write!(f, "error_rate > reference + {k} sd")?,
        }
        if let Some(over) = self.over {
            write!(f, " over {}", humantime::format_duration(over))?;
        }
        write!(f, " min {}", self.min_judged)?;
        match self.threshold {
            Threshold::Absolute { clear, .. } => write!(f, " clear {}", round(clear)),
            Threshold::Relative { clear_k, .. } => write!(f, " clear reference + {clear_k} sd"),
        }
    }
}

/// Drops the float noise of `0.3 * 0.8`.
fn round(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Observation;
    use crate::views::testing::{after_each_round, rows};
    use crate::views::windows::error_windows;

    const HOUR: i64 = 3_600_000;

    fn rule(text: &str) -> Rule {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_with_defaults_and_print_normalised() {
        let absolute = rule("error_rate > 0.3 over 1h min 50");
        assert_eq!(absolute.threshold, Threshold::Absolute { above: 0.3, clear: 0.3 * 0.8 });
        assert_eq!(absolute.over, Some(Duration::from_secs(3600)));
        assert_eq!(absolute.to_string(), "error_rate > 0.3 over 1h min 50 clear 0.24");
        let relative = rule("Error_Rate > reference + 3 SD over 2h");
        assert_eq!(relative.threshold, Threshold::Relative { k: 3.0, clear_k: 2.0 });
        assert_eq!(relative.min_judged, DEFAULT_MIN_JUDGED);
        assert_eq!(relative.to_string(), "error_rate > reference + 3 sd over 2h min 30 clear reference + 2 sd");
        assert_eq!(rule("error_rate > 0.5 clear 0.1").threshold, Threshold::Absolute { above: 0.5, clear: 0.1 });
        let printed = rule("error_rate > reference + 2.5 sd clear reference + 1 sd min 10");
        assert_eq!(printed, printed.to_string().parse().unwrap(), "the printed rule parses to itself");
        for bad in [
            "",
            "errors > 3",
            "error_rate > 1.5",
            "error_rate > -0.1",
            "error_rate > 0.3 over soon",
            "error_rate > 0.3 min many",
            "error_rate > 0.3 clear 0.4",
            "error_rate > 0.3 clear reference + 1 sd",
            "error_rate > reference + 2 sd clear reference + 3 sd",
            "error_rate > reference 2 sd",
            "error_rate > 0.3 every 1h",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?}");
        }
        let span = |text: &str| rule(text).windows(HOUR);
        assert_eq!(span("error_rate > 0.3"), Ok(1));
        assert_eq!(span("error_rate > 0.3 over 3h"), Ok(3));
        assert!(span("error_rate > 0.3 over 90m").is_err());
        assert!(span("error_rate > 0.3 over 30m").is_err());
    }

    #[test]
    fn a_rule_judges_with_hysteresis_and_only_enough_evidence() {
        let absolute = rule("error_rate > 0.3 min 10 clear 0.2");
        let level =
            |judged, errors| absolute.judge(&Evidence { judged, errors, ..Evidence::default() }).map(|j| j.level);
        assert_eq!(level(9, 9), None, "below min");
        assert_eq!(level(10, 4), Some(Level::Above));
        assert_eq!(level(10, 3), Some(Level::Between), "0.3 is not above 0.3");
        assert_eq!(level(10, 2), Some(Level::Clear));

        let relative = rule("error_rate > reference + 3 sd min 100");
        let judge = |reference| relative.judge(&Evidence { judged: 100, errors: 20, window_start: 0, reference });
        assert_eq!(judge(None), None, "no reference yet");
        assert_eq!(judge(Some((50, 5))), None, "too thin a reference");
        let judged = judge(Some((998, 98))).unwrap();
        // Reference rate 0.0982; smoothed (99/1000) standard error at n = 100 is 0.02987.
        assert!((judged.threshold - (98.0 / 998.0 + 3.0 * (0.099f64 * 0.901 / 100.0).sqrt())).abs() < 1e-12);
        assert_eq!(judged.level, Level::Above, "0.2 > 0.188");
        assert_eq!(judge(Some((1000, 120))).unwrap().level, Level::Between, "0.185 < 0.2 <= 0.218");
        assert_eq!(judge(Some((1000, 200))).unwrap().level, Level::Clear);
        let flawless = judge(Some((1000, 0))).unwrap();
        assert!(flawless.threshold > 0.0, "a reference without errors still has a spread");
    }

    fn obs(producer: &str, window: i64, correct: bool) -> Observation {
        let inferred = if correct { "cat" } else { "dog" };
        Observation::new(producer, "cat", Some(inferred)).in_window(window)
    }

    /// A 2h absolute rule and a relative one, with 1h windows and a 2h reference.
    fn two_rules<'s>(
        observations: VecCollection<'s, u64, Observation, isize>,
    ) -> VecCollection<'s, u64, ((usize, String), Evidence), isize> {
        let rules = AlertRules {
            rules: vec![rule("error_rate > 0.3 over 2h"), rule("error_rate > reference + 3 sd")].into(),
            window_ms: HOUR,
            reference_ms: 2 * HOUR,
        };
        alert_evidence(error_windows(observations), rules)
    }

    #[test]
    fn evidence_follows_the_latest_window_and_retractions() {
        let rounds = vec![
            // Hours 0 and 1 are the reference; hour 3 the latest.
            vec![
                (obs("a", 0, true), 8),
                (obs("a", 0, false), 2),
                (obs("a", HOUR, true), 10),
                (obs("a", 3 * HOUR, false), 4),
            ],
            // Hour 4 starts: the 2h span is hours 3 and 4.
            vec![(obs("a", 4 * HOUR, true), 1)],
            // Hour 4 is deleted again, and two of hour 3's errors are corrected.
            vec![(obs("a", 4 * HOUR, true), -1), (obs("a", 3 * HOUR, false), -2), (obs("a", 3 * HOUR, true), 2)],
            // Everything is deleted but the reference: the latest window is back in it.
            vec![(obs("a", 3 * HOUR, false), -2), (obs("a", 3 * HOUR, true), -2)],
        ];
        let evidence =
            |window: i64, judged, errors, reference| Evidence { window_start: window, judged, errors, reference };
        let snapshots = after_each_round(two_rules, rounds);
        let a = |index: usize, e: Evidence| ((index, "a".to_owned()), e);
        assert_eq!(
            rows(&snapshots[0]),
            [a(0, evidence(3 * HOUR, 4, 4, None)), a(1, evidence(3 * HOUR, 4, 4, Some((20, 2))))]
        );
        assert_eq!(
            rows(&snapshots[1]),
            [a(0, evidence(4 * HOUR, 5, 4, None)), a(1, evidence(4 * HOUR, 1, 0, Some((20, 2))))]
        );
        assert_eq!(
            rows(&snapshots[2]),
            [a(0, evidence(3 * HOUR, 4, 2, None)), a(1, evidence(3 * HOUR, 4, 2, Some((20, 2))))]
        );
        assert_eq!(
            rows(&snapshots[3]),
            [a(0, evidence(HOUR, 20, 2, None)), a(1, evidence(HOUR, 10, 0, None))],
            "a relative rule has nothing to compare while the latest window is in the reference"
        );
    }
}
