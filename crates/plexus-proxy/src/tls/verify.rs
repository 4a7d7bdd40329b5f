//! rustls plug-ins: peer verifiers that check the chain against the current roots and the
//! SPIFFE rules of [`super::peer`], and resolvers that hand out the current leaf. Both read the
//! [`Identity`] at each handshake, so new roots and renewed leaves apply to the next connection
//! without rebuilding any TLS configuration.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::Identity;
use super::peer::{self, PeerRefusal};

fn refuse(refusal: PeerRefusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

/// Verifies a peer's leaf: the SPIFFE rules, then the chain to one of the current roots.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    identity: Arc<Identity>,
    provider: Arc<CryptoProvider>,
    /// Outbound: the SPIFFE id the catalog says the upstream has. Inbound: `None` (any
    /// service of our trust domain; intentions decide next).
    expected: Option<String>,
}

impl PeerVerifier {
    pub(crate) fn new(identity: Arc<Identity>, expected: Option<String>) -> Self {
        let provider = Arc::clone(&identity.provider);
        Self {
            identity,
            provider,
            expected,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let facts = peer::facts(end_entity).map_err(refuse)?;
        let roots = self.identity.roots.load();
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        peer::check(
            &facts,
            &roots.trust_domain,
            self.expected.as_deref(),
            now_secs,
        )
        .map_err(refuse)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| refuse(PeerRefusal::Malformed))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|error| refuse(PeerRefusal::UntrustedChain(error.to_string())))?;
        Ok(())
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(self)
    }
}

/// Hands out the current leaf, on both sides of a handshake.
#[derive(Debug)]
pub(crate) struct LeafResolver(pub Arc<Identity>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.leaf.load().key))
    }
}

impl ResolvesClientCert for LeafResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.leaf.load().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
