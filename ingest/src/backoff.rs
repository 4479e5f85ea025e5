//! Capped exponential backoff, and the one retry loop every retried operation goes through: a
//! service that is down is waited for without limit (never by dropping the work); work that
//! fails by itself is tried a bounded number of times and then handed back to the caller.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::shutdown::CancellationToken;

/// Longest `Retry-After` honoured, so that a nonsensical header cannot park a consumer for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

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
        let cut = self.jitter.clamp(0.0, 1.0) * rand::random::<f64>();
        base.mul_f64(1.0 - cut)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why a retried operation stopped without a result.
#[derive(Debug, PartialEq, Eq)]
pub struct ShutdownRequested;

/// How one failed try is retried.
#[derive(Debug, PartialEq)]
pub enum Failure<E> {
    /// Something the work needs is down or busy, through no fault of the work: tried again
    /// without limit, and no sooner than `after` when the service said when (`Retry-After`).
    Unavailable { why: String, after: Option<Duration> },
    /// The work itself failed: tried again until the attempt limit, then handed back.
    Failed(E),
    /// Trying again cannot help: handed back at once.
    Final(E),
}

impl<E> Failure<E> {
    pub fn unavailable(why: impl Display) -> Failure<E> {
        Failure::Unavailable { why: why.to_string(), after: None }
    }
}

/// Runs `op` until it succeeds, sleeping `backoff` between failures (each logged with `what`),
/// for as long as it takes. Returns `Err(ShutdownRequested)` if a shutdown comes first: the
/// caller then leaves the work unacknowledged so that it is delivered again.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, ShutdownRequested>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let unlimited = || {
        let attempt = op();
        async move { attempt.await.map_err(Failure::<Infallible>::unavailable) }
    };
    match retry_bounded(what, backoff, u32::MAX, shutdown, unlimited).await? {
        Ok(value) => Ok(value),
        Err(never) => match never {},
    }
}

/// Runs `op` until it succeeds, as [`retry`] does, except that a [`Failure::Failed`] counts
/// toward `attempts` and the last one is handed back once that many tries failed, and a
/// [`Failure::Final`] is handed back at once. [`Failure::Unavailable`] tries never count.
pub async fn retry_bounded<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    attempts: u32,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<Result<T, E>, ShutdownRequested>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let mut failed = 0u32;
    loop {
        let (why, after) = match op().await {
            Ok(value) => {
                if backoff.attempts() > 0 {
                    tracing::info!("{what}: succeeded after {} retries", backoff.attempts());
                }
                return Ok(Ok(value));
            }
            Err(Failure::Final(err)) => return Ok(Err(err)),
            Err(Failure::Failed(err)) => {
                failed += 1;
                if failed >= attempts {
                    tracing::warn!("{what} failed {failed} time(s), giving up: {err}");
                    return Ok(Err(err));
                }
                (format!("{err} ({failed} of {attempts} tries failed)"), None)
            }
            Err(Failure::Unavailable { why, after }) => (why, after),
        };
        if shutdown.is_cancelled() {
            return Err(ShutdownRequested);
        }
        let delay = backoff.next_delay().max(after.unwrap_or_default().min(MAX_RETRY_AFTER));
        tracing::warn!("{what} failed (attempt {}): {why}; retrying in {} ms", backoff.attempts(), delay.as_millis());
        sleep(delay, shutdown).await?;
    }
}

/// Sleeps for `delay`, or less if a shutdown comes first.
pub async fn sleep(delay: Duration, shutdown: &CancellationToken) -> Result<(), ShutdownRequested> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.cancelled() => Err(ShutdownRequested),
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
        let got = retry("op", Backoff::new(ms(10), ms(40)), &CancellationToken::new(), || {
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
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(ms(1000)).await;
            trigger.cancel();
        });
        let got: Result<(), _> = retry("op", Backoff::new(ms(10), ms(100)), &shutdown, || async { Err("down") }).await;
        assert_eq!(got, Err(ShutdownRequested));
        stopper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_tried_a_bounded_number_of_times_then_handed_back() {
        let mut calls = 0;
        let got: Result<Result<(), _>, _> =
            retry_bounded("op", Backoff::new(ms(10), ms(40)), 3, &CancellationToken::new(), || {
                calls += 1;
                let n = calls;
                async move { Err(Failure::Failed(format!("try {n}"))) }
            })
            .await;
        assert_eq!(got, Ok(Err("try 3".to_owned())));
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailability_never_counts_toward_the_limit() {
        let mut calls = 0;
        let got = retry_bounded("op", Backoff::new(ms(10), ms(40)), 2, &CancellationToken::new(), || {
            calls += 1;
            let n = calls;
            async move {
                match n {
                    1..=5 => Err(Failure::unavailable("down")),
                    6 => Err(Failure::Failed("broken")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got, Ok(Ok(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_failure_is_handed_back_at_once() {
        let mut calls = 0;
        let got: Result<Result<(), _>, _> =
            retry_bounded("op", Backoff::new(ms(10), ms(40)), 5, &CancellationToken::new(), || {
                calls += 1;
                async { Err(Failure::Final("refused")) }
            })
            .await;
        assert_eq!((got, calls), (Ok(Err("refused")), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let got =
            retry_bounded("op", Backoff::new(ms(10), ms(40)).without_jitter(), 1, &CancellationToken::new(), || {
                calls += 1;
                let n = calls;
                async move {
                    match n {
                        1 => Err(Failure::<&str>::Unavailable {
                            why: "busy".into(),
                            after: Some(Duration::from_secs(7)),
                        }),
                        _ => Ok(()),
                    }
                }
            })
            .await;
        assert_eq!(got, Ok(Ok(())));
        assert!(started.elapsed() >= Duration::from_secs(7), "{:?}", started.elapsed());
    }
}
