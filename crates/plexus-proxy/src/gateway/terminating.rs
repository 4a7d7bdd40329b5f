//! The terminating gateway: mesh clients reach services outside the mesh through it.
//!
//! Its `terminating-gateway` config entry links service names to services registered on an
//! external node (`/v1/catalog/register`); the control plane answers `/v1/health/connect` for
//! a linked service with the gateway's instances. For each linked service the gateway holds:
//!
//! - a leaf of that service's identity (the CA signs it for a gateway whose entry links it),
//!   served to clients whose SNI names the service (`tls::SniInbound`);
//! - its intentions (`authorize/`): the client's identity must be allowed, else the client's
//!   sidecar is told the reason (verdict frame) and the connection closes;
//! - its instances (`/v1/health/service/<name>?passing`), dialled round-robin;
//! - TLS origination with `CAFile` (and `CertFile`/`KeyFile`), verifying `SNI` (`tls::Originate`);
//!   without `CAFile` the bytes go on as they are.
//!
//! Raw TCP clients (ALPN `plexus-tcp`) are decided once per connection and spliced; HTTP clients
//! (ALPN `plexus-h2`, a linked service declared `http`) per request (`terminating_http.rs`).
//!
//! ```text
//!  client sidecar ──mTLS, SNI <svc>.default.<dc>.internal.<td>──► gateway (leaf of <svc>)
//!     ─► intentions(<client> → <svc>) ─► dial an instance ─► TLS (CAFile, SNI) ─► splice
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use plexus_api::Indexed;
use plexus_api::client::{Client, ClientError};
use plexus_api::config_entry::gateway::LinkedService;
use plexus_api::config_entry::{ConfigEntry, Kind, TerminatingGateway};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Shared;
use crate::authorize::{self, Authorizer, verdict};
use crate::balance::RoundRobin;
use crate::discovery::EndpointSet;
use crate::endpoint::{self, ByteCounters};
use crate::error::{ListenerName, ProxyError};
use crate::http::app_pool::{Http1Pool, IDLE};
use crate::http::stack::BoxFuture;
use crate::listener::{Context, ServeConnection, Target};
use crate::metrics::Direction;
use crate::tls;
use plexus_runtime::ErrorChain;

/// One linked service, ready to serve.
pub(super) struct Linked {
    pub(super) spec: LinkedService,
    pub(super) authorizer: Authorizer,
    pub(super) endpoints: watch::Receiver<Arc<EndpointSet>>,
    pub(super) picker: RoundRobin,
    /// `None`: no `CAFile`, bytes pass as they are.
    pub(super) originate: Option<tls::Originate>,
    /// Keep-alive HTTP/1.1 connections to its instances (TLS-originated with `originate`), for
    /// client sidecars that speak HTTP to it.
    pub(super) http1: Arc<Http1Pool<super::terminating_http::Originating>>,
    /// Stops its identity renewal, intentions and instance watches.
    stop: CancellationToken,
}

/// The connections of the gateway's mTLS listener.
struct Terminating {
    tls: tls::SniInbound,
    /// Linked services by SNI name.
    linked: ArcSwap<BTreeMap<String, Arc<Linked>>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Terminating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminating").finish_non_exhaustive()
    }
}

/// Serves the linked services on `listener` until the context's `stop` fires.
pub(super) async fn run(
    ctx: Context,
    shared: Shared,
    listener: TcpListener,
) -> Result<(), ProxyError> {
    let identity = Arc::clone(&ctx.security.identity);
    let leaves: tls::Leaves = Arc::default();
    let terminating = Arc::new(Terminating {
        tls: tls::SniInbound::new(&identity, Arc::clone(&leaves), shared.tls_metrics.clone())
            .map_err(ProxyError::Tls)?,
        linked: ArcSwap::default(),
        connect_timeout: ctx.limits.connect_timeout,
    });
    let name = ListenerName::Gateway("terminating".to_owned());
    let metrics = ctx.metrics.listener(Direction::Inbound, &name.log_name());
    let accept = ctx.accept(
        name,
        listener,
        Target::Gateway(Arc::clone(&terminating) as Arc<dyn ServeConnection>),
        metrics,
    );
    ctx.tasks.spawn(accept.run(ctx.stop.clone()));

    let (tx, mut rx) = watch::channel::<Option<Indexed<Option<TerminatingGateway>>>>(None);
    ctx.tasks.spawn(super::follow_entry(
        shared.control.clone(),
        Kind::TerminatingGateway,
        shared.service.clone(),
        |entry| match entry {
            ConfigEntry::TerminatingGateway(entry) => Some(entry),
            _ => None,
        },
        tx,
        ctx.stop.clone(),
    ));
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let Some(update) = rx.borrow_and_update().clone() else {
            continue;
        };
        let entry = update.value.unwrap_or_default();
        apply(&ctx, &shared, &terminating, &leaves, &entry).await;
        shared.ready("terminating-gateway", update.index);
        info!(
            revision = update.index,
            linked = terminating.linked.load().len(),
            "applied the terminating-gateway entry"
        );
    }
    Ok(())
}

/// Takes the linked services to `entry`: new ones get their identity, intentions and instance
/// watch; changed ones are rebuilt; removed ones stop. A service whose TLS files are unusable is
/// left out (logged) until the entry changes.
async fn apply(
    ctx: &Context,
    shared: &Shared,
    terminating: &Terminating,
    leaves: &tls::Leaves,
    entry: &TerminatingGateway,
) {
    let identity = &ctx.security.identity;
    let sni_of = |service: &str| {
        tls::sni(
            service,
            &identity.service.datacenter,
            &identity.service.trust_domain,
        )
        .to_ascii_lowercase()
    };
    let current = terminating.linked.load_full();
    let mut next: BTreeMap<String, Arc<Linked>> = BTreeMap::new();
    let mut next_leaves = BTreeMap::new();
    for spec in &entry.services {
        let sni = sni_of(&spec.name);
        if let Some(kept) = current.get(&sni).filter(|l| l.spec == *spec) {
            next.insert(sni.clone(), Arc::clone(kept));
            if let Some(leaf) = leaves.load().get(&sni) {
                next_leaves.insert(sni, Arc::clone(leaf));
            }
            continue;
        }
        match link(ctx, shared, spec).await {
            Some((linked, leaf)) => {
                next.insert(sni.clone(), Arc::new(linked));
                next_leaves.insert(sni, leaf);
            }
            None => continue,
        }
    }
    leaves.store(Arc::new(next_leaves));
    let old = terminating.linked.swap(Arc::new(next));
    let now = terminating.linked.load();
    for (sni, linked) in old.iter() {
        if !now.get(sni).is_some_and(|l| Arc::ptr_eq(l, linked)) {
            linked.stop.cancel();
        }
    }
}

/// Everything one linked service needs; `None` when its files are unusable or `stop` fired.
async fn link(
    ctx: &Context,
    shared: &Shared,
    spec: &LinkedService,
) -> Option<(Linked, Arc<tls::Identity>)> {
    let originate = match spec.ca_file.as_deref() {
        None => None,
        Some(ca_file) => {
            let client = spec.cert_file.as_deref().zip(spec.key_file.as_deref());
            match tls::Originate::new(ca_file, client, spec.sni.as_deref()) {
                Ok(originate) => Some(originate),
                Err(error) => {
                    error!(error = %ErrorChain(&error), service = %spec.name, "cannot use the linked service's TLS files; not serving it");
                    return None;
                }
            }
        }
    };
    let stop = ctx.stop.child_token();
    let source = tls::identity::Source {
        control: shared.control.clone(),
        proxy_id: shared.service.clone(),
        service: spec.name.clone(),
        dns_names: Vec::new(),
        state: None,
    };
    let (leaf, roots_index) = tls::identity::obtain(&source, &shared.tls_metrics, &stop).await?;
    ctx.tasks.spawn(tls::identity::maintain(
        Arc::clone(&leaf),
        source,
        roots_index,
        shared.tls_metrics.clone(),
        stop.clone(),
    ));
    let authorizer = authorize::start(
        shared.control.clone(),
        spec.name.clone(),
        false,
        shared.authorize_metrics.clone(),
        &ctx.tasks,
        None,
        stop.clone(),
    )
    .await?;
    let (tx, endpoints) = watch::channel(Arc::new(EndpointSet::default()));
    ctx.tasks.spawn(watch_instances(
        shared.control.clone(),
        spec.name.clone(),
        tx,
        stop.clone(),
    ));
    info!(service = %spec.name, tls = originate.is_some(), "linked service ready");
    Some((
        Linked {
            spec: spec.clone(),
            authorizer,
            endpoints,
            picker: RoundRobin::default(),
            http1: Http1Pool::with_dial(
                super::terminating_http::Originating {
                    connect_timeout: ctx.limits.connect_timeout,
                    originate: originate.clone(),
                },
                IDLE,
            ),
            originate,
            stop,
        },
        leaf,
    ))
}

/// Follows the passing instances of the external `service` (`/v1/health/service`: they have
/// no sidecars).
async fn watch_instances(
    control: Client,
    service: String,
    tx: watch::Sender<Arc<EndpointSet>>,
    stop: CancellationToken,
) {
    let fetch = |query| control.health_service(&service, true, query);
    let on_update = |update: Indexed<Vec<plexus_api::ServiceEntry>>| {
        let (set, skipped) = EndpointSet::from_entries(update.index, &update.value);
        if !skipped.is_empty() {
            warn!(service = %service, ?skipped, "instances without a usable address are left out");
        }
        tx.send_replace(Arc::new(set));
    };
    let on_error = |error: &ClientError| {
        warn!(error = %ErrorChain(error), service = %service, "instance watch failed; keeping the last instances");
    };
    crate::discovery::follow(0, &stop, fetch, on_update, on_error).await;
}

impl ServeConnection for Terminating {
    fn serve(
        self: Arc<Self>,
        downstream: TcpStream,
        peer: SocketAddr,
        bytes: ByteCounters,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.connection(downstream, peer, bytes, stop).await })
    }
}

impl Terminating {
    /// One client connection: handshake (SNI picks the service), intentions, dial, originate,
    /// verdict, splice.
    async fn connection(
        &self,
        downstream: TcpStream,
        peer: SocketAddr,
        bytes: ByteCounters,
        stop: CancellationToken,
    ) {
        let Some((mut stream, source, sni)) = self.tls.accept(downstream, peer).await else {
            return;
        };
        if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
            // HTTP: the intentions decide each request of the pooled connection.
            let Some(linked) = self.linked.load().get(&sni).cloned() else {
                debug!(%peer, %sni, "no linked service for this name");
                return;
            };
            super::terminating_http::serve(
                stream,
                linked,
                source.service,
                self.connect_timeout,
                stop,
            )
            .await;
            return;
        }
        let tells_verdict = stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_TCP);
        let Some(linked) = self.linked.load().get(&sni).cloned() else {
            debug!(%peer, %sni, "no linked service for this name");
            if tells_verdict {
                verdict::deny(&mut stream, "no linked service for this name").await;
            }
            return;
        };
        let decision = linked.authorizer.check(&source.service);
        if !decision.allowed {
            if tells_verdict {
                verdict::deny(&mut stream, &decision.reason).await;
            }
            return;
        }
        let mut endpoints = linked.endpoints.clone();
        let _ = tokio::time::timeout(
            self.connect_timeout,
            endpoints.wait_for(|set| set.is_resolved()),
        )
        .await;
        let set = Arc::clone(&endpoints.borrow());
        let service = &linked.spec.name;
        let (upstream, endpoint) = match endpoint::dial_first(
            linked.picker.order(&set.addrs),
            self.connect_timeout,
            |_, _| {},
        )
        .await
        {
            Ok(connected) => connected,
            Err(error) => {
                warn!(error = %ErrorChain(&error), %service, "cannot reach the linked service");
                return;
            }
        };
        let spliced = match &linked.originate {
            Some(originate) => {
                let upstream = match originate.connect(upstream, endpoint).await {
                    Ok(upstream) => upstream,
                    Err(error) => {
                        warn!(%error, %endpoint, %service, "TLS to the linked service failed");
                        return;
                    }
                };
                if tells_verdict && stream.write_all(&verdict::ALLOW_FRAME).await.is_err() {
                    return;
                }
                endpoint::splice(stream, upstream, bytes).await
            }
            None => {
                if tells_verdict && stream.write_all(&verdict::ALLOW_FRAME).await.is_err() {
                    return;
                }
                endpoint::splice(stream, upstream, bytes).await
            }
        };
        match spliced {
            Ok((received, sent)) => {
                debug!(%endpoint, %service, received, sent, "connection closed")
            }
            Err(error) => debug!(%endpoint, %service, %error, "connection ended with an error"),
        }
    }
}
