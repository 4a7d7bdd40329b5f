//! Leaf certificates for the Envoys of one service: a fresh key and CSR per leaf, signed by the
//! CA for one of this node's proxies of that service (the CA signs a proxy's destination
//! identity only), renewed at about half-life and at once after a root rotation.
//!
//! The key is generated here, in the xDS server, and handed to Envoy over SDS (Envoy has no
//! way to make its own CSR): the same trust as Consul's agent, which does the same for its
//! Envoys. It never appears in a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_api::client::{Client, ClientError};
use plexus_api::connect::renew::{renew_at, retry_after};
use plexus_api::connect::{SignRequest, service_spiffe_id};
use plexus_api::{AgentService, Indexed, ServiceKind};
use rcgen::{CertificateParams, KeyPair, SanType};
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Latest, Sub};
use crate::model::Leaf;
use plexus_runtime::ErrorChain;

/// What signing needs.
pub(super) struct Inputs {
    pub node_services: Sub<BTreeMap<String, AgentService>>,
    pub roots: Sub<plexus_api::connect::CaRoots>,
    pub datacenter: Sub<String>,
}

/// Why a leaf could not be obtained.
#[derive(Debug, thiserror::Error)]
enum LeafError {
    #[error("the CA refused or could not be reached")]
    Control(#[source] ClientError),
    #[error("no connect-proxy of service {0:?} is registered on this node")]
    NoProxy(String),
    #[error("cannot build the key or CSR: {0}")]
    Csr(String),
    #[error("the CA returned {returned:?} for {wanted:?}")]
    WrongIdentity { returned: String, wanted: String },
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Keeps a valid leaf for `service` published on `tx` until `stop`.
pub(super) async fn maintain(
    client: Client,
    service: String,
    mut inputs: Inputs,
    tx: watch::Sender<Latest<Leaf>>,
    stop: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        // Wait until the roots, the datacenter and this node's services are known.
        let ready = async {
            loop {
                let roots = inputs.roots.rx.borrow_and_update().clone();
                let dc = inputs.datacenter.rx.borrow_and_update().clone();
                let known = inputs.node_services.rx.borrow_and_update().is_some();
                if let (Some(roots), Some(dc), true) = (roots, dc, known) {
                    return Some((roots, dc));
                }
                tokio::select! {
                    changed = inputs.roots.rx.changed() => changed.ok()?,
                    changed = inputs.datacenter.rx.changed() => changed.ok()?,
                    changed = inputs.node_services.rx.changed() => changed.ok()?,
                }
            }
        };
        let ready = tokio::select! {
            _ = stop.cancelled() => return,
            ready = ready => ready,
        };
        let Some((roots, dc)) = ready else {
            return;
        };
        let spiffe_id = service_spiffe_id(&roots.value.trust_domain, &dc.value, &service);
        let proxy_id = inputs
            .node_services
            .rx
            .borrow()
            .as_ref()
            .and_then(|services| proxy_of(&services.value, &service));
        let signed = match proxy_id {
            Some(proxy_id) => sign(&client, &proxy_id, &spiffe_id).await,
            None => Err(LeafError::NoProxy(service.clone())),
        };
        let wait = match signed {
            Ok(leaf) => {
                attempt = 0;
                let renewal = tx.borrow().is_some();
                info!(
                    %service,
                    spiffe_id = %leaf.spiffe_id,
                    root_id = %leaf.root_id,
                    expires_in_secs = (leaf.not_after - unix_now()).round() as i64,
                    renewal,
                    "leaf certificate for Envoy issued"
                );
                let at = renew_at(leaf.issued, leaf.not_after, rand::random::<f64>());
                tx.send_replace(Some(Arc::new(Indexed {
                    index: roots.index,
                    value: leaf,
                })));
                Duration::from_secs_f64((at - unix_now()).max(0.0))
            }
            Err(error) => {
                attempt += 1;
                let not_after = tx
                    .borrow()
                    .as_ref()
                    .map_or(unix_now() + 60.0, |leaf| leaf.value.not_after);
                let delay = retry_after(attempt, unix_now(), not_after);
                warn!(error = %ErrorChain(&error), %service, attempt, retry_in_secs = delay, "cannot obtain a leaf for Envoy; retrying");
                Duration::from_secs_f64(delay)
            }
        };
        // Sleep until renewal, or until the active root changes (re-sign under the new root).
        let signed_under = tx.borrow().as_ref().map(|leaf| leaf.value.root_id.clone());
        let rotated = async {
            loop {
                if inputs.roots.rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let active = inputs
                    .roots
                    .rx
                    .borrow_and_update()
                    .as_ref()
                    .map(|r| r.value.active_root_id.clone());
                if active.is_some() && active != signed_under {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = rotated => {
                // Spread the re-signing of every service over a second or two.
                let spread = Duration::from_secs_f64(2.0 * rand::random::<f64>());
                info!(%service, "CA root rotated; renewing the leaf for Envoy");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(spread) => {}
                }
            }
        }
    }
}

/// A connect-proxy of `service` on this node (the first by id).
fn proxy_of(services: &BTreeMap<String, AgentService>, service: &str) -> Option<String> {
    services
        .values()
        .find(|s| {
            s.kind == ServiceKind::ConnectProxy
                && s.proxy
                    .as_ref()
                    .is_some_and(|p| p.destination_service_name == service)
        })
        .map(|s| s.id.clone())
}

async fn sign(client: &Client, proxy_id: &str, spiffe_id: &str) -> Result<Leaf, LeafError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| LeafError::Csr(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        spiffe_id
            .to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| LeafError::Csr(e.to_string()))?,
    )];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| LeafError::Csr(e.to_string()))?;
    let issued_at = unix_now();
    let issued = client
        .connect_ca_sign(&SignRequest {
            proxy_id: proxy_id.to_owned(),
            csr,
            ttl: None,
        })
        .await
        .map_err(LeafError::Control)?;
    if issued.service_uri != spiffe_id {
        return Err(LeafError::WrongIdentity {
            returned: issued.service_uri,
            wanted: spiffe_id.to_owned(),
        });
    }
    Ok(Leaf {
        cert_pem: issued.cert_pem,
        key_pem: key.serialize_pem(),
        spiffe_id: spiffe_id.to_owned(),
        root_id: issued.root_id,
        issued: issued_at,
        not_after: issued.valid_before_unix as f64,
    })
}
