//! Following the control plane: start-up lookup with backoff, and blocking-query loops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::client::{Client, ClientError, QueryOptions};
use plexus_api::{AgentService, Indexed};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{SidecarConfig, pick_sidecar};
use crate::error::{ProxyError, Report};

/// How long one blocking query may wait on the server (Consul's default).
pub(crate) const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Pause before re-asking when an answer did not move the index (guards against servers that do
/// not block). Short enough that changes still apply well within a second.
const UNCHANGED_PAUSE: Duration = Duration::from_millis(50);
/// First retry delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay after repeated failures.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bounded, jittered exponential backoff: attempt `n` waits between half and all of
/// `min(100ms * 2^n, 5s)`.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let unit: f64 = rand::rng().random_range(0.0..=1.0);
        let delay = jittered(ceiling(self.attempt), unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Forgets past failures.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The upper bound of attempt `n`'s delay.
fn ceiling(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// `ceiling/2 + unit * ceiling/2` for `unit` in `[0, 1]`.
fn jittered(ceiling: Duration, unit: f64) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Sleeps for `delay` unless `stop` fires first; false when stopped.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Finds the sidecar registration fronting `app_id`, retrying while the control plane cannot be
/// reached (or fails). `Ok(None)` when `stop` fires first.
pub(crate) async fn find_sidecar(
    client: &Client,
    app_id: &str,
    stop: &CancellationToken,
) -> Result<Option<Indexed<AgentService>>, ProxyError> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let services = client.agent_services().await?;
            let Some(sidecar) = pick_sidecar(&services, app_id) else {
                return Ok(None);
            };
            client
                .agent_service(&sidecar.id, QueryOptions::default())
                .await
                .map(Some)
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            result = attempt => result,
        };
        match result {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {
                // Hidden from this token, or really absent?
                return Err(
                    match client.agent_service(app_id, QueryOptions::default()).await {
                        Err(error) if error.status() == Some(403) => denied(client, &error),
                        _ => ProxyError::NoSidecar {
                            service_id: app_id.to_owned(),
                        },
                    },
                );
            }
            // Deregistered between the list and the read: look again.
            Err(error) if error.status() == Some(404) => continue,
            Err(error) if error.status() == Some(403) => return Err(denied(client, &error)),
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(
                    error = %Report(&error),
                    service_id = app_id,
                    retry_in = ?delay,
                    "cannot look up the sidecar registration; retrying"
                );
                if !pause(delay, stop).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// The start-up error for a 403 from the control plane.
fn denied(client: &Client, error: &plexus_api::client::ClientError) -> ProxyError {
    let message = match error {
        plexus_api::client::ClientError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    };
    ProxyError::Denied {
        token: if client.token().is_some() {
            "token given"
        } else {
            "no token given"
        },
        message,
    }
}

/// Follows the sidecar registration from `initial`, publishing each valid change on `tx` until
/// `stop` fires. Invalid registrations and deregistration are logged and the last good config
/// stays published (static stability).
pub(crate) async fn watch_sidecar(
    client: Client,
    initial: Arc<SidecarConfig>,
    tx: watch::Sender<Arc<SidecarConfig>>,
    stop: CancellationToken,
) {
    let sidecar_id = initial.sidecar_id.clone();
    let fetch = |query| client.agent_service(&sidecar_id, query);
    let on_update = |update: Indexed<AgentService>| match SidecarConfig::from_registration(&update)
    {
        Ok(config) => {
            tx.send_if_modified(|current| {
                let changed = current.differs_from(&config);
                if changed {
                    info!(sidecar_id = %config.sidecar_id, revision = config.revision, "sidecar registration changed");
                    *current = Arc::new(config);
                }
                changed
            });
        }
        Err(error) => error!(
            error = %Report(&error),
            sidecar_id = %update.value.id,
            revision = update.index,
            "ignoring invalid sidecar registration; serving the last good config"
        ),
    };
    let on_error = |error: &ClientError| {
        if error.status() == Some(404) {
            warn!(sidecar_id = %initial.sidecar_id, "sidecar registration is gone; serving the last good config");
        } else {
            warn!(error = %Report(error), sidecar_id = %initial.sidecar_id, "sidecar watch failed; retrying");
        }
    };
    follow(initial.revision, &stop, fetch, on_update, on_error).await;
}

/// Runs blocking queries from `index` until `stop` fires: `on_update` gets every answer that moved
/// the index (and the first answer after a reset), `on_error` every failure, which is then retried
/// with backoff from index 0.
pub(crate) async fn follow<T, Fetch, Fut>(
    mut index: u64,
    stop: &CancellationToken,
    mut fetch: Fetch,
    mut on_update: impl FnMut(Indexed<T>),
    mut on_error: impl FnMut(&ClientError),
) where
    Fetch: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<Indexed<T>, ClientError>>,
{
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
                let (next, deliver) = next_index(index, update.index);
                index = next;
                if deliver {
                    on_update(update);
                }
                if deliver && next != 0 {
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

/// Consul's blocking-query rules: the next index to wait from, and whether the answer is news.
/// An index that goes backwards (the server's store was reset) restarts from 0.
fn next_index(asked: u64, returned: u64) -> (u64, bool) {
    if returned < asked {
        (0, true)
    } else {
        (returned, asked == 0 || returned != asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_stays_within_bounds() {
        assert_eq!(ceiling(0), Duration::from_millis(100));
        assert_eq!(ceiling(1), Duration::from_millis(200));
        assert_eq!(ceiling(5), Duration::from_millis(3200));
        assert_eq!(ceiling(6), BACKOFF_MAX);
        assert_eq!(ceiling(u32::MAX), BACKOFF_MAX);
        assert_eq!(jittered(ceiling(0), 0.0), Duration::from_millis(50));
        assert_eq!(jittered(ceiling(0), 1.0), Duration::from_millis(100));
        let mut backoff = Backoff::default();
        for attempt in 0..40 {
            let delay = backoff.next_delay();
            assert!(delay >= ceiling(attempt) / 2 && delay <= ceiling(attempt));
            assert!(delay <= BACKOFF_MAX);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 5), (5, true));
        assert_eq!(next_index(0, 0), (0, true));
        assert_eq!(next_index(5, 5), (5, false));
        assert_eq!(next_index(5, 9), (9, true));
        assert_eq!(next_index(9, 3), (0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn follow_retries_with_backoff_and_delivers_changes() {
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
            Ok(Indexed {
                index: 2,
                value: "b",
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
        let started = tokio::time::Instant::now();
        follow(
            0,
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
        assert_eq!(asked, [None, Some(1), None, Some(2), Some(3)]);
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(errors, 1);
        assert!(started.elapsed() >= BACKOFF_MIN / 2);
    }
}
