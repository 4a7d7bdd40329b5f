//! TLS for Plexus's own listeners and clients: the HTTP API today, the gRPC (xDS) and DNS-over-TCP
//! listeners next. One crypto provider (rustls with aws-lc-rs) everywhere.
//!
//! ```text
//! PEM files ──┐                          ┌─► server_config(identity, ClientAuth) ─► TlsServer ─► serve (HTTP)
//!             ├─► Identity / Roots ──────┤
//! CA-issued ──┘                          └─► client_config(roots, identity?) ─► plexus-api Client (reqwest)
//! ```
//!
//! - [`Identity`]: a certificate chain and its private key (the key never shows in `Debug`).
//! - [`Roots`]: trusted CA certificates (explicit roots only: no system store).
//! - [`server_config`] / [`client_config`]: rustls configurations (TLS 1.2 and 1.3, ALPN `h2`
//!   and `http/1.1` for the HTTP API).
//! - [`TlsServer`]: a listener's current server configuration, swappable (certificate renewal,
//!   a new CA root), and its client-certificate policy.
//! - [`accept`]: one connection's handshake, bounded in time; plaintext HTTP on a TLS port gets a
//!   clear 400 instead of a handshake failure.
//! - [`serve`]: the HTTP API over TLS with graceful shutdown (as `http::serve` for plain HTTP).
//!
//! It does not know where certificates come from: the binary reads files or asks the built-in CA
//! (`plexus-control`) and hands PEM text here.

mod accept;
mod serve;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use accept::{AcceptError, HANDSHAKE_TIMEOUT, PLAINTEXT_ANSWER, PeerCertificates, accept};
pub use serve::{CLIENT_CERT_REQUIRED, serve, serve_with};

/// ALPN protocols the HTTP API offers, most preferred first.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider every Plexus TLS configuration uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide default provider, so libraries that build their own rustls
/// configuration (reqwest without a preconfigured one) use it too. Call once at start-up; later
/// calls do nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// What the file should hold (`--ca-file`, …).
        what: String,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No certificate in PEM text that should hold some.
    #[error("{what}: no PEM CERTIFICATE block found")]
    NoCertificate {
        /// Where the text came from.
        what: String,
    },
    /// PEM text that does not hold a usable certificate.
    #[error("{what}: not valid PEM certificates")]
    BadCertificate {
        /// Where the text came from.
        what: String,
        /// Cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// PEM text that does not hold a private key. The cause is left out on purpose: parser
    /// messages may quote the text.
    #[error("{what}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// Where the text came from.
        what: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a root that is
    /// not a CA certificate, …).
    #[error("{what}")]
    Rustls {
        /// What was being built.
        what: String,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// A certificate verifier could not be built (e.g. no roots).
    #[error("cannot verify certificates")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// `--tls-server-name` is not a DNS name or an IP address.
    #[error("TLS server name {name:?} is not a DNS name or an IP address")]
    ServerName {
        /// As given.
        name: String,
    },
}

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// From PEM text: `cert_pem` holds the chain (leaf first), `key_pem` the key. `what` names
    /// the source in errors (a file name, "the built-in CA").
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self, TlsError> {
        let chain = certificates(cert_pem, what)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey {
                what: what.to_owned(),
            })?;
        let identity = Self { chain, key };
        identity.check(what)?;
        Ok(identity)
    }

    /// From a certificate file and a key file.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let cert = read(cert_file, "certificate file")?;
        let key = read(key_file, "key file")?;
        let chain = certificates(&cert, &cert_file.display().to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| TlsError::NoKey {
            what: key_file.display().to_string(),
        })?;
        let identity = Self { chain, key };
        identity.check(&format!(
            "{} and {}",
            cert_file.display(),
            key_file.display()
        ))?;
        Ok(identity)
    }

    /// Checks that the key is usable and belongs to the leaf.
    fn check(&self, what: &str) -> Result<(), TlsError> {
        let certified =
            CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider()).map_err(
                |source| TlsError::Rustls {
                    what: format!("{what}: the key does not match the certificate"),
                    source,
                },
            )?;
        certified.keys_match().map_err(|source| TlsError::Rustls {
            what: format!("{what}: the key does not match the certificate"),
            source,
        })
    }

    /// The certificates, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Trusted CA certificates.
#[derive(Debug, Clone)]
pub struct Roots(Vec<CertificateDer<'static>>);

impl Roots {
    /// From PEM text (one or more certificates).
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, TlsError> {
        certificates(pem, what).map(Self)
    }

    /// From a CA bundle file.
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let text = read(path, "CA file")?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// The certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    fn store(&self, what: &str) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in &self.0 {
            store.add(cert.clone()).map_err(|source| TlsError::Rustls {
                what: format!("{what}: a CA certificate is not usable as a root"),
                source,
            })?;
        }
        Ok(store)
    }
}

fn read(path: &Path, what: &str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate {
            what: what.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(chain)
}

/// What a server asks of its clients' certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    None,
    /// A client may present a certificate; one that does must chain to these roots. Whether
    /// requests without one are served is [`TlsServer`]'s policy (answered at the HTTP layer, with
    /// a message, rather than as a handshake alert).
    Optional(Roots),
}

/// A server configuration for the HTTP API (ALPN [`HTTP_ALPN`]).
pub fn server_config(
    identity: &Identity,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS protocol versions".to_owned(),
            source,
        })?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(client_verifier(roots)?),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|source| TlsError::Rustls {
            what: "the server certificate is not usable".to_owned(),
            source,
        })?;
    config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate and key that can be replaced while in use (renewal): clients present, and
/// servers serve, whatever it holds at each handshake.
pub struct CertSlot(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertSlot(<certificate and key>)")
    }
}

impl CertSlot {
    /// A slot holding `identity`.
    pub fn new(identity: &Identity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(ArcSwap::from_pointee(certified(identity)?))))
    }

    /// Replaces the certificate for the next handshakes.
    pub fn replace(&self, identity: &Identity) -> Result<(), TlsError> {
        self.0.store(Arc::new(certified(identity)?));
        Ok(())
    }
}

fn certified(identity: &Identity) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(
        identity.chain.clone(),
        identity.key.clone_key(),
        &provider(),
    )
    .map_err(|source| TlsError::Rustls {
        what: "the certificate is not usable".to_owned(),
        source,
    })
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A server configuration for the HTTP API presenting whatever `slot` holds at each handshake
/// (an agent's renewed `auto_encrypt` certificate).
pub fn server_config_with_slot(
    slot: &Arc<CertSlot>,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS protocol versions".to_owned(),
            source,
        })?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(client_verifier(roots)?),
    };
    let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(slot) as _;
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn client_verifier(
    roots: &Roots,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots.store("client CA")?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)
}

/// The certificate a client presents.
#[derive(Debug, Clone, Copy)]
pub enum ClientIdentity<'a> {
    /// None.
    None,
    /// A fixed one (`--client-cert`/`--client-key`).
    Fixed(&'a Identity),
    /// Whatever the slot holds at each handshake (a renewed `auto_encrypt` certificate).
    Slot(&'a Arc<CertSlot>),
}

/// A client configuration trusting exactly `roots`, presenting `identity` when given, and
/// checking the server's certificate against `server_name` instead of the address dialled when
/// one is given (`--tls-server-name`). ALPN is left to the HTTP client.
pub fn client_config(
    roots: &Roots,
    identity: Option<&Identity>,
    server_name: Option<&str>,
) -> Result<ClientConfig, TlsError> {
    let identity = identity.map_or(ClientIdentity::None, ClientIdentity::Fixed);
    client_config_with(roots, identity, server_name)
}

/// [`client_config`] with any [`ClientIdentity`].
pub fn client_config_with(
    roots: &Roots,
    identity: ClientIdentity<'_>,
    server_name: Option<&str>,
) -> Result<ClientConfig, TlsError> {
    let roots = Arc::new(roots.store("CA file")?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS protocol versions".to_owned(),
            source,
        })?;
    let builder = match server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
                name: name.to_owned(),
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(TlsError::Verifier)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        }
    };
    match identity {
        ClientIdentity::None => Ok(builder.with_no_client_auth()),
        ClientIdentity::Fixed(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "the client certificate is not usable".to_owned(),
                source,
            }),
        ClientIdentity::Slot(slot) => {
            let resolver: Arc<dyn ResolvesClientCert> = Arc::clone(slot) as _;
            Ok(builder.with_client_cert_resolver(resolver))
        }
    }
}

/// The standard verification, against a fixed server name rather than the address dialled.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS listener's settings: the current server configuration (replaced on renewal; each new
/// connection uses the latest) and whether requests need a verified client certificate.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ArcSwap<ServerConfig>>,
    require_client_cert: bool,
    exempt_paths: Arc<[String]>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("require_client_cert", &self.require_client_cert)
            .field("exempt_paths", &self.exempt_paths)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// A listener serving `config`; requests are served whether or not the client presented a
    /// certificate.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config: Arc::new(ArcSwap::new(config)),
            require_client_cert: false,
            exempt_paths: Arc::from(Vec::new()),
        }
    }

    /// Requests need a client certificate verified against the configuration's client roots
    /// (`verify_incoming`), except requests for `exempt_paths` (e.g. the auto-encrypt signing
    /// endpoint, which a client without a certificate yet calls with a token). The
    /// configuration must then be built with [`ClientAuth::Optional`].
    pub fn require_client_cert(mut self, exempt_paths: &[&str]) -> Self {
        self.require_client_cert = true;
        self.exempt_paths = exempt_paths.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Whether client certificates are required.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Replaces the configuration for new connections (open ones keep theirs).
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.config.store(config);
    }

    fn is_exempt(&self, path: &str) -> bool {
        self.exempt_paths.iter().any(|p| p == path)
    }
}
