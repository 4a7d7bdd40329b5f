//! One blocking-query loop: ask, publish what moved, ask again from the new index; on failure
//! retry with bounded, jittered backoff, keeping the last value published (static stability).

use std::future::Future;
use std::time::Duration;

use plexus_api::Indexed;
use plexus_api::client::{ClientError, QueryOptions};
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// How long one blocking query may wait on the server (Consul's default).
pub(crate) const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Pause before re-asking when an answer did not move the index.
const UNCHANGED_PAUSE: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bounded, jittered exponential backoff: attempt `n` waits between half and all of
/// `min(100ms × 2^n, 5s)`. (The shared runtime helper replaces this once it lands.)
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let ceiling = BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Forgets past failures.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps for `delay` unless `stop` fires first; false when stopped.
pub(crate) async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Runs blocking queries until `stop` fires: `on_update` gets every answer that moved the index
/// (and the first after a reset), `on_error` every failure, retried with backoff from index 0.
pub(crate) async fn follow<T, Fetch, Fut>(
    stop: &CancellationToken,
    mut fetch: Fetch,
    mut on_update: impl FnMut(Indexed<T>),
    mut on_error: impl FnMut(&ClientError),
) where
    Fetch: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<Indexed<T>, ClientError>>,
{
    let mut index = 0u64;
    let mut backoff = Backoff::default();
    loop {
        let query = if index == 0 {
            QueryOptions::default()
        } else {
            QueryOptions::blocking(index, BLOCKING_WAIT)
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = fetch(query) => result,
        };
        let delay = match result {
            Ok(update) => {
                backoff.reset();
                let asked = index;
                // An index that goes backwards (the store was reset) restarts from 0.
                index = if update.index < asked {
                    0
                } else {
                    update.index
                };
                let news = asked == 0 || update.index != asked;
                if news {
                    on_update(update);
                }
                if news && index != 0 {
                    Duration::ZERO
                } else {
                    UNCHANGED_PAUSE
                }
            }
            Err(error) => {
                on_error(&error);
                index = 0;
                backoff.next_delay()
            }
        };
        if !delay.is_zero() && !pause(delay, stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..40 {
            assert!(backoff.next_delay() <= BACKOFF_MAX);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn follow_delivers_changes_and_retries_failures() {
        let stop = CancellationToken::new();
        let mut answers = vec![
            Ok(Indexed {
                index: 3,
                value: "c",
            }),
            Ok(Indexed {
                index: 3,
                value: "c",
            }),
            Err(ClientError::BadAddress("down".into())),
            Ok(Indexed {
                index: 1,
                value: "a",
            }),
        ];
        let mut asked = Vec::new();
        let mut seen = Vec::new();
        let mut errors = 0;
        follow(
            &stop,
            |query: QueryOptions| {
                asked.push(query.index);
                let answer = answers.pop();
                if answers.is_empty() {
                    stop.cancel();
                }
                async move { answer.unwrap_or(Err(ClientError::BadAddress("end".into()))) }
            },
            |update| seen.push(update.value),
            |_| errors += 1,
        )
        .await;
        assert_eq!(asked, [None, Some(1), None, Some(3)]);
        assert_eq!(seen, ["a", "c"]);
        assert_eq!(errors, 1);
    }
}
