//! Obtaining and keeping this sidecar's identity: roots by blocking query, a fresh key and CSR
//! for every leaf, renewal at about half-life (or at once after a root rotation).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use plexus_api::client::{Client, ClientError, QueryOptions};
use plexus_api::connect::{CaRoots, ServiceId, SignRequest, service_spiffe_id};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Identity, Leaf, Roots, TlsMetrics, log_leaf, renew};
use crate::discovery::BLOCKING_WAIT;
use crate::state::{Sealed, StateDir};
use plexus_runtime::Backoff;
use plexus_runtime::ErrorChain;
use serde::{Deserialize, Serialize};

/// Why a leaf or the roots could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The control plane refused or could not be reached.
    #[error("control plane request failed")]
    Control(#[source] ClientError),
    /// What the control plane sent is unusable.
    #[error("unusable answer from the CA: {0}")]
    Invalid(String),
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Turns the CA's roots into trust anchors.
fn roots(answer: &CaRoots) -> Result<Roots, IdentityError> {
    let mut anchors = Vec::new();
    for root in &answer.roots {
        let pem = ::pem::parse(&root.root_cert)
            .map_err(|e| IdentityError::Invalid(format!("root {}: {e}", root.id)))?;
        let der = CertificateDer::from(pem.contents().to_vec());
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| IdentityError::Invalid(format!("root {}: {e}", root.id)))?
            .to_owned();
        anchors.push(anchor);
    }
    if anchors.is_empty() {
        return Err(IdentityError::Invalid("no roots".to_owned()));
    }
    Ok(Roots {
        trust_domain: answer.trust_domain.clone(),
        anchors,
        active_id: answer.active_root_id.clone(),
    })
}

/// Generates a key, asks the CA to sign a CSR for `spiffe_id`, and builds the leaf (saved in
/// `state` when there is one).
async fn sign(
    control: &Client,
    proxy_id: &str,
    spiffe_id: &str,
    dns_names: &[String],
    identity_provider: &rustls::crypto::CryptoProvider,
    state: Option<&StateDir>,
) -> Result<Leaf, IdentityError> {
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| IdentityError::Invalid(format!("{what}: {e}"));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| invalid("key generation", &e))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        spiffe_id
            .to_owned()
            .try_into()
            .map_err(|e| invalid("SPIFFE id", &e))?,
    )];
    for name in dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            name.clone()
                .try_into()
                .map_err(|e| invalid("DNS name", &e))?,
        ));
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| invalid("CSR", &e))?;
    let issued_at = unix_now();
    let issued = control
        .connect_ca_sign(&SignRequest {
            proxy_id: proxy_id.to_owned(),
            csr,
            ttl: None,
        })
        .await
        .map_err(IdentityError::Control)?;
    if issued.service_uri != spiffe_id {
        return Err(IdentityError::Invalid(format!(
            "the CA returned {:?} for {spiffe_id:?}",
            issued.service_uri
        )));
    }
    let saved = SavedLeaf {
        cert_pem: issued.cert_pem,
        key: None,
        spiffe_id: spiffe_id.to_owned(),
        root_id: issued.root_id,
        issued: issued_at,
        not_after: issued.valid_before_unix as f64,
    };
    let key_der = key.serialize_der();
    let leaf = build_leaf(&saved, key_der.clone(), identity_provider)?;
    if let Some(state) = state {
        state.save(
            LEAF,
            &SavedLeaf {
                key: state.seal(&key_der, &seal_context(proxy_id, spiffe_id)),
                ..saved
            },
        );
    }
    Ok(leaf)
}

/// The state file of the leaf certificate (its key sealed), and of the roots.
const LEAF: &str = "leaf";
const ROOTS: &str = "roots";

/// A leaf as saved in the state directory.
#[derive(Debug, Serialize, Deserialize)]
struct SavedLeaf {
    cert_pem: String,
    /// The PKCS#8 private key sealed under the token; absent without one.
    key: Option<Sealed>,
    spiffe_id: String,
    root_id: String,
    issued: f64,
    not_after: f64,
}

/// What a sealed leaf key is bound to: a key sealed for one sidecar does not open for another.
fn seal_context(proxy_id: &str, spiffe_id: &str) -> String {
    format!("{proxy_id} {spiffe_id}")
}

/// The leaf from its certificate chain (PEM) and its PKCS#8 key.
fn build_leaf(
    saved: &SavedLeaf,
    key_der: Vec<u8>,
    identity_provider: &rustls::crypto::CryptoProvider,
) -> Result<Leaf, IdentityError> {
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| IdentityError::Invalid(format!("{what}: {e}"));
    let chain: Vec<CertificateDer<'static>> = ::pem::parse_many(&saved.cert_pem)
        .map_err(|e| invalid("certificate", &e))?
        .into_iter()
        .map(|p| CertificateDer::from(p.contents().to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(IdentityError::Invalid("no certificate".to_owned()));
    }
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let signing = identity_provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| invalid("private key", &e))?;
    Ok(Leaf {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        spiffe_id: saved.spiffe_id.clone(),
        root_id: saved.root_id.clone(),
        issued: saved.issued,
        not_after: saved.not_after,
    })
}

/// The identity saved before a restart, if it is whole, its key opens and the leaf has not
/// expired.
fn restore(source: &Source) -> Option<Identity> {
    let state = source.state.as_deref()?;
    let (answer, _) = state.load::<CaRoots>(ROOTS)?;
    let (saved, at) = state.load::<SavedLeaf>(LEAF)?;
    let usable = |why: &str| {
        warn!(
            file = %state.path().display(),
            "the saved leaf cannot be used ({why}); waiting for the control plane"
        );
    };
    if saved.not_after <= unix_now() {
        usable("it has expired");
        return None;
    }
    let Some(key_der) = saved
        .key
        .as_ref()
        .and_then(|sealed| state.unseal(sealed, &seal_context(&source.proxy_id, &saved.spiffe_id)))
    else {
        usable("its key was not saved, or does not open with this token");
        return None;
    };
    let service = ServiceId::parse(&saved.spiffe_id)?;
    if service.service != source.service {
        usable("it is another service's");
        return None;
    }
    let provider = super::provider();
    let built =
        roots(&answer).and_then(|roots| Ok((roots, build_leaf(&saved, key_der, &provider)?)));
    match built {
        Ok((roots, leaf)) => {
            warn!(
                saved_at = %crate::staleness::rfc3339(at),
                "no control-plane server answers; using the last good leaf certificate and roots (stale)"
            );
            Some(Identity {
                roots: ArcSwap::from_pointee(roots),
                leaf: ArcSwap::from_pointee(leaf),
                provider,
                service,
            })
        }
        Err(error) => {
            usable(&ErrorChain(&error).to_string());
            None
        }
    }
}

/// Where this sidecar's identity comes from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The control plane.
    pub control: Client,
    /// The sidecar's own service id (the CA signs only its destination's identity).
    pub proxy_id: String,
    /// The destination service name (a gateway: its own, or a linked service's).
    pub service: String,
    /// Where the last good leaf and roots are kept, if anywhere.
    pub state: Option<Arc<StateDir>>,
    /// DNS names the leaf carries besides (an ingress gateway's TLS hosts; else empty).
    pub dns_names: Vec<String>,
}

/// Obtains roots and a first leaf, retrying with backoff while the control plane is unreachable
/// or refuses. `None` when `stop` fires first.
pub(crate) async fn obtain(
    source: &Source,
    metrics: &TlsMetrics,
    stop: &CancellationToken,
) -> Option<(Arc<Identity>, u64)> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let datacenter = source
                .control
                .agent_self()
                .await
                .map_err(IdentityError::Control)?
                .config
                .datacenter;
            let answer = source
                .control
                .connect_ca_roots(QueryOptions::default())
                .await
                .map_err(IdentityError::Control)?;
            let roots = roots(&answer.value)?;
            if let Some(state) = &source.state {
                state.save(ROOTS, &answer.value);
            }
            let service = ServiceId {
                trust_domain: roots.trust_domain.clone(),
                namespace: plexus_api::connect::DEFAULT_NAMESPACE.to_owned(),
                datacenter: datacenter.clone(),
                service: source.service.clone(),
            };
            let provider = super::provider();
            let spiffe_id = service_spiffe_id(&roots.trust_domain, &datacenter, &source.service);
            let leaf = sign(
                &source.control,
                &source.proxy_id,
                &spiffe_id,
                &source.dns_names,
                &provider,
                source.state.as_deref(),
            )
            .await?;
            Ok::<_, IdentityError>((
                Identity {
                    roots: ArcSwap::from_pointee(roots),
                    leaf: ArcSwap::from_pointee(leaf),
                    provider,
                    service,
                },
                answer.index,
            ))
        };
        match attempt.await {
            Ok((identity, index)) => {
                metrics
                    .leaf_expiry
                    .set(identity.leaf.load().not_after as i64);
                metrics
                    .roots
                    .set(identity.roots.load().anchors.len() as i64);
                log_leaf(&identity.leaf.load(), false);
                return Some((Arc::new(identity), index));
            }
            Err(error) => {
                metrics.renewal_failures.inc();
                if matches!(error, IdentityError::Control(_))
                    && let Some(identity) = restore(source)
                {
                    metrics
                        .leaf_expiry
                        .set(identity.leaf.load().not_after as i64);
                    metrics
                        .roots
                        .set(identity.roots.load().anchors.len() as i64);
                    log_leaf(&identity.leaf.load(), false);
                    return Some((Arc::new(identity), 0));
                }
                warn!(error = %ErrorChain(&error), "cannot obtain a leaf certificate yet; retrying");
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Follows the roots (blocking queries) and renews the leaf, until `stop`.
pub(crate) async fn maintain(
    identity: Arc<Identity>,
    source: Source,
    roots_index: u64,
    metrics: TlsMetrics,
    stop: CancellationToken,
) {
    let rotated = Arc::new(Notify::new());
    let watch_roots = watch_roots(
        Arc::clone(&identity),
        source.control.clone(),
        source.state.clone(),
        roots_index,
        metrics.clone(),
        Arc::clone(&rotated),
    );
    let renew = renew_leaves(identity, source, metrics, rotated);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = watch_roots => {}
        _ = renew => {}
    }
}

async fn watch_roots(
    identity: Arc<Identity>,
    control: Client,
    state: Option<Arc<StateDir>>,
    mut index: u64,
    metrics: TlsMetrics,
    rotated: Arc<Notify>,
) {
    let mut backoff = Backoff::default();
    loop {
        match control
            .connect_ca_roots(QueryOptions::blocking(index, BLOCKING_WAIT))
            .await
        {
            Ok(answer) => {
                backoff.reset();
                if answer.index < index {
                    index = 0; // the store went backwards (restored): re-read from scratch
                    continue;
                }
                let unchanged = answer.index == index;
                index = answer.index;
                if unchanged {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match roots(&answer.value) {
                    Ok(roots) => {
                        if let Some(state) = &state {
                            state.save(ROOTS, &answer.value);
                        }
                        let current = identity.roots.load();
                        let active_changed = roots.active_id != current.active_id;
                        let count_changed = roots.anchors.len() != current.anchors.len();
                        if active_changed || count_changed {
                            info!(active_root = %roots.active_id, trusted = roots.anchors.len(), "CA roots changed");
                        }
                        metrics.roots.set(roots.anchors.len() as i64);
                        identity.roots.store(Arc::new(roots));
                        if active_changed {
                            rotated.notify_one();
                        }
                    }
                    Err(error) => warn!(error = %ErrorChain(&error), "ignoring unusable CA roots"),
                }
            }
            Err(error) => {
                warn!(error = %ErrorChain(&error), "CA roots watch failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn renew_leaves(
    identity: Arc<Identity>,
    source: Source,
    metrics: TlsMetrics,
    rotated: Arc<Notify>,
) {
    loop {
        let leaf = identity.leaf.load_full();
        let at = renew::renew_at(leaf.issued, leaf.not_after, rand::random::<f64>());
        let wait = Duration::from_secs_f64((at - unix_now()).max(0.0));
        let after_rotation = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = rotated.notified() => true,
        };
        if after_rotation {
            if identity.roots.load().active_id == leaf.root_id {
                continue;
            }
            // Spread the re-signing of every sidecar over a second or two.
            let spread = Duration::from_secs_f64(2.0 * rand::random::<f64>());
            tokio::time::sleep(spread).await;
            info!("CA root rotated; renewing the leaf now");
        }
        let mut attempt = 0;
        loop {
            match sign(
                &source.control,
                &source.proxy_id,
                &leaf.spiffe_id,
                &source.dns_names,
                &identity.provider,
                source.state.as_deref(),
            )
            .await
            {
                Ok(new_leaf) => {
                    metrics.renewals.inc();
                    metrics.leaf_expiry.set(new_leaf.not_after as i64);
                    log_leaf(&new_leaf, true);
                    identity.leaf.store(Arc::new(new_leaf));
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    metrics.renewal_failures.inc();
                    let delay = renew::retry_after(attempt, unix_now(), leaf.not_after);
                    warn!(error = %ErrorChain(&error), attempt, retry_in_secs = delay, "leaf renewal failed");
                    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
                }
            }
        }
    }
}
