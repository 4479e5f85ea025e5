//! Capped exponential backoff for retrying a service that is down, and a retry loop that gives
//! up only when a shutdown is asked for (never by dropping the work).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Delays `initial, 2·initial, 4·initial, …` up to `max`, each shortened by a random jitter of
/// up to `jitter` (a fraction) so that many consumers do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max: max.max(initial), jitter: 0.25, attempt: 0 }
    }

    pub fn without_jitter(mut self) -> Backoff {
        self.jitter = 0.0;
        self
    }

    /// The delay before retry number `attempt` (0-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call moves one step further.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let cut = self.jitter.clamp(0.0, 1.0) * random_unit();
        base.mul_f64(1.0 - cut)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) from the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a retried operation stopped without a result.
#[derive(Debug, PartialEq, Eq)]
pub struct ShutdownRequested;

/// Runs `op` until it succeeds, sleeping `backoff` between failures (each failure logged with
/// `what`). Returns `Err(ShutdownRequested)` if a shutdown comes first: the caller then leaves the
/// work unacknowledged so that it is delivered again.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    shutdown: &Shutdown,
    mut op: F,
) -> Result<T, ShutdownRequested>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut shutdown = shutdown.clone();
    loop {
        match op().await {
            Ok(value) => {
                if backoff.attempts() > 0 {
                    tracing::info!("{what}: succeeded after {} retries", backoff.attempts());
                }
                return Ok(value);
            }
            Err(err) => {
                if shutdown.is_requested() {
                    return Err(ShutdownRequested);
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    "{what} failed (attempt {}): {err}; retrying in {} ms",
                    backoff.attempts(),
                    delay.as_millis()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return Err(ShutdownRequested),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1000)).without_jitter();
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let b = Backoff::new(ms(100), Duration::from_secs(30));
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.base_delay(64), Duration::from_secs(30));
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let b = Backoff::new(ms(500), ms(10)).without_jitter();
        assert_eq!(b.base_delay(3), ms(500));
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_its_fraction() {
        let mut b = Backoff::new(ms(1000), ms(1000));
        b.jitter = 0.25;
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d <= ms(1000) && d >= ms(750), "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_keeps_going_until_success() {
        let mut calls = 0;
        let got = retry("op", Backoff::new(ms(10), ms(40)), &Shutdown::never(), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 5 {
                    Err("down")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_shutdown_without_a_result() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(ms(1000)).await;
            trigger.trigger();
        });
        let got: Result<(), _> = retry("op", Backoff::new(ms(10), ms(100)), &shutdown, || async { Err("down") }).await;
        assert_eq!(got, Err(ShutdownRequested));
        stopper.await.unwrap();
    }
}
