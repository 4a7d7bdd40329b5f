//! What each Envoy accepted and rejected, reported to the control plane (`plexus operator`),
//! in batches: at most one write per [`REPORT_INTERVAL`], however many Envoys acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_api::acl::SecretId;
use plexus_api::client::Client;
use plexus_api::operator::{ProxyAck, XdsNack, XdsStatus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::resources::TypeUrl;
use crate::source::follow::pause;
use plexus_runtime::Backoff;
use plexus_runtime::ErrorChain;

/// How long changes are gathered before one report carries them all.
const REPORT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
struct Entry {
    /// Per type ACKed at least once, the configuration revision Envoy has reached of it: that
    /// of the last response it accepted, or a later one that changed nothing of the type.
    revisions: BTreeMap<TypeUrl, u64>,
    acked: BTreeMap<TypeUrl, String>,
    nack: Option<XdsNack>,
    /// The token its Envoy presented: the report about it carries that token (`service:write`
    /// on the proxy service, as its acknowledgement would).
    token: Option<SecretId>,
}

impl Entry {
    /// The revision every type has reached (the lowest), the proxy's reported revision: one
    /// type behind, or holding on to what it accepted before a NACK, holds the proxy back.
    fn revision(&self) -> u64 {
        self.revisions.values().min().copied().unwrap_or(0)
    }
}

/// Reports to send, grouped by the token each is sent with.
type Batches = Vec<(Option<SecretId>, Vec<ProxyAck>)>;

/// Per-proxy xDS status, and which proxies changed since the last report.
#[derive(Debug, Default)]
pub(crate) struct StatusBook {
    served_by: String,
    state: Mutex<(HashMap<String, Entry>, BTreeSet<String>)>,
    changed: Notify,
}

impl StatusBook {
    /// A book for the xDS server of node `served_by`.
    pub(crate) fn new(served_by: &str) -> Self {
        Self {
            served_by: served_by.to_owned(),
            ..Self::default()
        }
    }

    fn update(&self, proxy_id: &str, change: impl FnOnce(&mut Entry) -> bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (entries, dirty) = &mut *state;
        let entry = entries.entry(proxy_id.to_owned()).or_default();
        if change(entry) {
            dirty.insert(proxy_id.to_owned());
            self.changed.notify_one();
        }
    }

    /// The token `proxy_id`'s Envoy presented (reports about it are sent with it).
    pub(crate) fn set_token(&self, proxy_id: &str, token: Option<&SecretId>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0.entry(proxy_id.to_owned()).or_default().token = token.cloned();
    }

    /// Envoy accepted `version` of `type_url` (built from registration `revision`).
    pub(crate) fn acked(&self, proxy_id: &str, type_url: TypeUrl, version: &str, revision: u64) {
        self.update(proxy_id, |entry| {
            let mut changed = entry.acked.get(&type_url).map(String::as_str) != Some(version);
            entry.acked.insert(type_url, version.to_owned());
            if entry
                .nack
                .as_ref()
                .is_some_and(|nack| nack.type_url == type_url.short())
            {
                entry.nack = None;
                changed = true;
            }
            let before = entry.revision();
            let reached = entry.revisions.entry(type_url).or_default();
            *reached = (*reached).max(revision);
            changed || entry.revision() != before
        });
    }

    /// Envoy holds each of `types` exactly as configuration `revision` builds it (nothing was
    /// sent since, or what was is accepted): they have reached `revision`. Only types ACKed at
    /// least once count.
    pub(crate) fn reached(
        &self,
        proxy_id: &str,
        types: impl IntoIterator<Item = TypeUrl>,
        revision: u64,
    ) {
        self.update(proxy_id, |entry| {
            let before = entry.revision();
            for type_url in types {
                if let Some(reached) = entry.revisions.get_mut(&type_url) {
                    *reached = (*reached).max(revision);
                }
            }
            entry.revision() != before
        });
    }

    /// Envoy rejected `version` of `type_url` with `error`.
    pub(crate) fn nacked(&self, proxy_id: &str, type_url: TypeUrl, version: &str, error: &str) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.update(proxy_id, |entry| {
            entry.nack = Some(XdsNack {
                type_url: type_url.short().to_owned(),
                version: version.to_owned(),
                error: error.to_owned(),
                at,
            });
            true
        });
    }

    /// The status of one proxy, as reported.
    #[cfg(test)]
    pub(crate) fn report_of(&self, proxy_id: &str) -> Option<ProxyAck> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .0
            .get(proxy_id)
            .map(|entry| self.to_report(proxy_id, entry))
    }

    fn to_report(&self, proxy_id: &str, entry: &Entry) -> ProxyAck {
        ProxyAck {
            id: proxy_id.to_owned(),
            revision: entry.revision(),
            acknowledged_at: 0,
            data_plane: Some("envoy".to_owned()),
            admin_addr: String::new(),
            xds: Some(XdsStatus {
                served_by: self.served_by.clone(),
                acked: entry
                    .acked
                    .iter()
                    .map(|(t, v)| (t.short().to_owned(), v.clone()))
                    .collect(),
                nack: entry.nack.clone(),
            }),
        }
    }

    #[cfg(test)]
    fn take_dirty(&self) -> Vec<ProxyAck> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (entries, dirty) = &mut *state;
        let ids = std::mem::take(dirty);
        ids.iter()
            .filter_map(|id| entries.get(id).map(|entry| self.to_report(id, entry)))
            .collect()
    }

    /// The changed proxies' reports, grouped by token.
    fn take_batches(&self) -> Batches {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (entries, dirty) = &mut *state;
        let ids = std::mem::take(dirty);
        let mut batches: Batches = Vec::new();
        for id in &ids {
            let Some(entry) = entries.get(id) else {
                continue;
            };
            let report = self.to_report(id, entry);
            match batches.iter_mut().find(|(token, _)| *token == entry.token) {
                Some((_, batch)) => batch.push(report),
                None => batches.push((entry.token.clone(), vec![report])),
            }
        }
        batches
    }

    fn mark_dirty(&self, reports: &[ProxyAck]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.extend(reports.iter().map(|r| r.id.clone()));
    }

    /// Sends changes to the control plane until `stop`.
    pub(crate) async fn report(&self, client: Client, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
            }
            if !pause(REPORT_INTERVAL, &stop).await {
                return;
            }
            let mut failed = false;
            for (token, batch) in self.take_batches() {
                let sent = client
                    .clone()
                    .with_token(token)
                    .proxies_xds_status(&batch)
                    .await;
                match sent {
                    Ok(()) => debug!(proxies = batch.len(), "xDS status reported"),
                    Err(error) => {
                        warn!(error = %ErrorChain(&error), proxies = batch.len(), "cannot report xDS status; retrying");
                        self.mark_dirty(&batch);
                        failed = true;
                    }
                }
            }
            if failed {
                self.changed.notify_one();
                if !pause(backoff.next_delay(), &stop).await {
                    return;
                }
            } else {
                backoff.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_of_the_rejected_type_clears_the_nack() {
        let book = StatusBook::new("node-1");
        book.acked("p", TypeUrl::Cluster, "v1", 7);
        book.nacked("p", TypeUrl::Listener, "v2", "bad listener");
        let report = book.report_of("p").expect("status");
        let xds = report.xds.expect("xds");
        assert_eq!(xds.acked["CDS"], "v1");
        assert_eq!(
            xds.nack.as_ref().map(|n| n.error.as_str()),
            Some("bad listener")
        );
        assert_eq!(report.revision, 7);
        book.acked("p", TypeUrl::Cluster, "v3", 8);
        assert!(
            book.report_of("p")
                .and_then(|r| r.xds)
                .and_then(|x| x.nack)
                .is_some()
        );
        book.acked("p", TypeUrl::Listener, "v4", 8);
        assert!(
            book.report_of("p")
                .and_then(|r| r.xds)
                .and_then(|x| x.nack)
                .is_none()
        );
        let batch = book.take_dirty();
        assert_eq!(batch.len(), 1);
        assert!(book.take_dirty().is_empty());
    }

    #[test]
    fn the_revision_is_the_one_every_acked_type_has_reached() {
        let book = StatusBook::new("node-1");
        let revision = |book: &StatusBook| book.report_of("p").map(|r| r.revision);
        book.acked("p", TypeUrl::Cluster, "c1", 7);
        book.acked("p", TypeUrl::Listener, "l1", 7);
        assert_eq!(revision(&book), Some(7));
        book.take_dirty();
        // Revision 8 changed both; only the clusters are accepted so far.
        book.acked("p", TypeUrl::Cluster, "c2", 8);
        assert_eq!(revision(&book), Some(7), "the listeners are still at 7");
        book.nacked("p", TypeUrl::Listener, "l2", "bad listener");
        assert_eq!(
            revision(&book),
            Some(7),
            "rejected: Envoy keeps 7's listeners"
        );
        let xds = book.report_of("p").and_then(|r| r.xds).expect("xds");
        assert_eq!(
            (xds.acked["CDS"].as_str(), xds.acked["LDS"].as_str()),
            ("c2", "l1"),
            "per-type detail as before"
        );
        book.take_dirty();
        // Revision 9 fixes the listeners and leaves the clusters alone: they reached 9 too.
        book.reached("p", [TypeUrl::Cluster], 9);
        assert_eq!(revision(&book), Some(7));
        assert!(book.take_dirty().is_empty(), "nothing reported changed");
        book.acked("p", TypeUrl::Listener, "l3", 9);
        assert_eq!(revision(&book), Some(9));
        // A type never ACKed does not count, and is not made up by `reached`.
        book.reached("p", [TypeUrl::Secret], 10);
        assert_eq!(revision(&book), Some(9));
    }
}
