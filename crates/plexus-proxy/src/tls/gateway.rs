//! TLS for gateways: an ingress listener's server for clients outside the mesh ([`Front`]),
//! a terminating gateway's mTLS server choosing the linked service's leaf by SNI
//! ([`SniInbound`]), and its TLS origination to servers outside the mesh ([`Originate`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use plexus_api::connect::ServiceId;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    ALPN, ALPN_H2, ALPN_TCP, HANDSHAKE_TIMEOUT, Identity, TlsConfigError, TlsMetrics, peer,
    provider, server_handshake, verify,
};

/// The TLS server of an ingress gateway listener: clients from outside the mesh (no client
/// certificate), TLS 1.2 or 1.3, served the gateway's leaf, which names the listener's hosts as
/// DNS SANs (so a client trusting the mesh CA's root verifies it).
#[derive(Clone)]
pub(crate) struct Front {
    acceptor: TlsAcceptor,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Front")
    }
}

impl Front {
    /// A server presenting `identity`'s current leaf at every handshake.
    pub(crate) fn new(
        identity: &Arc<Identity>,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&identity.provider))
                .with_safe_default_protocol_versions()
                .map_err(TlsConfigError)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(verify::LeafResolver(Arc::clone(identity))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            metrics,
        })
    }

    /// Completes the handshake; a failure is logged (debug: it is the client's) and counted.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        match server_handshake(&self.acceptor, stream, &self.metrics, "ingress").await {
            Ok(stream) => Some(stream),
            Err((reason, detail)) => {
                tracing::debug!(%peer, reason, %detail, "ingress TLS handshake refused");
                None
            }
        }
    }
}

/// The server name (SNI) of `service` in the mesh, Consul's form:
/// `<service>.default.<datacenter>.internal.<trust domain>`.
pub(crate) fn sni(service: &str, datacenter: &str, trust_domain: &str) -> String {
    format!("{service}.default.{datacenter}.internal.{trust_domain}")
}

/// The inbound side of a terminating gateway: TLS 1.3 with a client certificate of the trust
/// domain required (as [`Inbound`]), serving the leaf of the linked service the client's SNI
/// names (the gateway presents that service's identity to the mesh).
#[derive(Clone)]
pub(crate) struct SniInbound {
    acceptor: TlsAcceptor,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for SniInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniInbound")
    }
}

/// The leaves a terminating gateway serves, by SNI name.
pub(crate) type Leaves = Arc<ArcSwap<std::collections::BTreeMap<String, Arc<Identity>>>>;

#[derive(Debug)]
struct SniResolver(Leaves);

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let leaves = self.0.load();
        leaves
            .get(&name)
            .map(|identity| Arc::clone(&identity.leaf.load().key))
    }
}

impl SniInbound {
    /// A server checking clients against `identity`'s roots and serving `leaves` by SNI; ALPN
    /// `plexus-h2` (HTTP) or raw TCP (`plexus-tcp/2`, `/1`).
    pub(crate) fn new(
        identity: &Arc<Identity>,
        leaves: Leaves,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsConfigError> {
        let verifier = Arc::new(verify::PeerVerifier::new(Arc::clone(identity), None));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&identity.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsConfigError)?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(Arc::new(SniResolver(leaves)));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec(), ALPN.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            metrics,
        })
    }

    /// Completes the handshake: the stream, the peer's identity and the SNI name it asked for.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(
        tokio_rustls::server::TlsStream<TcpStream>,
        ServiceId,
        String,
    )> {
        let stream = match server_handshake(&self.acceptor, stream, &self.metrics, "inbound").await
        {
            Ok(stream) => stream,
            Err((reason, detail)) => {
                super::log_refused(
                    peer,
                    reason,
                    &detail,
                    "terminating gateway TLS handshake refused",
                );
                return None;
            }
        };
        let (_, connection) = stream.get_ref();
        let sni = connection.server_name()?.to_ascii_lowercase();
        let identity = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer::facts(leaf).ok())
            .and_then(|facts| facts.uris.first().and_then(|uri| ServiceId::parse(uri)))?;
        Some((stream, identity, sni))
    }
}

/// TLS origination to a server outside the mesh (a terminating gateway's linked service):
/// its certificate verified against `CAFile`, for the `SNI` name (else its IP), with an
/// optional client certificate.
#[derive(Clone)]
pub(crate) struct Originate {
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// Why a linked service's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OriginateError {
    /// A file cannot be read or holds no usable PEM.
    #[error("{field} {path:?}: {message}")]
    File {
        /// `CAFile`, `CertFile` or `KeyFile`.
        field: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The TLS configuration cannot be built.
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

impl Originate {
    /// A client for `ca_file` (PEM roots), an optional `(cert_file, key_file)` pair, and the
    /// server name `sni`.
    pub(crate) fn new(
        ca_file: &str,
        client: Option<(&str, &str)>,
        sni: Option<&str>,
    ) -> Result<Self, OriginateError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let file_error = |field: &'static str, path: &str, message: String| OriginateError::File {
            field,
            path: path.to_owned(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| file_error("CAFile", ca_file, e.to_string()))?
        {
            let cert = cert.map_err(|e| file_error("CAFile", ca_file, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| file_error("CAFile", ca_file, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(file_error(
                "CAFile",
                ca_file,
                "no certificate in it".to_owned(),
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(OriginateError::Config)?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .map_err(|e| file_error("CertFile", cert_file, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_error("CertFile", cert_file, e.to_string()))?;
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|e| file_error("KeyFile", key_file, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(OriginateError::Config)?
            }
        };
        let sni = sni.and_then(|name| ServerName::try_from(name.to_owned()).ok());
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// The client handshake over a connected stream to `endpoint`.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        endpoint: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(endpoint.ip().into()));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            )),
        }
    }
}
