//! Envoy's Aggregated Discovery Service over tonic: state of the world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`).
//!
//! Each stream is its own task: it reads the first request's node id (the proxy's service id),
//! attaches to that proxy's configuration ([`Registry::attach`]: one builder per proxy, however
//! many streams), then alternates between Envoy's requests and configuration changes, driven by
//! the pure [`session::Session`]. Wire types are converted to the session's own at the edge
//! ([`wire`]). A stream never waits on anything but its own Envoy and the `watch` channel of its
//! proxy's configuration, so a slow or stuck Envoy delays nobody else.

mod session;
mod status;
mod wire;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request as TonicRequest, Response as TonicResponse, Status, Streaming};
use tracing::{debug, info, warn};

use plexus_api::acl::SecretId;
use plexus_api::client::Client;
use plexus_runtime::acl::{ResolveError, Resolver};

use crate::model::ProxySpec;
use crate::proxy::{self, Built};
use crate::source::Hub;
use session::{Mode, Outcome, Session};
pub(crate) use status::StatusBook;
use wire::Wire;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the control plane's first list of this node's services.
const REGISTRATIONS_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per stream before the stream waits for its Envoy to read.
const STREAM_BUFFER: usize = 4;
/// The gRPC metadata key carrying an ACL token (Consul's).
pub const TOKEN_METADATA: &str = "x-consul-token";

/// The proxies this server serves, each built once and shared by its streams.
pub(crate) struct Registry {
    /// The control plane's API, without a token.
    client: Client,
    /// Resolves the tokens Envoys present.
    resolver: Resolver,
    /// What is followed for each token Envoys present (`""`: no token), so every read is made
    /// with the proxy's own token, as Consul does; proxies with the same token share it.
    hubs: Mutex<HashMap<String, Hub>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// By proxy id and token.
    proxies: Mutex<HashMap<(String, String), Weak<Attached>>>,
    pub(crate) status: Arc<StatusBook>,
}

/// A proxy's configuration, kept current while any stream holds this.
pub(crate) struct Attached {
    resources: watch::Receiver<Option<Arc<Built>>>,
    stop: CancellationToken,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Registry {
    pub(crate) fn new(
        client: Client,
        resolver: Resolver,
        tasks: TaskTracker,
        stop: CancellationToken,
        status: Arc<StatusBook>,
    ) -> Self {
        Self {
            client,
            resolver,
            hubs: Mutex::new(HashMap::new()),
            tasks,
            stop,
            proxies: Mutex::new(HashMap::new()),
            status,
        }
    }

    /// The followed inputs read with `token`.
    fn hub_for(&self, token: Option<&SecretId>) -> Hub {
        let key = token.map(|t| t.expose().to_owned()).unwrap_or_default();
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.entry(key)
            .or_insert_with(|| {
                Hub::new(
                    self.client.clone().with_token(token.cloned()),
                    self.tasks.clone(),
                )
            })
            .clone()
    }

    /// The configuration of `proxy_id`, which must be a valid connect-proxy registered on this
    /// node that `token` may run: `service:write` on its service, as for its leaf.
    pub(crate) async fn attach(
        &self,
        proxy_id: &str,
        token: Option<&SecretId>,
    ) -> Result<Arc<Attached>, Status> {
        let authz = self
            .resolver
            .0
            .resolve(token)
            .await
            .map_err(|error| match error {
                ResolveError::NotFound => Status::permission_denied("ACL not found"),
                ResolveError::Unavailable(_) => {
                    Status::unavailable("cannot resolve the stream's token; retry")
                }
            })?;
        let hub = self.hub_for(token);
        let mut services = hub.node_services.subscribe("");
        let known = tokio::time::timeout(REGISTRATIONS_TIMEOUT, async {
            loop {
                if let Some(latest) = services.rx.borrow_and_update().clone() {
                    return Some(latest);
                }
                if services.rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| Status::unavailable("the control plane has not answered yet; retry"))?;
        let Some(service) = known.value.get(proxy_id) else {
            let visible = if authz.enforcing() {
                " (that this stream's token may read: x-consul-token)"
            } else {
                ""
            };
            return Err(Status::not_found(format!(
                "node.id {proxy_id:?} names no connect-proxy service registered on this node{visible}"
            )));
        };
        if let Err(error) = ProxySpec::from_service(service) {
            return Err(Status::failed_precondition(format!(
                "proxy {proxy_id:?} cannot be served: {error}"
            )));
        }
        authz
            .require_service_write(&service.service)
            .map_err(|denied| Status::permission_denied(denied.to_string()))?;
        self.status.set_token(proxy_id, token);
        let key = (
            proxy_id.to_owned(),
            token.map(|t| t.expose().to_owned()).unwrap_or_default(),
        );
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(attached) = proxies.get(&key).and_then(Weak::upgrade) {
            return Ok(attached);
        }
        proxies.retain(|_, weak| weak.strong_count() > 0);
        let (tx, rx) = watch::channel(None);
        let stop = self.stop.child_token();
        self.tasks
            .spawn(proxy::run(proxy_id.to_owned(), hub, tx, stop.clone()));
        let attached = Arc::new(Attached {
            resources: rx,
            stop,
        });
        proxies.insert(key, Arc::downgrade(&attached));
        Ok(attached)
    }
}

/// The tonic service.
pub(crate) struct Ads {
    registry: Arc<Registry>,
}

impl Ads {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    fn start<W: Wire>(
        &self,
        mode: Mode,
        request: TonicRequest<Streaming<W::Req>>,
    ) -> ReceiverStream<Result<W::Resp, Status>> {
        let peer = request.remote_addr();
        // Never logged: resolved against ACLs when the stream attaches to its proxy.
        let token = request
            .metadata()
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(SecretId::new);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registry = Arc::clone(&self.registry);
        let stop = registry.stop.clone();
        registry.tasks.clone().spawn(async move {
            let stream = StreamStart { mode, token, peer };
            run_stream::<W>(stream, request.into_inner(), tx, registry, stop).await;
        });
        ReceiverStream::new(rx)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: TonicRequest<Streaming<DiscoveryRequest>>,
    ) -> Result<TonicResponse<Self::StreamAggregatedResourcesStream>, Status> {
        let stream = self.start::<wire::Sotw>(Mode::Sotw, request);
        Ok(TonicResponse::new(Box::pin(stream)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: TonicRequest<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<TonicResponse<Self::DeltaAggregatedResourcesStream>, Status> {
        let stream = self.start::<wire::Delta>(Mode::Delta, request);
        Ok(TonicResponse::new(Box::pin(stream)))
    }
}

/// What a stream brought along besides its requests.
struct StreamStart {
    mode: Mode,
    /// `x-consul-token`.
    token: Option<SecretId>,
    peer: Option<std::net::SocketAddr>,
}

async fn run_stream<W: Wire>(
    stream: StreamStart,
    mut requests: Streaming<W::Req>,
    out: mpsc::Sender<Result<W::Resp, Status>>,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let StreamStart { mode, token, peer } = stream;
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let first = tokio::select! {
        _ = stop.cancelled() => return,
        first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()) => first,
    };
    let first = match first {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => {
            debug!(%peer, "xDS stream closed before its first request");
            return;
        }
        Ok(Err(status)) => {
            debug!(%peer, error = %status.message(), "malformed first xDS request");
            let _ = out
                .send(Err(Status::invalid_argument(format!(
                    "malformed request: {}",
                    status.message()
                ))))
                .await;
            return;
        }
        Err(_) => {
            debug!(%peer, "xDS stream sent no request in time");
            let _ = out
                .send(Err(Status::deadline_exceeded("no request in time")))
                .await;
            return;
        }
    };
    let Some(proxy_id) = W::node_id(&first).filter(|id| !id.is_empty()) else {
        debug!(%peer, "xDS request without node.id");
        let _ = out
            .send(Err(Status::invalid_argument(
                "node.id is required: the proxy's service id",
            )))
            .await;
        return;
    };
    let attached = match registry.attach(&proxy_id, token.as_ref()).await {
        Ok(attached) => attached,
        Err(status) => {
            warn!(%peer, proxy_id, reason = %status.message(), "refusing xDS stream");
            let _ = out.send(Err(status)).await;
            return;
        }
    };
    info!(%peer, proxy_id, variant = ?mode, "xDS stream opened");
    let mut resources = attached.resources.clone();
    let mut session = Session::new(mode);
    let mut pending = Some(first);
    loop {
        if let Some(request) = pending.take() {
            match W::decode(request) {
                Ok(request) => apply(&mut session, request, &proxy_id, &registry.status),
                Err(status) => {
                    debug!(proxy_id, error = %status.message(), "bad xDS request");
                    let _ = out.send(Err(status)).await;
                    break;
                }
            }
        }
        // Send what may be sent now.
        let current = resources.borrow_and_update().clone();
        if let Some(built) = current {
            while let Some(response) = session.next_response(&built.resources, built.revision) {
                debug!(
                    proxy_id,
                    r#type = %response.type_url,
                    version = %response.version,
                    nonce = %response.nonce,
                    revision = built.revision,
                    resources = response.resources.len(),
                    removed = response.removed.len(),
                    "sending"
                );
                let sent = tokio::select! {
                    _ = stop.cancelled() => false,
                    sent = out.send(Ok(W::encode(response))) => sent.is_ok(),
                };
                if !sent {
                    info!(proxy_id, "xDS stream closed");
                    return;
                }
            }
            // Types this revision left alone (or whose response is accepted) have reached it.
            registry.status.reached(
                &proxy_id,
                session.up_to_date(&built.resources),
                built.revision,
            );
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = resources.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            message = requests.message() => match message {
                Ok(Some(request)) => pending = Some(request),
                Ok(None) => break,
                Err(status) => {
                    debug!(proxy_id, error = %status.message(), "xDS stream failed");
                    let _ = out
                        .send(Err(Status::invalid_argument(format!(
                            "malformed request: {}",
                            status.message()
                        ))))
                        .await;
                    break;
                }
            },
        }
    }
    info!(proxy_id, "xDS stream closed");
    drop(attached);
}

/// Applies one of `proxy_id`'s requests to its stream's session and records what it meant: an
/// ACK with the revision of the response it accepted, a NACK with Envoy's error.
fn apply(session: &mut Session, request: session::Request, proxy_id: &str, status: &StatusBook) {
    let type_url = request.type_url;
    match session.on_request(request) {
        Outcome::Ack { version, revision } => {
            debug!(proxy_id, r#type = %type_url, version, revision, "ACK");
            status.acked(proxy_id, type_url, &version, revision);
        }
        Outcome::Nack { version, error } => {
            warn!(
                proxy_id,
                r#type = %type_url,
                version,
                error = %error,
                "Envoy rejected the configuration (NACK); its last accepted configuration stays in force"
            );
            status.nacked(proxy_id, type_url, &version, &error);
        }
        Outcome::Stale => {
            debug!(
                proxy_id,
                r#type = %type_url,
                "stale nonce: not an ACK or NACK (delta: subscription changes applied)"
            )
        }
        Outcome::Subscribed => {
            debug!(proxy_id, r#type = %type_url, "subscription");
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::session::{Names, Request};
    use super::*;
    use crate::resources::{Resource, Resources, TypeUrl};

    fn clusters(timeout_secs: i64) -> Resources {
        let mut resources = Resources::default();
        let cluster = Cluster {
            name: "a".into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            ..Default::default()
        };
        resources.insert(TypeUrl::Cluster, Resource::new("a", &cluster));
        resources
    }

    fn request(nonce: &str) -> Request {
        request_of(TypeUrl::Cluster, nonce)
    }

    fn request_of(type_url: TypeUrl, nonce: &str) -> Request {
        Request {
            type_url,
            nonce: nonce.into(),
            version: String::new(),
            error: None,
            names: Names::Sotw(Vec::new()),
        }
    }

    #[test]
    fn an_ack_records_the_revision_of_the_response_it_accepted() {
        let book = StatusBook::new("node-1");
        let mut session = Session::new(Mode::Sotw);
        apply(&mut session, request(""), "p", &book);
        let sent = session.next_response(&clusters(1), 5).expect("clusters");
        // The configuration moves on to revision 6 while Envoy has not answered: nothing of it
        // goes out before the ACK.
        assert!(session.next_response(&clusters(2), 6).is_none());
        apply(&mut session, request(&sent.nonce), "p", &book);
        let report = book.report_of("p").expect("status");
        assert_eq!(report.revision, 5, "Envoy accepted what revision 5 built");
        assert_eq!(
            report.xds.map(|x| x.acked["CDS"].clone()),
            Some(sent.version)
        );
        // Revision 6 goes out, and its ACK moves the proxy on.
        let next = session.next_response(&clusters(2), 6).expect("revision 6");
        apply(&mut session, request(&next.nonce), "p", &book);
        assert_eq!(book.report_of("p").map(|r| r.revision), Some(6));
    }

    /// Clusters `a` (connect timeout `cluster`) and the listener `l` (named in its stat prefix
    /// `listener`).
    fn world(cluster: i64, listener: &str) -> Resources {
        let mut resources = clusters(cluster);
        let l = envoy_types::pb::envoy::config::listener::v3::Listener {
            name: "l".into(),
            stat_prefix: listener.into(),
            ..Default::default()
        };
        resources.insert(TypeUrl::Listener, Resource::new("l", &l));
        resources
    }

    /// Sends what the session would for `revision` of `resources`, Envoy answering each (a NACK
    /// for the types in `rejects`), and records what types reached `revision`, as the stream
    /// loop does.
    fn exchange(
        session: &mut Session,
        book: &StatusBook,
        resources: &Resources,
        revision: u64,
        rejects: &[TypeUrl],
    ) {
        while let Some(sent) = session.next_response(resources, revision) {
            let mut answer = request_of(sent.type_url, &sent.nonce);
            if rejects.contains(&sent.type_url) {
                answer.error = Some("rejected".into());
            }
            apply(session, answer, "p", book);
        }
        book.reached("p", session.up_to_date(resources), revision);
    }

    #[test]
    fn a_proxy_s_revision_is_the_one_every_type_has_reached() {
        let book = StatusBook::new("node-1");
        let mut session = Session::new(Mode::Sotw);
        let revision = |book: &StatusBook| book.report_of("p").map(|r| r.revision);
        apply(&mut session, request_of(TypeUrl::Cluster, ""), "p", &book);
        apply(&mut session, request_of(TypeUrl::Listener, ""), "p", &book);
        exchange(&mut session, &book, &world(1, "one"), 5, &[]);
        assert_eq!(revision(&book), Some(5));
        // Revision 6 changes both; Envoy accepts the clusters and rejects the listener: it is
        // not at revision 6, whatever the clusters say.
        exchange(
            &mut session,
            &book,
            &world(2, "two"),
            6,
            &[TypeUrl::Listener],
        );
        assert_eq!(
            revision(&book),
            Some(5),
            "the listener is still revision 5's"
        );
        let xds = book.report_of("p").and_then(|r| r.xds).expect("xds");
        assert_eq!(xds.nack.map(|n| n.type_url), Some("LDS".to_owned()));
        // Revision 7 fixes the listener and leaves the clusters as they were: both reach 7,
        // though only the listener was sent.
        exchange(&mut session, &book, &world(2, "three"), 7, &[]);
        assert_eq!(revision(&book), Some(7));
    }
}
