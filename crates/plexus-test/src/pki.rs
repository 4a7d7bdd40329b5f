//! A throwaway certificate authority and TLS clients for identity tests: forge the certificates an
//! attacker would present (another CA, expired, two URI SANs, a CA flag, someone else's
//! identity), and talk TLS to a sidecar with them.
//!
//! ```no_run
//! # async fn example(addr: std::net::SocketAddr) -> anyhow::Result<()> {
//! use plexus_test::pki::{Pki, LeafSpec, connect};
//! let rogue = Pki::new("rogue")?;
//! let leaf = rogue.leaf(&LeafSpec::service("spiffe://td/ns/default/dc/dc1/svc/web"))?;
//! let refused = connect(addr, Some(&leaf)).await.is_err();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

/// ALPN the sidecars speak.
pub const ALPN: &[u8] = b"plexus-tcp/1";

/// A CA root with its key.
pub struct Pki {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// What a forged leaf looks like.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// URI SANs.
    pub uris: Vec<String>,
    /// Basic constraints `CA:TRUE`.
    pub is_ca: bool,
    /// Valid from (relative to now; negative is the past).
    pub not_before: i64,
    /// Valid until (relative to now).
    pub not_after: i64,
    /// DNS SANs (a server certificate's names).
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<std::net::IpAddr>,
}

impl LeafSpec {
    /// A well-formed leaf for one SPIFFE id, valid for an hour.
    pub fn service(uri: &str) -> Self {
        Self {
            uris: vec![uri.to_owned()],
            is_ca: false,
            not_before: -60,
            not_after: 3600,
            dns: Vec::new(),
            ips: Vec::new(),
        }
    }

    /// A TLS server (or client) certificate for `localhost` and 127.0.0.1, valid for an hour.
    pub fn localhost() -> Self {
        Self {
            uris: Vec::new(),
            dns: vec!["localhost".to_owned()],
            ips: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            ..Self::service("spiffe://unused")
        }
    }
}

/// A leaf and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf, PEM.
    pub cert_pem: String,
    /// Key, PKCS#8 PEM.
    pub key_pem: String,
    /// Leaf, DER.
    pub cert_der: Vec<u8>,
    /// Key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl Issued {
    /// A leaf and key as the API hands them out (PEM), e.g. from `/v1/agent/connect/ca/leaf`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Issued> {
        let der = |text: &str, what: &str| {
            pem::parse(text)
                .map(|block| block.into_contents())
                .with_context(|| format!("{what} is not PEM"))
        };
        Ok(Issued {
            cert_der: der(cert_pem, "certificate")?,
            key_der: der(key_pem, "private key")?,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }
}

fn at(offset: i64) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::from(SystemTime::now());
    now + time::Duration::seconds(offset)
}

impl Pki {
    /// A new root named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} test root"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(-3600);
        params.not_after = at(10 * 24 * 3600);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf as `spec` says.
    pub fn leaf(&self, spec: &LeafSpec) -> Result<Issued> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| Ok(SanType::URI(u.clone().try_into()?)))
            .chain(
                spec.dns
                    .iter()
                    .map(|d| Ok(SanType::DnsName(d.clone().try_into()?))),
            )
            .chain(spec.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(spec.not_before);
        params.not_after = at(spec.not_after);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

impl Pki {
    /// A TLS server certificate for `dns` names and `ips` (server and client EKU: etcd members
    /// use it for both), valid for a day.
    pub fn server_leaf(&self, dns: &[&str], ips: &[std::net::IpAddr]) -> Result<Issued> {
        let sans = dns
            .iter()
            .map(|d| Ok(SanType::DnsName((*d).to_owned().try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        self.named_leaf(dns.first().copied().unwrap_or("server"), sans)
    }

    /// A TLS client certificate with common name `name` (etcd maps it to a user when its
    /// authentication is on), valid for a day.
    pub fn client_leaf(&self, name: &str) -> Result<Issued> {
        self.named_leaf(name, Vec::new())
    }

    fn named_leaf(&self, common_name: &str, sans: Vec<SanType>) -> Result<Issued> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(-3600);
        params.not_after = at(24 * 3600);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// Signs `csr_pem` as it asks (a stand-in CA for unit tests: no policy at all), valid for
    /// an hour.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.not_before = at(-60);
        csr.params.not_after = at(3600);
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(csr.signed_by(&self.cert, &self.key)?.pem())
    }

    /// A rustls server configuration presenting `leaf` (no client authentication): a stand-in
    /// for an upstream sidecar.
    pub fn server_config(leaf: &Issued) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A CSR for `uris`, PEM, with its key (what a sidecar, or an attacker, sends the CA).
pub fn csr(uris: &[&str]) -> Result<(String, KeyPair)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| Ok(SanType::URI((*u).to_owned().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    Ok((params.serialize_request(&key)?.pem()?, key))
}

/// A CSR for `uris` that also asks for basic constraints `CA:TRUE` (an attacker asking the CA
/// to make it a CA).
pub fn csr_asking_for_ca(uris: &[&str]) -> Result<String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| Ok(SanType::URI((*u).to_owned().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    // basicConstraints (2.5.29.19): SEQUENCE { BOOLEAN TRUE }
    let mut extension = rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        vec![0x30, 0x03, 0x01, 0x01, 0xff],
    );
    extension.set_criticality(true);
    params.custom_extensions = vec![extension];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// Accepts any server certificate: the tests play a client that only cares whether the server
/// lets it in.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TLS 1.3 connection to `addr` presenting `client` and offering `alpn` (empty: no ALPN
/// at all), and returns it right after the handshake (nothing written: e.g. for an HTTP/2
/// preface).
pub async fn connect_with_alpn(
    addr: SocketAddr,
    client: &Issued,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    connect_as(addr, client, alpn, ServerName::IpAddress(addr.ip().into())).await
}

/// As [`connect_with_alpn`], asking for `server_name` (SNI), as a sidecar does of a gateway.
pub async fn connect_with_sni(
    addr: SocketAddr,
    client: &Issued,
    alpn: &[u8],
    server_name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
    connect_as(addr, client, alpn, name).await
}

/// Sends nothing on `stream` (a peer that completed TLS and went silent) and waits until the
/// other end closes it, within [`crate::DEADLINE`]; panics unless it was closed and held at
/// least `held` first (a timeout cannot fire early, so a close before it is a refusal: a wrong
/// SNI, an untrusted leaf). Returns how long it was held.
pub async fn held_then_closed(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    held: Duration,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let opened = std::time::Instant::now();
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(crate::DEADLINE, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let elapsed = opened.elapsed();
    assert!(
        closed.is_ok(),
        "a silent peer's connection is still open after {:?}",
        crate::DEADLINE
    );
    assert!(
        elapsed >= held,
        "closed after {elapsed:?}, before the {held:?} it should be held"
    );
    elapsed
}

async fn connect_as(
    addr: SocketAddr,
    client: &Issued,
    alpn: &[u8],
    name: ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            vec![CertificateDer::from(client.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key_der.clone())),
        )?;
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .context("handshake timed out")?
        .context("TLS handshake")
}

/// Opens a TLS 1.3 connection to `addr` presenting `client` (or no certificate), then writes a
/// byte and reads the answer: a sidecar only lets a client in after verifying it, so `Ok` means
/// the data path is open. The returned stream is usable for more traffic.
pub async fn connect(
    addr: SocketAddr,
    client: Option<&Issued>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match client {
        Some(issued) => builder.with_client_auth_cert(
            vec![CertificateDer::from(issued.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone())),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .context("handshake timed out")??;
    // TLS 1.3: the server checks the client certificate after the client has finished; a refusal
    // shows up as an alert or a close on the first read.
    stream.write_all(b"?").await?;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
        .await
        .context("no answer")??;
    if n == 0 {
        return Err(anyhow!("the server closed the connection"));
    }
    Ok(stream)
}
