//! The ingress gateway: its `ingress-gateway` config entry, followed by blocking query, turned
//! into one listener per port on the gateway's IP.
//!
//! - `http` listeners: the edge checks, then the host router (`http/host.rs`) into the
//!   outbound stack of the service the host names; with `TLS.Enabled`, TLS first, with a leaf
//!   from the built-in CA naming the hosts of the TLS listeners (a second identity of the
//!   gateway's service, re-obtained when those hosts change).
//! - `tcp` listeners: the L4 path to the listener's one service (mTLS, the destination's
//!   verdict).
//!
//! A listener whose spec changed is closed (its connections finish) and opened again; the rest
//! keep running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use plexus_api::Indexed;
use plexus_api::config_entry::gateway::{IngressListener, ListenerProtocol};
use plexus_api::config_entry::{ConfigEntry, IngressGateway, Kind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Shared;
use crate::error::{ListenerName, ProxyError};
use crate::http::headers::HeaderChanges;
use crate::http::host::{HostRoute, HostRouter, MakeStack};
use crate::listener::{Context, Target};
use crate::metrics::Direction;
use crate::tls::{self, Identity};
use plexus_runtime::ErrorChain;

/// One listener as the entry asks for it (what decides whether it is re-opened).
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    listener: IngressListener,
    tls: bool,
}

struct Running {
    spec: Spec,
    stop: CancellationToken,
    accept: JoinHandle<()>,
    bound: SocketAddr,
}

/// The TLS identity for the hosts of the TLS listeners.
struct Front {
    hosts: Vec<String>,
    identity: Arc<Identity>,
    stop: CancellationToken,
}

/// Follows the entry and keeps the listeners in step, until the context's `stop` fires.
pub(super) async fn run(ctx: Context, shared: Shared) -> Result<(), ProxyError> {
    let (tx, mut rx) = watch::channel::<Option<Indexed<Option<IngressGateway>>>>(None);
    ctx.tasks.spawn(super::follow_entry(
        shared.control.clone(),
        Kind::IngressGateway,
        shared.service.clone(),
        |entry| match entry {
            ConfigEntry::IngressGateway(entry) => Some(entry),
            _ => None,
        },
        tx,
        ctx.stop.clone(),
    ));
    let mut running: BTreeMap<u16, Running> = BTreeMap::new();
    let mut front: Option<Front> = None;
    let mut first = true;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let Some(update) = rx.borrow_and_update().clone() else {
            continue;
        };
        let entry = update.value.unwrap_or_default();
        if let Err(error) = apply(&ctx, &shared, &entry, &mut running, &mut front).await {
            if first {
                return Err(error);
            }
            error!(error = %ErrorChain(&error), "cannot apply the ingress-gateway entry; keeping what runs");
        }
        first = false;
        shared.ready("ingress-gateway", update.index);
        info!(
            revision = update.index,
            listeners = running.len(),
            "applied the ingress-gateway entry"
        );
    }
    for (_, listener) in std::mem::take(&mut running) {
        listener.stop.cancel();
    }
    Ok(())
}

/// Takes the running listeners to `entry`.
async fn apply(
    ctx: &Context,
    shared: &Shared,
    entry: &IngressGateway,
    running: &mut BTreeMap<u16, Running>,
    front: &mut Option<Front>,
) -> Result<(), ProxyError> {
    // The TLS leaf must name every host of the TLS listeners.
    let hosts = entry.tls_hosts();
    let mut new_front = false;
    if hosts.is_empty() {
        if let Some(old) = front.take() {
            old.stop.cancel();
        }
    } else if front.as_ref().is_none_or(|f| f.hosts != hosts) {
        let stop = ctx.stop.child_token();
        let source = tls::identity::Source {
            control: shared.control.clone(),
            proxy_id: shared.service.clone(),
            service: shared.service.clone(),
            dns_names: hosts.clone(),
            state: None,
        };
        let Some((identity, roots_index)) =
            tls::identity::obtain(&source, &shared.tls_metrics, &stop).await
        else {
            return Ok(());
        };
        ctx.tasks.spawn(tls::identity::maintain(
            Arc::clone(&identity),
            source,
            roots_index,
            shared.tls_metrics.clone(),
            stop.clone(),
        ));
        if let Some(old) = front.replace(Front {
            hosts,
            identity,
            stop,
        }) {
            old.stop.cancel();
        }
        new_front = true;
    }
    let wanted: BTreeMap<u16, Spec> = entry
        .listeners
        .iter()
        .filter_map(|listener| {
            let port = u16::try_from(listener.port).ok()?;
            Some((
                port,
                Spec {
                    listener: listener.clone(),
                    tls: listener.tls_enabled(entry),
                },
            ))
        })
        .collect();
    let stale: Vec<u16> = running
        .iter()
        .filter(|(port, r)| wanted.get(port) != Some(&r.spec) || (new_front && r.spec.tls))
        .map(|(port, _)| *port)
        .collect();
    for port in stale {
        if let Some(old) = running.remove(&port) {
            old.stop.cancel();
            let _ = old.accept.await;
            info!(listener = %listener_name(port).log_name(), addr = %old.bound, "listener closed");
        }
    }
    for (port, spec) in wanted {
        if running.contains_key(&port) {
            continue;
        }
        let identity = front.as_ref().map(|f| &f.identity);
        running.insert(port, open(ctx, shared, port, spec, identity).await?);
    }
    Ok(())
}

fn listener_name(port: u16) -> ListenerName {
    ListenerName::Gateway(format!("ingress:{port}"))
}

/// Binds and starts one listener.
async fn open(
    ctx: &Context,
    shared: &Shared,
    port: u16,
    spec: Spec,
    front: Option<&Arc<Identity>>,
) -> Result<Running, ProxyError> {
    let name = listener_name(port);
    let (listener, bound) = crate::listener::bind(&name, SocketAddr::new(shared.ip, port)).await?;
    let stop = ctx.stop.child_token();
    let label = name.log_name();
    let target = match spec.listener.parsed_protocol() {
        Some(ListenerProtocol::Http) => {
            let mut routes = Vec::new();
            let mut wildcard = None;
            for service in &spec.listener.services {
                let request = Arc::new(HeaderChanges::parse(service.request_headers.as_ref()));
                let response = Arc::new(HeaderChanges::parse(service.response_headers.as_ref()));
                if service.name == "*" {
                    let (ctx, stop) = (ctx.clone(), stop.clone());
                    let make: MakeStack = Arc::new(move |name: &str| {
                        ctx.http_outbound(name, &stop)
                            .map(|outbound| outbound.stack())
                            .ok()
                    });
                    wildcard = Some((make, request, response));
                    continue;
                }
                let outbound = ctx.http_outbound(&service.name, &stop)?;
                routes.push(HostRoute {
                    service: service.name.clone(),
                    hosts: service
                        .hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    stack: outbound.stack(),
                    request,
                    response,
                });
            }
            let router = HostRouter::new(routes, wildcard);
            let http = Arc::new(crate::http::Ingress::new(
                &label,
                router,
                ctx.http_metrics.clone(),
            ));
            let tls = match (spec.tls, front) {
                (true, Some(identity)) => Some(
                    tls::Front::new(identity, shared.tls_metrics.clone())
                        .map_err(ProxyError::Tls)?,
                ),
                _ => None,
            };
            Target::Ingress { http, tls }
        }
        _ => match spec.listener.services.first() {
            Some(service) => ctx.tcp_target(&service.name, &stop)?,
            None => Target::Balanced {
                endpoints: watch::channel(Arc::default()).1,
                picker: Arc::default(),
                failures: Arc::default(),
                tls: None,
            },
        },
    };
    let metrics = ctx.metrics.listener(Direction::Outbound, &label);
    let accept = ctx.accept(name, listener, target, metrics);
    let handle = ctx.tasks.spawn(accept.run(stop.clone()));
    Ok(Running {
        spec,
        stop,
        accept: handle,
        bound,
    })
}
