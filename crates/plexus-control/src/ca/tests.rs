//! CA tests over a real embedded store: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use plexus_api::config_entry::ConfigEntry;
use plexus_api::connect::service_spiffe_id;
use plexus_api::{AgentService, Catalog, ServiceKind};
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::catalog::StoreCatalog;
use crate::catalog::tests::fixtures::{proxy, registration, service};
use crate::store::EmbeddedStore;

async fn ca_with_web(dir: &std::path::Path) -> (Arc<CertificateAuthority>, String) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    let catalog = StoreCatalog::new(Arc::clone(&store), "dc1");
    catalog
        .register(registration(
            "n1",
            vec![
                service("web", "web", &[]),
                proxy("web-sidecar-proxy", "web"),
            ],
            vec![],
        ))
        .await
        .unwrap();
    let ca = Arc::new(CertificateAuthority::new(store, "dc1"));
    ca.bootstrap().await.unwrap();
    let td = ca.trust_domain().await.unwrap();
    (ca, td)
}

fn csr(uris: &[String]) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.clone().try_into().unwrap()))
        .collect();
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn first_cert(pem_chain: &str) -> Vec<u8> {
    ::pem::parse_many(pem_chain).unwrap()[0].contents().to_vec()
}

#[tokio::test]
async fn the_root_survives_a_restart_and_signs_only_the_entitled_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, td) = ca_with_web(dir.path()).await;
    let roots = ca.roots().await.unwrap().value;
    assert_eq!(roots.roots.len(), 1);
    assert!(roots.active().unwrap().active);
    drop(ca);
    // Reopened: the same trust domain and root.
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let reopened = CertificateAuthority::new(store, "dc1");
    assert_eq!(reopened.roots().await.unwrap().value, roots);

    let web = service_spiffe_id(&td, "dc1", "web");
    let (pem, _) = csr(std::slice::from_ref(&web));
    let issued = reopened
        .sign("web-sidecar-proxy", &pem, None)
        .await
        .unwrap()
        .value;
    assert_eq!(issued.service_uri, web);
    assert!(issued.private_key_pem.is_empty());
    let der = first_cert(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime as u64, policy::DEFAULT_LEAF_TTL.as_secs() + 60);

    // Someone else's identity, a ten-year lifetime, an unknown proxy, garbage.
    let (db, _) = csr(&[service_spiffe_id(&td, "dc1", "db")]);
    let err = reopened
        .sign("web-sidecar-proxy", &db, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CaError::Refused(Refusal::NotEntitled { .. })),
        "{err}"
    );
    let ten_years = Some(Duration::from_secs(10 * 365 * 24 * 3600));
    let err = reopened
        .sign("web-sidecar-proxy", &pem, ten_years)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CaError::Refused(Refusal::TooLong { .. })),
        "{err}"
    );
    let err = reopened.sign("nobody", &pem, None).await.unwrap_err();
    assert!(matches!(err, CaError::NotFound(_)), "{err}");
    let err = reopened
        .sign("web-sidecar-proxy", "not pem", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CaError::BadRequest { field: "CSR", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_csr_flood_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, td) = ca_with_web(dir.path()).await;
    let (pem, _) = csr(&[service_spiffe_id(&td, "dc1", "web")]);
    let mut limited = 0;
    for _ in 0..(SIGN_BURST + 5) {
        if let Err(CaError::RateLimited { .. }) = ca.sign("web-sidecar-proxy", &pem, None).await {
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited}");
}

#[tokio::test]
async fn rotation_cross_signs_and_keeps_the_old_root_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, td) = ca_with_web(dir.path()).await;
    let old = ca.roots().await.unwrap().value;
    let new_id = ca.rotate().await.unwrap();
    let roots = ca.roots().await.unwrap().value;
    assert_eq!(roots.active_root_id, new_id);
    assert_eq!(roots.roots.len(), 2);
    assert!(
        roots
            .roots
            .iter()
            .any(|r| r.id == old.active_root_id && !r.active)
    );
    let active = roots.active().unwrap();
    assert_eq!(active.intermediate_certs.len(), 1);
    // The cross-signed certificate: the new root's subject, issued by the old root.
    let cross = first_cert(&active.intermediate_certs[0]);
    let (_, cross) = X509Certificate::from_der(&cross).unwrap();
    let old_root = first_cert(&old.active().unwrap().root_cert);
    let (_, old_root) = X509Certificate::from_der(&old_root).unwrap();
    let new_root = first_cert(&active.root_cert);
    let (_, new_root) = X509Certificate::from_der(&new_root).unwrap();
    assert_eq!(cross.issuer(), old_root.subject());
    assert_eq!(cross.subject(), new_root.subject());
    cross.verify_signature(Some(old_root.public_key())).unwrap();
    // New leaves carry it.
    let (pem, _) = csr(&[service_spiffe_id(&td, "dc1", "web")]);
    let issued = ca
        .sign("web-sidecar-proxy", &pem, None)
        .await
        .unwrap()
        .value;
    assert_eq!(::pem::parse_many(&issued.cert_pem).unwrap().len(), 2);
    assert_eq!(issued.root_id, new_id);
    // Nothing retires before the old leaves expired.
    assert!(ca.retire_due().await.unwrap().is_some());
    assert_eq!(ca.roots().await.unwrap().value.roots.len(), 2);
}

#[tokio::test]
async fn no_private_key_in_any_response_or_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, td) = ca_with_web(dir.path()).await;
    ca.rotate().await.unwrap();
    let state = ca.read().await.unwrap().unwrap().0;
    let (pem, _) = csr(&[service_spiffe_id(&td, "dc1", "web")]);
    let outputs = [
        serde_json::to_string(&ca.roots().await.unwrap().value).unwrap(),
        serde_json::to_string(&ca.configuration().await.unwrap()).unwrap(),
        serde_json::to_string(
            &ca.sign("web-sidecar-proxy", &pem, None)
                .await
                .unwrap()
                .value,
        )
        .unwrap(),
        format!("{state:?}"),
    ];
    for root in &state.roots {
        let key_body: String = root
            .key
            .open(&root.id, None)
            .unwrap()
            .0
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for output in &outputs {
            assert!(!output.contains(&key_body[..40]), "a root key leaked");
            assert!(!output.contains("PRIVATE KEY"), "a private key leaked");
        }
    }
}

/// A CSR with `uris` and DNS `names`.
fn csr_with_dns(uris: &[String], names: &[&str]) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.clone().try_into().unwrap()))
        .chain(
            names
                .iter()
                .map(|n| SanType::DnsName((*n).to_owned().try_into().unwrap())),
        )
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn gateways_are_signed_their_own_identity_their_tls_hosts_and_linked_services_only() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let catalog = StoreCatalog::new(Arc::clone(&store), "dc1");
    let gateway = |id: &str, kind: ServiceKind| AgentService {
        kind,
        ..service(id, id, &[])
    };
    catalog
        .register(registration(
            "n1",
            vec![
                service("web", "web", &[]),
                service("db", "db", &[]),
                gateway("in", ServiceKind::IngressGateway),
                gateway("out", ServiceKind::TerminatingGateway),
            ],
            vec![],
        ))
        .await
        .unwrap();
    let config = crate::config::ConfigEntries::new(Arc::clone(&store));
    let entry = |json: serde_json::Value| ConfigEntry::from_json(json).unwrap();
    config
        .put(
            entry(
                serde_json::json!({"Kind": "ingress-gateway", "Name": "in", "Listeners": [
                {"Port": 8443, "Protocol": "http", "TLS": {"Enabled": true},
                 "Services": [{"Name": "web", "Hosts": ["web.example.com"]}]}]}),
            ),
            None,
        )
        .await
        .unwrap();
    config
        .put(
            entry(
                serde_json::json!({"Kind": "terminating-gateway", "Name": "out",
                "Services": [{"Name": "web"}]}),
            ),
            None,
        )
        .await
        .unwrap();
    let ca = CertificateAuthority::new(store, "dc1");
    ca.bootstrap().await.unwrap();
    let td = ca.trust_domain().await.unwrap();
    let id = |service: &str| service_spiffe_id(&td, "dc1", service);

    // The ingress gateway: its identity with its TLS hosts; no other name, no other identity.
    let issued = ca
        .sign("in", &csr_with_dns(&[id("in")], &["web.example.com"]), None)
        .await
        .unwrap()
        .value;
    let der = first_cert(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(san.contains("web.example.com"), "{san}");
    for (uris, names) in [
        (vec![id("in")], vec!["evil.example.com"]),
        (vec![id("web")], vec![]),
    ] {
        assert!(
            ca.sign("in", &csr_with_dns(&uris, &names), None)
                .await
                .is_err(),
            "{uris:?} {names:?}"
        );
    }
    // The terminating gateway: its own identity or a linked service's, not another's, no DNS.
    for service in ["out", "web"] {
        let issued = ca
            .sign("out", &csr_with_dns(&[id(service)], &[]), None)
            .await
            .unwrap()
            .value;
        assert_eq!(issued.service_uri, id(service));
    }
    for (uris, names) in [
        (vec![id("db")], vec![]),
        (vec![id("web")], vec!["web.example.com"]),
    ] {
        assert!(
            ca.sign("out", &csr_with_dns(&uris, &names), None)
                .await
                .is_err(),
            "{uris:?} {names:?}"
        );
    }
    assert_eq!(
        ca.entitlement("out", &csr_with_dns(&[id("web")], &[]))
            .await
            .unwrap()
            .service,
        "web"
    );
}
