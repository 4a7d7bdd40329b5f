//! The CA's TLS certificates (servers, `auto_encrypt` agents) and its keys at rest.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use plexus_api::auto_encrypt::agent_spiffe_id;
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::tls_certs::{AgentRefusal, ServerNames};
use super::wrap::KeyEncryptionKey;
use super::*;
use crate::store::EmbeddedStore;

const SECRET: &str = "a test key-encryption secret of enough length";

fn open(dir: &std::path::Path, kek: Option<&str>) -> CertificateAuthority {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    let ca = CertificateAuthority::new(store, "dc1");
    match kek {
        Some(secret) => ca.with_key_encryption(KeyEncryptionKey::from_secret(secret).unwrap()),
        None => ca,
    }
}

fn names(pem_chain: &str) -> Vec<String> {
    let der = ::pem::parse_many(pem_chain).unwrap()[0].contents().to_vec();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

fn agent_csr(uri: &str, dns: &[&str]) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = std::iter::once(SanType::URI(uri.to_owned().try_into().unwrap()))
        .chain(
            dns.iter()
                .map(|d| SanType::DnsName((*d).to_owned().try_into().unwrap())),
        )
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn keys_are_wrapped_once_a_kek_is_given_and_need_it_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let plain = open(dir.path(), None);
    plain.bootstrap().await.unwrap();
    let stored = |ca: &CertificateAuthority| {
        let store = Arc::clone(&ca.store);
        async move {
            let (records, _) = store.range(STATE_KEY).await.unwrap();
            String::from_utf8(records[0].value.clone()).unwrap()
        }
    };
    assert!(stored(&plain).await.contains("PRIVATE KEY"));
    drop(plain);

    // Given a KEK, the plaintext key is wrapped at start; the CA still signs and rotates.
    let wrapped = open(dir.path(), Some(SECRET));
    wrapped.bootstrap().await.unwrap();
    let record = stored(&wrapped).await;
    assert!(!record.contains("PRIVATE KEY"), "{record}");
    assert!(record.contains("A256GCM-HKDF-SHA256"));
    let names = ServerNames::for_server("dc1", "consul", &[], &[]);
    wrapped.server_certificate(&names).await.unwrap();
    wrapped.rotate().await.unwrap();
    let record = stored(&wrapped).await;
    assert!(!record.contains("PRIVATE KEY"), "a new root is wrapped too");
    drop(wrapped);

    // Without the KEK, or with another one, the CA refuses to start, saying why.
    let error = open(dir.path(), None).bootstrap().await.unwrap_err();
    assert!(matches!(error, CaError::KeyWrapped), "{error}");
    assert!(error.to_string().contains("--ca-key-file"), "{error}");
    let other = format!("another {SECRET}");
    let error = open(dir.path(), Some(&other))
        .bootstrap()
        .await
        .unwrap_err();
    assert!(matches!(error, CaError::WrongKek { .. }), "{error}");
    // The right one (a file's trailing newline ignored) works.
    open(dir.path(), Some(&format!("{SECRET}\n")))
        .bootstrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn server_certificates_name_the_server_and_agents_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open(dir.path(), None);
    ca.bootstrap().await.unwrap();
    let td = ca.trust_domain().await.unwrap();

    let names = ServerNames::for_server(
        "dc1",
        "consul",
        &["plexus.example".to_owned()],
        &["10.1.2.3".parse().unwrap(), "0.0.0.0".parse().unwrap()],
    );
    let server = ca.server_certificate(&names).await.unwrap();
    let sans = self::names(&server.cert_pem);
    for expected in [
        "dns:server.dc1.consul",
        "dns:localhost",
        "dns:plexus.example",
    ] {
        assert!(sans.contains(&expected.to_owned()), "{sans:?}");
    }
    assert_eq!(
        sans.iter().filter(|s| s.starts_with("ip:")).count(),
        3,
        "{sans:?}"
    );
    assert!(server.key_pem().contains("PRIVATE KEY"));
    assert!(server.renew_at() > server.not_before && server.renew_at() < server.not_after);

    let id = agent_spiffe_id(&td, "dc1", "n1");
    let issued = ca
        .sign_agent("n1", &agent_csr(&id, &["n1.example"]), "consul")
        .await
        .unwrap()
        .value;
    assert_eq!(issued.service_uri, id);
    assert!(issued.private_key_pem.is_empty());
    let sans = self::names(&issued.cert_pem);
    assert!(sans.contains(&format!("uri:{id}")), "{sans:?}");
    assert!(sans.contains(&"dns:n1.example".to_owned()), "{sans:?}");
    assert!(sans.contains(&"dns:localhost".to_owned()), "{sans:?}");

    let other = agent_spiffe_id(&td, "dc1", "n2");
    let refused = ca.sign_agent("n1", &agent_csr(&other, &[]), "consul").await;
    assert!(matches!(
        refused,
        Err(CaError::Agent(AgentRefusal::NotEntitled { .. }))
    ));
    let refused = ca
        .sign_agent("n1", &agent_csr(&id, &["server.dc1.consul"]), "consul")
        .await;
    assert!(matches!(
        refused,
        Err(CaError::Agent(AgentRefusal::ServerName { .. }))
    ));
    let refused = ca.sign_agent("n 1", &agent_csr(&id, &[]), "consul").await;
    assert!(matches!(
        refused,
        Err(CaError::BadRequest { field: "Node", .. })
    ));
    let refused = ca.sign_agent("n1", "not a csr", "consul").await;
    assert!(matches!(
        refused,
        Err(CaError::BadRequest { field: "CSR", .. })
    ));
}
