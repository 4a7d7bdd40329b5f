//! Following the control plane: start-up lookup with backoff, and blocking-query loops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::client::{Client, ClientError, QueryOptions};
use plexus_api::{AgentService, Indexed};
use plexus_runtime::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{SidecarConfig, pick_sidecar};
use crate::error::ProxyError;
use crate::state::StateDir;
use plexus_runtime::ErrorChain;

/// How long one blocking query may wait on the server (Consul's default).
pub(crate) const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Pause before re-asking when an answer did not move the index (guards against servers that do
/// not block). Short enough that changes still apply well within a second.
const UNCHANGED_PAUSE: Duration = Duration::from_millis(50);
/// Sleeps for `delay` unless `stop` fires first; false when stopped.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The state file of the sidecar's own registration.
pub(crate) const REGISTRATION: &str = "registration";

/// The registration saved in `state`, if it passes `fits` (static stability across restarts).
fn restore(
    state: Option<&StateDir>,
    fits: impl Fn(&AgentService) -> bool,
) -> Option<Indexed<AgentService>> {
    let (saved, at) = state?.load::<Indexed<AgentService>>(REGISTRATION)?;
    if !fits(&saved.value) {
        return None;
    }
    warn!(
        sidecar_id = %saved.value.id,
        revision = saved.index,
        saved_at = %crate::staleness::rfc3339(at),
        "no control-plane server answers; starting from the last good registration (stale)"
    );
    Some(saved)
}

/// Finds the sidecar registration fronting `app_id`, retrying while the control plane cannot be
/// reached (or fails); while it cannot, the registration saved in `state` is used if there is
/// one. `Ok(None)` when `stop` fires first.
pub(crate) async fn find_sidecar(
    client: &Client,
    app_id: &str,
    state: Option<&StateDir>,
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
            Ok(Some(found)) => {
                if let Some(state) = state {
                    state.save(REGISTRATION, &found);
                }
                return Ok(Some(found));
            }
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
                let fits = |s: &AgentService| {
                    let services = [(s.id.clone(), s.clone())].into_iter().collect();
                    pick_sidecar(&services, app_id).is_some()
                };
                if let Some(saved) = restore(state, fits) {
                    return Ok(Some(saved));
                }
                let delay = backoff.next_delay();
                warn!(
                    error = %ErrorChain(&error),
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

/// Finds the explicitly registered `connect-proxy` service `proxy_id` (`plexus proxy
/// --proxy-id`), retrying while the control plane cannot be reached. `Ok(None)` when `stop`
/// fires first.
pub(crate) async fn find_proxy(
    client: &Client,
    proxy_id: &str,
    state: Option<&StateDir>,
    stop: &CancellationToken,
) -> Result<Option<Indexed<AgentService>>, ProxyError> {
    let mut backoff = Backoff::default();
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            result = client.agent_service(proxy_id, QueryOptions::default()) => result,
        };
        match result {
            Ok(found) if found.value.kind == plexus_api::ServiceKind::ConnectProxy => {
                if let Some(state) = state {
                    state.save(REGISTRATION, &found);
                }
                return Ok(Some(found));
            }
            Ok(_) => {
                return Err(ProxyError::NoProxy {
                    proxy_id: proxy_id.to_owned(),
                });
            }
            Err(error) if error.status() == Some(404) => {
                return Err(ProxyError::NoProxy {
                    proxy_id: proxy_id.to_owned(),
                });
            }
            Err(error) if error.status() == Some(403) => return Err(denied(client, &error)),
            Err(error) => {
                let fits = |s: &AgentService| {
                    s.id == proxy_id && s.kind == plexus_api::ServiceKind::ConnectProxy
                };
                if let Some(saved) = restore(state, fits) {
                    return Ok(Some(saved));
                }
                let delay = backoff.next_delay();
                warn!(
                    error = %ErrorChain(&error),
                    proxy_id,
                    retry_in = ?delay,
                    "cannot look up the proxy registration; retrying"
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
    state: Option<Arc<StateDir>>,
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
                    if let Some(state) = &state {
                        state.save(REGISTRATION, &update);
                    }
                    info!(sidecar_id = %config.sidecar_id, revision = config.revision, "sidecar registration changed");
                    *current = Arc::new(config);
                }
                changed
            });
        }
        Err(error) => error!(
            error = %ErrorChain(&error),
            sidecar_id = %update.value.id,
            revision = update.index,
            "ignoring invalid sidecar registration; serving the last good config"
        ),
    };
    let on_error = |error: &ClientError| {
        if error.status() == Some(404) {
            warn!(sidecar_id = %initial.sidecar_id, "sidecar registration is gone; serving the last good config");
        } else {
            warn!(error = %ErrorChain(error), sidecar_id = %initial.sidecar_id, "sidecar watch failed; retrying");
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
        assert!(started.elapsed() >= Backoff::default().ceiling(0) / 2);
    }
}
