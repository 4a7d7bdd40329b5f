//! mTLS between sidecars: this sidecar's identity (key, leaf certificate, trusted roots) and the
//! TLS wrapping of both directions.
//!
//! ```text
//!  identity::obtain ─► Identity { roots: ArcSwap<Roots>, leaf: ArcSwap<Leaf> }
//!        │                   ▲ roots: blocking query on /v1/connect/ca/roots
//!        │                   └ leaf: renewed at about half its life (renew::renew_at), or at
//!        │                     once when the active root changes
//!        ▼
//!  Inbound::accept  (TLS 1.3 only, client certificate required) ─► peer identity ─► authorize
//!  Outbound::connect (TLS 1.3 only, the upstream's SPIFFE id required)
//! ```
//!
//! The private key is generated here and never leaves the process: the CA sees a CSR. Every
//! handshake reads the current leaf and roots, so renewal and rotation never touch established
//! connections and never rebuild a TLS configuration. Each refused handshake is counted in
//! `plexus_proxy_tls_refusals_total{direction,reason}` and logged with its reason.

mod gateway;
pub(crate) mod identity;
pub(crate) mod peer;
pub(crate) mod renew;
mod verify;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use plexus_api::connect::ServiceId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{ServerName, TrustAnchor};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

pub(crate) use gateway::{Front, Leaves, Originate, SniInbound, sni};
pub(crate) use peer::PeerRefusal;

/// The ALPN protocol of raw TCP between sidecars, version 1 (no verdict frame: a denied
/// connection is just closed). Still accepted from, and offered to, older sidecars.
pub const ALPN: &[u8] = b"plexus-tcp/1";
/// Raw TCP between sidecars, version 2: the inbound's first bytes are its verdict
/// (`authorize::verdict`), so the calling sidecar can tell a denial from a network error.
pub const ALPN_TCP: &[u8] = b"plexus-tcp/2";
/// The ALPN protocol of HTTP traffic between sidecars: HTTP/2 inside TLS, every request of
/// every downstream connection multiplexed over pooled connections.
pub const ALPN_H2: &[u8] = b"plexus-h2";
/// Longest time a peer may take to complete a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The roots this sidecar trusts now.
#[derive(Debug)]
pub(crate) struct Roots {
    /// The trust domain.
    pub trust_domain: String,
    /// Every trusted root (during a rotation, both).
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The root that signs new leaves.
    pub active_id: String,
}

/// This sidecar's current leaf.
#[derive(Debug)]
pub(crate) struct Leaf {
    /// Chain (leaf first, then any cross-signed root) and signing key.
    pub key: Arc<CertifiedKey>,
    /// The SPIFFE id in it.
    pub spiffe_id: String,
    /// The root that signed it.
    pub root_id: String,
    /// When it was received (Unix seconds).
    pub issued: f64,
    /// When it expires (Unix seconds).
    pub not_after: f64,
}

/// This sidecar's identity; read at each handshake.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Trusted roots.
    pub roots: ArcSwap<Roots>,
    /// The current leaf.
    pub leaf: ArcSwap<Leaf>,
    /// The crypto provider (aws-lc-rs).
    pub provider: Arc<CryptoProvider>,
    /// Our own identity (trust domain, dc, service).
    pub service: ServiceId,
}

/// The crypto provider every TLS configuration uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    direction: &'static str,
    reason: &'static str,
}

/// Identity and TLS metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsMetrics {
    refusals: Family<RefusalLabels, Counter>,
    /// Leaves obtained after the first.
    pub renewals: Counter,
    /// Failed attempts to obtain a leaf.
    pub renewal_failures: Counter,
    /// Expiry of the current leaf (Unix seconds).
    pub leaf_expiry: Gauge,
    /// Roots trusted now.
    pub roots: Gauge,
}

impl TlsMetrics {
    /// Registers under `plexus_proxy_`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("plexus_proxy");
        sub.register(
            "tls_refusals",
            "Handshakes refused, by direction and reason",
            metrics.refusals.clone(),
        );
        sub.register(
            "leaf_renewals",
            "Leaf certificates obtained after the first",
            metrics.renewals.clone(),
        );
        sub.register(
            "leaf_renewal_failures",
            "Failed attempts to obtain a leaf certificate",
            metrics.renewal_failures.clone(),
        );
        sub.register(
            "leaf_expiry_seconds",
            "Expiry of the current leaf certificate, Unix seconds",
            metrics.leaf_expiry.clone(),
        );
        sub.register(
            "roots_trusted",
            "CA roots trusted now",
            metrics.roots.clone(),
        );
        metrics
    }

    fn refused(&self, direction: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { direction, reason })
            .inc();
    }
}

/// Why a handshake failed, as a bounded label and a sentence.
/// A server handshake within [`HANDSHAKE_TIMEOUT`]. A refusal is counted under `direction` with
/// its [`classify`]d reason and returned (reason, detail) for the caller to log at its level.
pub(crate) async fn server_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    metrics: &TlsMetrics,
    direction: &'static str,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, (&'static str, String)> {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let result = match handshake.await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
        )),
    };
    result.map_err(|error| {
        let (reason, detail) = classify(&error);
        metrics.refused(direction, reason);
        (reason, detail)
    })
}

/// Logs a refused inbound handshake. A peer that connects and closes without finishing a
/// handshake is what TCP health checks of the port do (the agent's `sidecar ready` check,
/// Consul's "Connect Sidecar Listening"): counted, and logged at debug only; every other refusal
/// is a warning.
pub(crate) fn log_refused(peer: SocketAddr, reason: &str, detail: &str, message: &str) {
    if reason == "handshake_aborted" {
        tracing::debug!(%peer, reason, %detail, "{message}");
    } else {
        warn!(%peer, reason, %detail, "{message}");
    }
}

pub(crate) fn classify(error: &io::Error) -> (&'static str, String) {
    use rustls::{CertificateError, Error};
    if error.kind() == io::ErrorKind::TimedOut {
        return ("handshake_timeout", error.to_string());
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => (
                "handshake_aborted",
                "the peer closed the connection during the handshake".to_owned(),
            ),
            _ => ("handshake_io", error.to_string()),
        };
    };
    let reason = match tls {
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PeerRefusal>() {
                Some(refusal) => return (refusal.reason(), refusal.to_string()),
                None => "bad_certificate",
            }
        }
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::PeerIncompatible(_) => "protocol_version",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "not_tls",
        Error::NoApplicationProtocol => "alpn",
        Error::AlertReceived(_) => "peer_alert",
        _ => "handshake_failed",
    };
    (reason, tls.to_string())
}

/// The inbound side: TLS 1.3 server requiring a client certificate from our trust domain.
#[derive(Clone)]
pub(crate) struct Inbound {
    acceptor: TlsAcceptor,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbound")
    }
}

/// Why building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the TLS configuration")]
pub struct TlsConfigError(#[source] rustls::Error);

impl Inbound {
    pub(crate) fn new(
        identity: &Arc<Identity>,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        let verifier = Arc::new(verify::PeerVerifier::new(Arc::clone(identity), None));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&identity.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsConfigError)?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(Arc::new(verify::LeafResolver(Arc::clone(identity))));
        // Every one: the client's offer decides, the first of ours it offers wins.
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec(), ALPN.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            metrics,
        })
    }

    /// Completes the handshake and returns the stream with the peer's identity. A refusal is
    /// logged and counted here; the caller just drops the connection.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ServiceId)> {
        let stream = match server_handshake(&self.acceptor, stream, &self.metrics, "inbound").await
        {
            Ok(stream) => stream,
            Err((reason, detail)) => {
                log_refused(peer, reason, &detail, "inbound TLS handshake refused");
                return None;
            }
        };
        let (_, connection) = stream.get_ref();
        let identity = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer::facts(leaf).ok())
            .and_then(|facts| facts.uris.first().and_then(|uri| ServiceId::parse(uri)));
        match identity {
            Some(identity) => Some((stream, identity)),
            None => {
                // The verifier has already required exactly this; kept as a guard.
                self.metrics.refused("inbound", "not_spiffe");
                warn!(%peer, reason = "not_spiffe", "inbound peer has no SPIFFE id");
                None
            }
        }
    }
}

/// The outbound side: TLS 1.3 client presenting our leaf and requiring the upstream's identity.
#[derive(Clone)]
pub(crate) struct Outbound {
    connector: TlsConnector,
    metrics: TlsMetrics,
    expected: String,
    /// The server name sent: the destination's [`sni`] name, so a terminating gateway in front
    /// of several services knows which one is asked for.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("expected", &self.expected)
            .finish()
    }
}

impl Outbound {
    /// A client for connections to `destination` (service name) offering the ALPN protocol
    /// `alpn` only ([`ALPN_H2`] for HTTP).
    pub(crate) fn with_alpn(
        identity: &Arc<Identity>,
        destination: &str,
        metrics: TlsMetrics,
        alpn: &[u8],
    ) -> Result<Self, TlsConfigError> {
        Self::with_alpns(identity, destination, metrics, &[alpn])
    }

    /// A client for raw TCP to `destination`: offers [`ALPN_TCP`] (with the inbound's verdict),
    /// then [`ALPN`] for older sidecars.
    pub(crate) fn tcp(
        identity: &Arc<Identity>,
        destination: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        Self::with_alpns(identity, destination, metrics, &[ALPN_TCP, ALPN])
    }

    /// Like [`Outbound::with_alpn`] ([`ALPN_H2`]), to `destination` in another datacenter
    /// `datacenter` (through its mesh gateway).
    pub(crate) fn h2_in(
        identity: &Arc<Identity>,
        destination: &str,
        datacenter: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        Self::build(identity, destination, datacenter, metrics, &[ALPN_H2])
    }

    /// Like [`Outbound::tcp`], to `destination` in another datacenter `datacenter` (through its
    /// mesh gateway): the SNI and the SPIFFE id required name that datacenter.
    pub(crate) fn tcp_in(
        identity: &Arc<Identity>,
        destination: &str,
        datacenter: &str,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        Self::build(
            identity,
            destination,
            datacenter,
            metrics,
            &[ALPN_TCP, ALPN],
        )
    }

    /// The SPIFFE id the upstream must present.
    pub(crate) fn expected(&self) -> &str {
        &self.expected
    }

    fn with_alpns(
        identity: &Arc<Identity>,
        destination: &str,
        metrics: TlsMetrics,
        alpns: &[&[u8]],
    ) -> Result<Self, TlsConfigError> {
        let datacenter = identity.service.datacenter.clone();
        Self::build(identity, destination, &datacenter, metrics, alpns)
    }

    fn build(
        identity: &Arc<Identity>,
        destination: &str,
        datacenter: &str,
        metrics: TlsMetrics,
        alpns: &[&[u8]],
    ) -> Result<Self, TlsConfigError> {
        let expected = plexus_api::connect::service_spiffe_id(
            &identity.service.trust_domain,
            datacenter,
            destination,
        );
        let verifier = Arc::new(verify::PeerVerifier::new(
            Arc::clone(identity),
            Some(expected.clone()),
        ));
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::clone(&identity.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsConfigError)?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(Arc::new(verify::LeafResolver(Arc::clone(identity))));
        config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        let sni =
            ServerName::try_from(sni(destination, datacenter, &identity.service.trust_domain)).ok();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            metrics,
            expected,
            sni,
        })
    }

    /// Runs the client handshake over a connected stream.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        endpoint: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(endpoint.ip().into()));
        let result =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream))
                .await
            {
                Ok(result) => result,
                Err(_elapsed) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                )),
            };
        if let Err(error) = &result {
            let (reason, detail) = classify(error);
            self.metrics.refused("outbound", reason);
            warn!(%endpoint, expected = %self.expected, reason, %detail, "outbound TLS handshake failed");
        }
        result
    }
}

/// Logs the identity in use (one line per leaf).
pub(crate) fn log_leaf(leaf: &Leaf, renewal: bool) {
    info!(
        spiffe_id = %leaf.spiffe_id,
        root_id = %leaf.root_id,
        expires_in_secs = (leaf.not_after - leaf.issued).round() as i64,
        renewal,
        "leaf certificate in use"
    );
}
