//! The mesh gateway: other datacenters' sidecars reach this datacenter's services through it,
//! their mTLS carried end to end (the gateway never terminates it).
//!
//! ```text
//!  dc1 sidecar ──TLS ClientHello, SNI <svc>.default.<dc>.internal.<td>──► gateway (wan address)
//!     ─► peek the ClientHello (rustls' Acceptor reads it; nothing is answered)
//!     ─► <svc>'s sidecars here (/v1/health/connect/<svc>?passing, round robin)
//!     ─► write the ClientHello bytes, then splice both ways
//! ```
//!
//! The client's sidecar verifies the destination sidecar's SPIFFE id and the destination's
//! sidecar decides the client's identity by its intentions: identities stay end to end. A
//! name that is not this shape, of another datacenter or trust domain, or a service without a
//! passing instance here, closes the connection (logged, counted as a connect error).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::balance::RoundRobin;
use crate::balance::recent::RecentFailures;
use crate::discovery::{EndpointSet, Resolve};
use crate::endpoint::{self, ByteCounters};
use crate::error::{ListenerName, ProxyError};
use crate::http::stack::BoxFuture;
use crate::listener::{Context, ServeConnection, Target};
use crate::metrics::Direction;

/// The most bytes read while looking for a complete ClientHello.
const MAX_HELLO: usize = 16 * 1024;
/// How long a client may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Services with an endpoint watch open at once (the rest are refused until one is dropped).
const MAX_SERVICES: usize = 256;

/// `plexus_gateway_mesh_connections_total{service, result}`: every connection, by the service
/// its SNI named (empty when none) and what became of it (`passed`, `no_client_hello`,
/// `not_mesh_sni`, `other_datacenter`, `too_many_services`, `no_instance`; server SNI is counted
/// under `service="server"`, with `no_servers` when the gateway has no `--servers`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MeshMetrics {
    connections: Family<ConnectionLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    service: String,
    result: &'static str,
}

impl MeshMetrics {
    /// Registers under `plexus_gateway_`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.sub_registry_with_prefix("plexus_gateway").register(
            "mesh_connections",
            "Connections through the mesh gateway, by the service the SNI named and their outcome",
            metrics.connections.clone(),
        );
        metrics
    }

    fn count(&self, service: &str, result: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                service: service.to_owned(),
                result,
            })
            .inc();
    }
}

/// What a mesh SNI name names: `<service>.default.<datacenter>.internal.<trust domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MeshName {
    pub service: String,
    pub datacenter: String,
    pub trust_domain: String,
}

impl MeshName {
    /// Parses Consul's SNI shape (lowercase compared); `None` for anything else.
    pub(crate) fn parse(sni: &str) -> Option<Self> {
        let mut parts = sni.splitn(5, '.');
        let service = parts.next()?;
        let namespace = parts.next()?;
        let datacenter = parts.next()?;
        let internal = parts.next()?;
        let trust_domain = parts.next()?;
        (!service.is_empty()
            && namespace == "default"
            && !datacenter.is_empty()
            && internal == "internal"
            && !trust_domain.is_empty())
        .then(|| Self {
            service: service.to_owned(),
            datacenter: datacenter.to_owned(),
            trust_domain: trust_domain.to_ascii_lowercase(),
        })
    }
}

/// Reads from `stream` until a whole TLS ClientHello has arrived; returns the bytes read and
/// the SNI it names (`None`: none, or not TLS).
pub(crate) async fn peek_sni(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Option<String>)> {
    let mut seen = Vec::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 2048];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok((seen, None));
        }
        seen.extend_from_slice(&chunk[..read]);
        let mut fed = &chunk[..read];
        while !fed.is_empty() {
            // No progress (or an error) means this is not a ClientHello rustls can read.
            if !matches!(acceptor.read_tls(&mut fed), Ok(taken) if taken > 0) {
                return Ok((seen, None));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((seen, sni));
            }
            Ok(None) if seen.len() < MAX_HELLO => {}
            Ok(None) | Err(_) => return Ok((seen, None)),
        }
    }
}

/// What a server SNI name names: `server.<datacenter>.<domain>` (the name in Consul's server
/// certificates, `server.dc1.consul`), sent by servers federating through mesh gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerName {
    pub datacenter: String,
}

impl ServerName {
    /// Parses `server.<datacenter>.<domain>` (the domain one label or more); `None` for anything
    /// else. Mesh names are tried first: a service called `server` keeps its own shape.
    pub(crate) fn parse(sni: &str) -> Option<Self> {
        let mut parts = sni.splitn(3, '.');
        let server = parts.next()?;
        let datacenter = parts.next()?;
        let domain = parts.next()?;
        (server.eq_ignore_ascii_case("server")
            && !datacenter.is_empty()
            && !domain.is_empty()
            && !domain.split('.').any(str::is_empty))
        .then(|| Self {
            datacenter: datacenter.to_owned(),
        })
    }
}

/// One local service's endpoints.
struct Local {
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    picker: RoundRobin,
    failures: RecentFailures<SocketAddr>,
}

/// The gateway's connections.
struct Mesh {
    datacenter: String,
    trust_domain: String,
    resolve: Resolve,
    services: Mutex<BTreeMap<String, Arc<Local>>>,
    connect_timeout: Duration,
    stop: CancellationToken,
    metrics: MeshMetrics,
    /// `--servers`: this datacenter's servers' HTTPS API, where server SNI is passed.
    servers: Vec<SocketAddr>,
    server_picker: RoundRobin,
    server_failures: RecentFailures<SocketAddr>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

/// Serves `listeners` (the LAN and, when given, the WAN address) until the context's `stop`.
pub(super) async fn run(
    ctx: Context,
    shared: Shared,
    listeners: Vec<TcpListener>,
    metrics: MeshMetrics,
    servers: Vec<SocketAddr>,
) -> Result<(), ProxyError> {
    let identity = &ctx.security.identity;
    let mesh = Arc::new(Mesh {
        datacenter: identity.service.datacenter.clone(),
        trust_domain: identity.service.trust_domain.to_ascii_lowercase(),
        resolve: Arc::clone(&ctx.resolve),
        services: Mutex::new(BTreeMap::new()),
        connect_timeout: ctx.limits.connect_timeout,
        stop: ctx.stop.clone(),
        metrics,
        servers,
        server_picker: RoundRobin::default(),
        server_failures: RecentFailures::default(),
    });
    for listener in listeners {
        let name = ListenerName::Gateway("mesh".to_owned());
        let metrics = ctx.metrics.listener(Direction::Inbound, &name.log_name());
        let accept = ctx.accept(
            name,
            listener,
            Target::Gateway(Arc::clone(&mesh) as Arc<dyn ServeConnection>),
            metrics,
        );
        ctx.tasks.spawn(accept.run(ctx.stop.clone()));
    }
    shared.ready("mesh-gateway", 0);
    info!(datacenter = %mesh.datacenter, servers = ?mesh.servers, "mesh gateway serving");
    ctx.stop.cancelled().await;
    Ok(())
}

impl ServeConnection for Mesh {
    fn serve(
        self: Arc<Self>,
        downstream: TcpStream,
        peer: SocketAddr,
        bytes: ByteCounters,
        _stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.connection(downstream, peer, bytes).await })
    }
}

impl Mesh {
    /// The local service `name`'s endpoints (a watch opened on first use); `None` past
    /// [`MAX_SERVICES`].
    fn local(&self, name: &str) -> Option<Arc<Local>> {
        let mut services = plexus_runtime::lock::lock(&self.services);
        if let Some(found) = services.get(name) {
            return Some(Arc::clone(found));
        }
        if services.len() >= MAX_SERVICES {
            return None;
        }
        let local = Arc::new(Local {
            endpoints: (self.resolve)(name, self.stop.child_token()),
            picker: RoundRobin::default(),
            failures: RecentFailures::default(),
        });
        services.insert(name.to_owned(), Arc::clone(&local));
        Some(local)
    }

    async fn connection(&self, mut downstream: TcpStream, peer: SocketAddr, bytes: ByteCounters) {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, peek_sni(&mut downstream)).await;
        let (seen, sni) = match hello {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                debug!(%peer, %error, "connection ended before its ClientHello");
                self.metrics.count("", "no_client_hello");
                return;
            }
            Err(_) => {
                warn!(%peer, "no TLS ClientHello within {HELLO_TIMEOUT:?}; closing");
                self.metrics.count("", "no_client_hello");
                return;
            }
        };
        let mesh_name = sni.as_deref().and_then(MeshName::parse);
        if mesh_name.is_none()
            && let Some(server) = sni.as_deref().and_then(ServerName::parse)
        {
            self.server_connection(downstream, peer, bytes, seen, server)
                .await;
            return;
        }
        let Some(name) = mesh_name else {
            warn!(%peer, sni = ?sni, "not a mesh TLS connection (no SNI <service>.default.<dc>.internal.<trust domain>); closing");
            self.metrics.count("", "not_mesh_sni");
            return;
        };
        if name.datacenter != self.datacenter || name.trust_domain != self.trust_domain {
            warn!(%peer, sni = ?sni, datacenter = %self.datacenter, "the SNI names another datacenter or trust domain; closing");
            self.metrics.count(&name.service, "other_datacenter");
            return;
        }
        let Some(local) = self.local(&name.service) else {
            warn!(%peer, service = %name.service, "too many services through this gateway; closing");
            self.metrics.count(&name.service, "too_many_services");
            return;
        };
        let mut endpoints = local.endpoints.clone();
        let _ = tokio::time::timeout(
            self.connect_timeout,
            endpoints.wait_for(|set| set.is_resolved()),
        )
        .await;
        let set = Arc::clone(&endpoints.borrow());
        let order = local
            .failures
            .reorder(local.picker.order(&set.addrs), Instant::now());
        let (mut upstream, endpoint) = match endpoint::dial_first(
            order,
            self.connect_timeout,
            |addr, connected| {
                if connected {
                    local.failures.record_success(addr);
                } else {
                    local.failures.record_failure(addr, Instant::now());
                }
            },
        )
        .await
        {
            Ok(connected) => connected,
            Err(error) => {
                warn!(%peer, service = %name.service, error = %plexus_runtime::ErrorChain(&error), "no instance of the service here answers; closing");
                self.metrics.count(&name.service, "no_instance");
                return;
            }
        };
        self.metrics.count(&name.service, "passed");
        if upstream.write_all(&seen).await.is_err() {
            return;
        }
        debug!(%peer, %endpoint, service = %name.service, "mesh connection passed on");
        match endpoint::splice(downstream, upstream, bytes).await {
            Ok((received, sent)) => {
                debug!(%endpoint, received, sent, "mesh connection closed");
            }
            Err(error) => debug!(%endpoint, %error, "mesh connection ended with an error"),
        }
    }
}

impl Mesh {
    /// A server's TLS (`server.<dc>.<domain>`): passed to one of this datacenter's servers
    /// (`--servers`, round robin, recently failed ones last), never terminated: the calling
    /// server verifies the server's certificate end to end.
    async fn server_connection(
        &self,
        downstream: TcpStream,
        peer: SocketAddr,
        bytes: ByteCounters,
        seen: Vec<u8>,
        server: ServerName,
    ) {
        const SERVICE: &str = "server";
        if server.datacenter != self.datacenter {
            warn!(%peer, datacenter = %server.datacenter, own = %self.datacenter, "the server SNI names another datacenter; closing");
            self.metrics.count(SERVICE, "other_datacenter");
            return;
        }
        if self.servers.is_empty() {
            warn!(%peer, "a server SNI, but this gateway knows no servers (--servers); closing");
            self.metrics.count(SERVICE, "no_servers");
            return;
        }
        let order = self
            .server_failures
            .reorder(self.server_picker.order(&self.servers), Instant::now());
        let (mut upstream, endpoint) = match endpoint::dial_first(
            order,
            self.connect_timeout,
            |addr, connected| {
                if connected {
                    self.server_failures.record_success(addr);
                } else {
                    self.server_failures.record_failure(addr, Instant::now());
                }
            },
        )
        .await
        {
            Ok(connected) => connected,
            Err(error) => {
                warn!(%peer, error = %plexus_runtime::ErrorChain(&error), "no server of this datacenter answers; closing");
                self.metrics.count(SERVICE, "no_instance");
                return;
            }
        };
        self.metrics.count(SERVICE, "passed");
        if upstream.write_all(&seen).await.is_err() {
            return;
        }
        debug!(%peer, %endpoint, "server connection passed on");
        match endpoint::splice(downstream, upstream, bytes).await {
            Ok((received, sent)) => debug!(%endpoint, received, sent, "server connection closed"),
            Err(error) => debug!(%endpoint, %error, "server connection ended with an error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_names_parse_only_in_consuls_shape() {
        assert_eq!(
            MeshName::parse("billing.default.dc2.internal.abc.plexus"),
            Some(MeshName {
                service: "billing".into(),
                datacenter: "dc2".into(),
                trust_domain: "abc.plexus".into(),
            })
        );
        for bad in [
            "",
            "billing",
            "billing.default.dc2",
            "billing.other.dc2.internal.td",
            "billing.default.dc2.external.td",
            ".default.dc2.internal.td",
            "billing.default..internal.td",
            "billing.default.dc2.internal.",
        ] {
            assert_eq!(MeshName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn server_names_parse_as_consuls_server_certificates_name_them() {
        assert_eq!(
            ServerName::parse("server.dc2.consul"),
            Some(ServerName {
                datacenter: "dc2".into()
            })
        );
        assert_eq!(
            ServerName::parse("SERVER.dc1.example.org").map(|s| s.datacenter),
            Some("dc1".into())
        );
        for bad in [
            "",
            "server",
            "server.dc2",
            "server..consul",
            "server.dc2.",
            "server.dc2.a..b",
            "client.dc2.consul",
        ] {
            assert_eq!(ServerName::parse(bad), None, "{bad}");
        }
        // A service named `server` keeps its mesh name (tried first by the gateway).
        assert!(MeshName::parse("server.default.dc2.internal.td.plexus").is_some());
    }

    /// A real TLS client's ClientHello gives its SNI; bytes that are not TLS give none; what
    /// was read is handed back whole.
    #[tokio::test]
    async fn the_sni_is_read_from_a_real_client_hello() {
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"plexus-tcp/2".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let stream = TcpStream::connect(addr).await.unwrap();
            let name =
                rustls::pki_types::ServerName::try_from("web.default.dc2.internal.td.plexus")
                    .unwrap();
            // The handshake fails (nobody answers); the ClientHello was sent.
            let _ = connector.connect(name, stream).await;
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let (seen, sni) = peek_sni(&mut stream).await.unwrap();
        assert_eq!(sni.as_deref(), Some("web.default.dc2.internal.td.plexus"));
        assert_eq!(seen[0], 0x16, "a TLS handshake record, kept whole");
        drop(stream);
        client.await.unwrap();

        let plain = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            stream
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let (seen, sni) = peek_sni(&mut stream).await.unwrap();
        assert_eq!(sni, None);
        assert!(seen.starts_with(b"GET"));
        drop(plain.await.unwrap());
    }

    proptest::proptest! {
        /// What sidecars send parses back to its parts; any other text never panics.
        #[test]
        fn sidecar_names_round_trip(
            service in "[a-z0-9][a-z0-9-]{0,20}",
            datacenter in "[a-z0-9_-]{1,12}",
            trust_domain in "[a-z0-9-]{1,12}\\.plexus",
            noise in "\\PC{0,64}",
        ) {
            let name = crate::tls::sni(&service, &datacenter, &trust_domain);
            proptest::prop_assert_eq!(
                MeshName::parse(&name),
                Some(MeshName { service, datacenter, trust_domain })
            );
            let _ = MeshName::parse(&noise);
        }
    }
}
