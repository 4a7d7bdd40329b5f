//! One blocking-query loop: ask, publish what moved, ask again from the new index; on failure
//! retry with bounded, jittered backoff, keeping the last value published (static stability).

use std::future::Future;
use std::time::Duration;

use plexus_api::Indexed;
use plexus_api::client::{ClientError, QueryOptions};
use plexus_runtime::Backoff;
use tokio_util::sync::CancellationToken;

/// How long one blocking query may wait on the server (Consul's default).
pub(crate) const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Pause before re-asking when an answer did not move the index.
const UNCHANGED_PAUSE: Duration = Duration::from_millis(50);

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
