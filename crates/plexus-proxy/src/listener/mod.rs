//! Listener: the inbound listener and one outbound listener per upstream, opened and closed as the
//! sidecar's registration changes.
//!
//! [`Listeners::apply`] takes the running set to a [`SidecarConfig`] ([`diff::plan`] decides
//! what changes). Closing a listener stops accepting; connections it accepted keep running.

mod accept;
mod diff;
mod failover;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use plexus_runtime::telemetry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

pub(crate) use accept::InboundSecurity;
pub(crate) use accept::Limits;
pub(crate) use accept::{Accept, ServeConnection, Target};
use diff::InboundChange;

use crate::admin::{Snapshot, UpstreamView};
use crate::discovery::{EndpointSet, InboundSpec, SidecarConfig, UpstreamSpec};
use crate::discovery::{Resolve, ResolveChain};
use crate::error::{ListenerName, ProxyError};
use crate::http::{self, HttpMetrics};
use crate::metrics::{Direction, LOCAL_APP, ListenerMetrics, Metrics};
use crate::tls::{self, Identity, TlsMetrics};
use plexus_runtime::ErrorChain;

/// What every listener shares.
#[derive(Clone)]
pub(crate) struct Context {
    /// Accept loops and connections are spawned here.
    pub tasks: TaskTracker,
    /// Stops every listener (shutdown); each listener has a child token.
    pub stop: CancellationToken,
    /// Cuts in-flight connections once the drain grace period is over.
    pub kill: CancellationToken,
    /// Where listeners find their metrics.
    pub metrics: Metrics,
    /// Per-listener bounds.
    pub limits: Limits,
    /// Endpoint discovery for outbound listeners.
    pub resolve: Resolve,
    /// mTLS and intentions.
    pub security: Security,
    /// HTTP request metrics.
    pub http_metrics: HttpMetrics,
    /// Discovery chains for HTTP upstreams.
    pub chains: ResolveChain,
    /// Other datacenters' mesh gateways, by datacenter name.
    pub gateways: Resolve,
}

impl Context {
    /// How an HTTP upstream reaches the other services its chain names: their endpoint
    /// watches and an mTLS client (ALPN `plexus-h2`) verifying each one's identity.
    pub(crate) fn remote(&self) -> http::targets::Remote {
        let (identity, metrics) = (
            Arc::clone(&self.security.identity),
            self.security.metrics.clone(),
        );
        let (identity_in, metrics_in) = (Arc::clone(&identity), metrics.clone());
        http::targets::Remote {
            resolve: Arc::clone(&self.resolve),
            tls: Some(Arc::new(move |service: &str| {
                tls::Outbound::with_alpn(&identity, service, metrics.clone(), tls::ALPN_H2)
            })),
            datacenters: Some(http::targets::Datacenters {
                gateways: Arc::clone(&self.gateways),
                tls: Arc::new(move |service: &str, datacenter: &str| {
                    tls::Outbound::h2_in(&identity_in, service, datacenter, metrics_in.clone())
                }),
            }),
        }
    }

    /// The HTTP path to `destination` as an upstream listener has it (its discovery chain,
    /// endpoints, pooled HTTP/2 over mTLS), its watches stopped by `stop`. An ingress gateway
    /// calls it for each service it routes to.
    pub(crate) fn http_outbound(
        &self,
        destination: &str,
        stop: &CancellationToken,
    ) -> Result<Arc<http::Outbound>, ProxyError> {
        let tls = tls::Outbound::with_alpn(
            &self.security.identity,
            destination,
            self.security.metrics.clone(),
            tls::ALPN_H2,
        )
        .map_err(ProxyError::Tls)?;
        Ok(Arc::new(http::Outbound::new(http::stack::OutboundParts {
            destination: destination.to_owned(),
            endpoints: (self.resolve)(destination, stop.clone()),
            tls: Some(tls),
            metrics: self.http_metrics.clone(),
            connect_timeout: self.limits.connect_timeout,
            tasks: self.tasks.clone(),
            kill: self.kill.clone(),
            chain: (self.chains)(destination, stop.clone()),
            remote: self.remote(),
            stop: stop.clone(),
            connect: None,
        })))
    }

    /// The L4 path to `destination`: new connections round-robin over its endpoints, mTLS
    /// with the destination's verdict.
    pub(crate) fn tcp_target(
        &self,
        destination: &str,
        stop: &CancellationToken,
    ) -> Result<Target, ProxyError> {
        let tls = tls::Outbound::tcp(
            &self.security.identity,
            destination,
            self.security.metrics.clone(),
        )
        .map_err(ProxyError::Tls)?;
        Ok(Target::Balanced {
            endpoints: (self.resolve)(destination, stop.clone()),
            picker: Arc::default(),
            failures: Arc::default(),
            tls: Some(tls),
        })
    }

    /// The L4 path to `destination` in another datacenter: its mesh gateways, mTLS naming
    /// that datacenter.
    pub(crate) fn remote_target(
        &self,
        destination: &str,
        datacenter: &str,
        stop: &CancellationToken,
    ) -> Result<Target, ProxyError> {
        let tls = tls::Outbound::tcp_in(
            &self.security.identity,
            destination,
            datacenter,
            self.security.metrics.clone(),
        )
        .map_err(ProxyError::Tls)?;
        Ok(Target::Balanced {
            endpoints: (self.gateways)(datacenter, stop.clone()),
            picker: Arc::default(),
            failures: Arc::default(),
            tls: Some(tls),
        })
    }

    /// `local` with failover to the datacenters `destination`'s chain names.
    fn with_failover(
        &self,
        local: Target,
        chain: crate::discovery::ChainWatch,
        destination: &str,
        stop: &CancellationToken,
    ) -> Target {
        let (ctx, name, stop) = (self.clone(), destination.to_owned(), stop.clone());
        let remotes = failover::Remotes::new(Box::new(move |datacenter: &str| {
            ctx.remote_target(&name, datacenter, &stop)
        }));
        failover::wrap(local, chain, destination, Arc::new(remotes))
    }

    /// A bound listener's accept loop over `target`.
    pub(crate) fn accept(
        &self,
        name: ListenerName,
        listener: TcpListener,
        target: Target,
        metrics: ListenerMetrics,
    ) -> Accept {
        Accept {
            name,
            listener,
            target,
            metrics,
            limits: self.limits,
            tasks: self.tasks.clone(),
            kill: self.kill.clone(),
        }
    }
}

/// What secures the listeners: this sidecar's identity and the inbound demands.
#[derive(Debug, Clone)]
pub(crate) struct Security {
    /// The identity (leaf, roots).
    pub identity: Arc<Identity>,
    /// TLS metrics.
    pub metrics: TlsMetrics,
    /// The inbound TLS server and intention check.
    pub inbound: InboundSecurity,
}

/// What to do when a listener cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnBindError {
    /// Return the error (the first configuration: the proxy cannot start).
    Fail,
    /// Log it and carry on without that listener (later changes); the next change retries it.
    Skip,
}

/// The running listeners.
pub(crate) struct Listeners {
    ctx: Context,
    inbound: Option<Inbound>,
    upstreams: BTreeMap<String, Upstream>,
}

struct Running {
    bound: SocketAddr,
    stop: CancellationToken,
    accept: JoinHandle<()>,
}

impl Running {
    /// Stops accepting and waits until the socket is closed.
    async fn close(self, name: &ListenerName) {
        self.stop.cancel();
        let _ = self.accept.await;
        info!(listener = %name.log_name(), addr = %self.bound, "listener closed");
    }
}

struct Inbound {
    spec: InboundSpec,
    app: watch::Sender<SocketAddr>,
    running: Running,
}

struct Upstream {
    spec: UpstreamSpec,
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// Endpoints ejected by outlier detection (HTTP upstreams; always empty for TCP).
    ejected: watch::Receiver<Vec<SocketAddr>>,
    running: Running,
}

impl Listeners {
    /// No listeners yet.
    pub(crate) fn new(ctx: Context) -> Self {
        Self {
            ctx,
            inbound: None,
            upstreams: BTreeMap::new(),
        }
    }

    /// Opens, closes and re-targets listeners so they match `config`.
    pub(crate) async fn apply(
        &mut self,
        config: &SidecarConfig,
        on_bind_error: OnBindError,
    ) -> Result<(), ProxyError> {
        let running: BTreeMap<String, UpstreamSpec> = self
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), upstream.spec.clone()))
            .collect();
        let plan = diff::plan(self.inbound.as_ref().map(|i| &i.spec), &running, config);
        if plan.is_empty() {
            return Ok(());
        }
        for destination in plan.close {
            if let Some(upstream) = self.upstreams.remove(&destination) {
                self.ctx.metrics.forget_endpoints(&destination);
                upstream
                    .running
                    .close(&ListenerName::Upstream(destination))
                    .await;
            }
        }
        match plan.inbound {
            InboundChange::Keep => {}
            InboundChange::Retarget(app) => {
                if let Some(inbound) = self.inbound.as_mut() {
                    info!(local_app = %app, "inbound listener now forwards to a new local app address");
                    inbound.spec.local_app = app;
                    inbound.app.send_replace(app);
                }
            }
            InboundChange::Bind(spec) => {
                if let Some(old) = self.inbound.take() {
                    old.running.close(&ListenerName::Inbound).await;
                }
                match self.open_inbound(spec, &config.destination).await {
                    Ok(inbound) => self.inbound = Some(inbound),
                    Err(error) => on_bind_error.handle(error)?,
                }
            }
        }
        for spec in plan.open {
            let destination = spec.destination.clone();
            match self.open_upstream(spec).await {
                Ok(upstream) => {
                    self.upstreams.insert(destination, upstream);
                }
                Err(error) => on_bind_error.handle(error)?,
            }
        }
        Ok(())
    }

    /// What the admin server shows for `config`, applied.
    pub(crate) fn snapshot(&self, config: &SidecarConfig) -> Snapshot {
        Snapshot {
            service: config.sidecar_id.clone(),
            destination: config.destination.clone(),
            revision: config.revision,
            inbound: self
                .inbound
                .as_ref()
                .map(|inbound| (inbound.running.bound, inbound.spec.local_app)),
            upstreams: self
                .upstreams
                .values()
                .map(|upstream| UpstreamView {
                    destination: upstream.spec.destination.clone(),
                    bind: upstream.running.bound,
                    endpoints: upstream.endpoints.clone(),
                    ejected: upstream.ejected.clone(),
                })
                .collect(),
        }
    }

    async fn open_inbound(&self, spec: InboundSpec, service: &str) -> Result<Inbound, ProxyError> {
        let name = ListenerName::Inbound;
        let (listener, bound) = bind(&name, spec.bind).await?;
        let (app, app_rx) = watch::channel(spec.local_app);
        let metrics = self.ctx.metrics.listener(Direction::Inbound, LOCAL_APP);
        // The local app is the inbound direction's one endpoint.
        self.ctx.metrics.endpoints(LOCAL_APP).set(1);
        let stop = self.ctx.stop.child_token();
        // No protocol in the registration: the service's own chain decides.
        let chain = (!spec.explicit).then(|| (self.ctx.chains)(service, stop.clone()));
        let http = Arc::new(http::Inbound::new(
            app_rx.clone(),
            spec.protocol,
            chain,
            self.ctx.http_metrics.clone(),
            self.ctx.limits.connect_timeout,
            self.ctx.tasks.clone(),
            self.ctx.kill.clone(),
        ));
        let target = Target::Local {
            app: app_rx,
            security: Some(self.ctx.security.inbound.clone()),
            http,
            http_only: spec.explicit && spec.protocol.is_http(),
        };
        let accept = self.accept(name, listener, target, metrics);
        let running = self.spawn(accept, bound, stop);
        Ok(Inbound { spec, app, running })
    }

    async fn open_upstream(&self, spec: UpstreamSpec) -> Result<Upstream, ProxyError> {
        let name = ListenerName::Upstream(spec.destination.clone());
        let (listener, bound) = bind(&name, spec.bind).await?;
        let metrics = self
            .ctx
            .metrics
            .listener(Direction::Outbound, &spec.destination);
        // The endpoint watch stops with the listener.
        let stop = self.ctx.stop.child_token();
        if let Some(datacenter) = &spec.datacenter {
            let target = self
                .ctx
                .remote_target(&spec.destination, datacenter, &stop)?;
            let endpoints = match &target {
                Target::Balanced { endpoints, .. } => endpoints.clone(),
                _ => watch::channel(Arc::new(EndpointSet::default())).1,
            };
            let accept = self.accept(name, listener, target, metrics);
            let running = self.spawn(accept, bound, stop);
            return Ok(Upstream {
                spec,
                endpoints,
                ejected: watch::channel(Vec::new()).1,
                running,
            });
        }
        let endpoints = (self.ctx.resolve)(&spec.destination, stop.clone());
        let (identity, tls_metrics) = (
            &self.ctx.security.identity,
            self.ctx.security.metrics.clone(),
        );
        let tls = if spec.protocol.is_http() {
            tls::Outbound::with_alpn(identity, &spec.destination, tls_metrics, tls::ALPN_H2)
        } else {
            tls::Outbound::tcp(identity, &spec.destination, tls_metrics)
        }
        .map_err(ProxyError::Tls)?;
        let http = |tls, chain| {
            Arc::new(http::Outbound::new(http::stack::OutboundParts {
                destination: spec.destination.clone(),
                endpoints: endpoints.clone(),
                tls: Some(tls),
                metrics: self.ctx.http_metrics.clone(),
                connect_timeout: self.ctx.limits.connect_timeout,
                tasks: self.ctx.tasks.clone(),
                kill: self.ctx.kill.clone(),
                chain,
                remote: self.ctx.remote(),
                stop: stop.clone(),
                connect: None,
            }))
        };
        let mut ejected = watch::channel(Vec::new()).1;
        let target = if spec.protocol.is_http() {
            let outbound = http(tls, (self.ctx.chains)(&spec.destination, stop.clone()));
            ejected = outbound.ejected();
            Target::Http(outbound)
        } else if spec.explicit {
            let local = Target::Balanced {
                endpoints: endpoints.clone(),
                picker: Arc::default(),
                failures: Arc::default(),
                tls: Some(tls),
            };
            let chain = (self.ctx.chains)(&spec.destination, stop.clone());
            self.ctx
                .with_failover(local, chain, &spec.destination, &stop)
        } else {
            // No protocol in the registration: the chain decides per connection.
            let chain = (self.ctx.chains)(&spec.destination, stop.clone());
            let h2 = tls::Outbound::with_alpn(
                &self.ctx.security.identity,
                &spec.destination,
                self.ctx.security.metrics.clone(),
                tls::ALPN_H2,
            )
            .map_err(ProxyError::Tls)?;
            let outbound = http(h2, chain.clone());
            ejected = outbound.ejected();
            let l4 = self.ctx.with_failover(
                Target::Balanced {
                    endpoints: endpoints.clone(),
                    picker: Arc::default(),
                    failures: Arc::default(),
                    tls: Some(tls),
                },
                chain.clone(),
                &spec.destination,
                &stop,
            );
            Target::ByChain {
                http: outbound,
                l4: Box::new(l4),
                chain,
            }
        };
        let accept = self.accept(name, listener, target, metrics);
        let running = self.spawn(accept, bound, stop);
        Ok(Upstream {
            spec,
            endpoints,
            ejected,
            running,
        })
    }

    fn accept(
        &self,
        name: ListenerName,
        listener: TcpListener,
        target: Target,
        metrics: ListenerMetrics,
    ) -> Accept {
        self.ctx.accept(name, listener, target, metrics)
    }

    fn spawn(&self, accept: Accept, bound: SocketAddr, stop: CancellationToken) -> Running {
        let handle = self.ctx.tasks.spawn(accept.run(stop.clone()));
        Running {
            bound,
            stop,
            accept: handle,
        }
    }
}

/// Binds `addr` and logs the listener's one `listening` line with the address actually bound.
pub(crate) async fn bind(
    name: &ListenerName,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let error = |source| ProxyError::Bind {
        listener: name.clone(),
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    telemetry::listening(&name.log_name(), bound);
    Ok((listener, bound))
}

impl OnBindError {
    fn handle(self, error: ProxyError) -> Result<(), ProxyError> {
        match self {
            OnBindError::Fail => Err(error),
            OnBindError::Skip => {
                error!(error = %ErrorChain(&error), "cannot open listener; skipping it until the next configuration change");
                Ok(())
            }
        }
    }
}
