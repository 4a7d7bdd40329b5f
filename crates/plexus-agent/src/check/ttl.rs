//! TTL checks: critical ("TTL expired") unless `/v1/agent/check/pass|warn|fail|update` came
//! within the TTL. The update handlers write the status; [`TtlTimers`] tells the runner to restart
//! its timer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Reporter};

/// Output written when a TTL runs out (Consul's wording).
pub(crate) const EXPIRED: &str = "TTL expired";

/// When a TTL check expires: `ttl` after its last update, or after the runner started.
pub(crate) fn deadline(started: Instant, last_update: Option<Instant>, ttl: Duration) -> Instant {
    last_update.map_or(started, |t| t.max(started)) + ttl
}

/// The last update time of every TTL check, in agent memory (one `watch` per check id).
#[derive(Debug, Default)]
pub(crate) struct TtlTimers {
    updates: Mutex<HashMap<String, watch::Sender<Option<Instant>>>>,
}

impl TtlTimers {
    /// Records an update of `check_id` now, waking its runner.
    pub(crate) fn touch(&self, check_id: &str) {
        self.with(check_id, |tx| {
            tx.send_replace(Some(Instant::now()));
        });
    }

    /// The update times of `check_id` (the latest one first, if any).
    pub(crate) fn subscribe(&self, check_id: &str) -> watch::Receiver<Option<Instant>> {
        self.with(check_id, |tx| tx.subscribe())
    }

    /// Drops what is known about a removed check.
    pub(crate) fn forget(&self, check_id: &str) {
        self.lock().remove(check_id);
    }

    fn with<T>(&self, check_id: &str, f: impl FnOnce(&watch::Sender<Option<Instant>>) -> T) -> T {
        let mut map = self.lock();
        let tx = map
            .entry(check_id.to_owned())
            .or_insert_with(|| watch::channel(None).0);
        f(tx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<Instant>>>> {
        // The map stays consistent even if a holder panicked.
        plexus_runtime::lock::lock(&self.updates)
    }
}

/// Reports "TTL expired" each time the TTL runs out without an update; stops on `token`.
///
/// The last update counts from the runner's start: one made just before (between registration
/// and the supervisor starting this runner) is honoured.
pub(crate) async fn run(
    ttl: Duration,
    mut updates: watch::Receiver<Option<Instant>>,
    reporter: Reporter,
    token: CancellationToken,
) {
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let last = *updates.borrow_and_update();
        let due = deadline(started, last, ttl);
        let armed = reported != Some(due);
        tokio::select! {
            _ = token.cancelled() => return,
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(due), if armed => {
                // An update that raced with the timer wins.
                if updates.has_changed().unwrap_or(false) {
                    continue;
                }
                reporter.report(&Outcome::critical(EXPIRED)).await;
                reported = Some(due);
            }
        }
    }
}
