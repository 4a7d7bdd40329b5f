//! One trust domain across datacenters: a secondary datacenter (`--primary-datacenter dc1`)
//! signs with an intermediate CA whose certificate the primary's active root signed.
//!
//! ```text
//!  secondary: new key K + CSR (CA, spiffe://<td>) ──PUT /v1/internal/wan/ca/intermediate──► primary
//!  primary:   signs K as a CA (path length 0) with its active root; answers with that
//!             certificate and its roots
//!  secondary: state = { primary's trust domain, K as the active signer with the primary's
//!             certificate as its chain, the primary's roots as the roots it publishes }
//! ```
//!
//! Leaves signed in the secondary carry the intermediate, so every sidecar of the federation,
//! trusting only the primary's roots, verifies them: leaf → intermediate → primary root (the
//! same chain a rotation's cross-signed root uses). SPIFFE ids keep their own `dc` segment.
//! The primary's root key never leaves the primary.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use plexus_api::connect::{CaRoot, CaRoots};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, JsonBody};
use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, KeyPair};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::rotation::RootSet;
use super::wrap::StoredKey;
use super::x509::{colon_hex, issuer, random_serial, root_params, unix_now};
use super::{CaError, CaState, CertificateAuthority, LEAF_BACKDATE, SecretPem, StoredRoot};

/// The endpoint a secondary asks the primary for its intermediate on.
pub const PATH: &str = "/v1/internal/wan/ca/intermediate";

/// How long an intermediate is valid (at most as long as the root that signs it).
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a secondary's CA keeps of its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PrimaryTrust {
    /// The primary datacenter.
    pub(super) datacenter: String,
    /// The primary's roots as it published them (what the secondary publishes too).
    pub(super) roots: Vec<CaRoot>,
    /// The primary's root that signed the intermediate in use.
    #[serde(default)]
    pub(super) signed_by: String,
}

/// A secondary's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IntermediateRequest {
    /// The secondary datacenter.
    pub datacenter: String,
    /// A CSR (PEM) for a CA certificate whose subject the intermediate takes.
    pub csr: String,
}

/// The primary's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntermediateAnswer {
    /// The intermediate's certificate, signed by the primary's active root (PEM).
    pub cert_pem: String,
    /// The primary's roots.
    pub roots: CaRoots,
}

impl CertificateAuthority {
    /// Makes this CA a secondary of `primary` to be: until its intermediate is installed,
    /// signing and the roots endpoint answer 503 (so no sidecar starts with the trust domain
    /// it is about to leave).
    pub fn expect_primary(&self, primary: &str) {
        *plexus_runtime::lock::lock(&self.expected_primary) = Some(primary.to_owned());
    }

    /// `Err(AwaitingPrimary)` while a secondary-to-be has no intermediate from its primary.
    pub(super) fn check_primary(&self, state: &CaState) -> Result<(), CaError> {
        let expected = plexus_runtime::lock::lock(&self.expected_primary).clone();
        match expected {
            Some(primary)
                if state.primary.as_ref().map(|p| p.datacenter.as_str())
                    != Some(primary.as_str()) =>
            {
                Err(CaError::AwaitingPrimary(primary))
            }
            _ => Ok(()),
        }
    }

    /// [`CertificateAuthority::check_primary`] on the current state.
    pub async fn ready_for_clients(&self) -> Result<(), CaError> {
        let (state, _) = self.state().await?;
        self.check_primary(&state)
    }

    /// For a secondary of `primary`: the primary root that signed its intermediate, and when
    /// the intermediate should be renewed (two thirds into its life). `None` otherwise.
    pub async fn intermediate_of(&self, primary: &str) -> Result<Option<(String, i64)>, CaError> {
        let (state, _) = self.state().await?;
        let Some(trust) = state.primary.as_ref().filter(|p| p.datacenter == primary) else {
            return Ok(None);
        };
        let active = state.active()?;
        let renew_at = active.not_before + (active.not_after - active.not_before) * 2 / 3;
        Ok(Some((trust.signed_by.clone(), renew_at)))
    }

    /// Publishes the primary's current `roots` (after a rotation there): sidecars here trust
    /// what the primary's sidecars are signed by.
    pub async fn refresh_primary_roots(&self, roots: &CaRoots) -> Result<(), CaError> {
        let changed = std::sync::atomic::AtomicBool::new(false);
        self.update(|state| {
            let Some(trust) = &state.primary else {
                return Ok(None);
            };
            if trust.roots == roots.roots || roots.roots.is_empty() {
                return Ok(None);
            }
            if roots.trust_domain != state.trust_domain {
                warn!(primary = %trust.datacenter, ours = %state.trust_domain, theirs = %roots.trust_domain, "the primary's trust domain changed; keeping ours");
                return Ok(None);
            }
            let mut next = state.clone();
            if let Some(trust) = &mut next.primary {
                trust.roots = roots.roots.clone();
            }
            changed.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Some(next))
        })
        .await?;
        if changed.load(std::sync::atomic::Ordering::Relaxed) {
            info!(roots = roots.roots.len(), active = %roots.active_root_id, "published the primary datacenter's new roots");
        }
        Ok(())
    }

    /// The primary datacenter this CA is a secondary of, if any.
    pub async fn primary(&self) -> Result<Option<String>, CaError> {
        Ok(self.state().await?.0.primary.map(|p| p.datacenter))
    }

    /// Signs a secondary datacenter's intermediate CA with the active root (only a CA that is
    /// not itself a secondary signs; the CSR's subject is kept, its key must be P-256).
    pub async fn sign_intermediate(
        &self,
        request: &IntermediateRequest,
    ) -> Result<IntermediateAnswer, CaError> {
        let bad = |message: String, field: &'static str| CaError::BadRequest { message, field };
        if !crate::wan::valid_name(&request.datacenter) || request.datacenter == self.datacenter {
            return Err(bad(
                format!("{:?} is not another datacenter's name", request.datacenter),
                "Datacenter",
            ));
        }
        let (state, _) = self.state().await?;
        if let Some(primary) = &state.primary {
            return Err(bad(
                format!(
                    "this datacenter is a secondary of {:?}: ask the primary",
                    primary.datacenter
                ),
                "Datacenter",
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(&request.csr)
            .map_err(|e| bad(format!("CSR does not parse: {e}"), "Csr"))?;
        let active = state.active()?;
        let by = issuer(active, &state.trust_domain, self.kek.as_ref())?;
        let now = unix_now() as i64;
        let template = StoredRoot {
            id: String::new(),
            name: String::new(),
            serial: random_serial(),
            common_name: common_name(&csr.params)
                .ok_or_else(|| bad("CSR has no common name".to_owned(), "Csr"))?,
            cert_pem: String::new(),
            key: StoredKey::Plain(SecretPem(String::new())),
            not_before: now - LEAF_BACKDATE.as_secs() as i64,
            not_after: (now + INTERMEDIATE_VALIDITY.as_secs() as i64).min(active.not_after),
            cross_signed_pem: None,
        };
        let mut params = root_params(&template, &state.trust_domain)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &by.cert, &by.key)
            .map_err(CaError::Crypto)?;
        info!(datacenter = %request.datacenter, root_id = %active.id, "signed a secondary datacenter's intermediate CA");
        Ok(IntermediateAnswer {
            cert_pem: cert.pem(),
            roots: self.roots().await?.value,
        })
    }

    /// Makes this CA a secondary of `primary`: a new key, its CSR signed there by `ask`, then
    /// the state replaced (sidecars see the roots change and renew their leaves at once).
    pub async fn become_secondary<F, Fut>(&self, primary: &str, ask: F) -> Result<(), CaError>
    where
        F: FnOnce(IntermediateRequest) -> Fut,
        Fut: std::future::Future<Output = Result<IntermediateAnswer, String>>,
    {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Crypto)?;
        let now = unix_now() as i64;
        let serial = random_serial();
        let mut root = StoredRoot {
            id: String::new(),
            name: format!("Plexus CA {} intermediate", self.datacenter),
            serial,
            common_name: format!("Plexus CA {} intermediate {serial:x}", self.datacenter),
            cert_pem: String::new(),
            key: StoredKey::Plain(SecretPem(String::new())),
            not_before: now - LEAF_BACKDATE.as_secs() as i64,
            not_after: now + INTERMEDIATE_VALIDITY.as_secs() as i64,
            cross_signed_pem: None,
        };
        // The CSR names the subject; the primary writes the rest (CA, trust domain, validity).
        let mut subject = rcgen::CertificateParams::default();
        subject
            .distinguished_name
            .push(rcgen::DnType::CommonName, root.common_name.clone());
        let csr = subject
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(CaError::Crypto)?;
        let answer = ask(IntermediateRequest {
            datacenter: self.datacenter.clone(),
            csr,
        })
        .await
        .map_err(|message| CaError::BadRequest {
            message,
            field: "primary_datacenter",
        })?;
        let trust_domain = answer.roots.trust_domain.clone();
        if answer.roots.roots.is_empty() || trust_domain.is_empty() {
            return Err(CaError::Corrupt {
                what: "the primary answered without roots",
            });
        }
        let own = root_params(&root, &trust_domain)?
            .self_signed(&key)
            .map_err(CaError::Crypto)?;
        root.id = colon_hex(&own.key_identifier());
        root.cert_pem = own.pem();
        root.key = StoredKey::seal(SecretPem(key.serialize_pem()), &root.id, self.kek.as_ref())?;
        root.cross_signed_pem = Some(answer.cert_pem);
        let primary = PrimaryTrust {
            datacenter: primary.to_owned(),
            signed_by: answer.roots.active_root_id.clone(),
            roots: answer.roots.roots,
        };
        let installed = self
            .update(|state| {
                let mut next = state.clone();
                next.trust_domain.clone_from(&trust_domain);
                next.set = RootSet::new(root.id.clone(), state.leaf_ttl_secs);
                next.roots = vec![root.clone()];
                next.primary = Some(primary.clone());
                Ok(Some(next))
            })
            .await?;
        info!(primary = %primary.datacenter, trust_domain = %installed.trust_domain, intermediate = %root.id, "this datacenter's CA now signs with an intermediate of the primary's root");
        Ok(())
    }
}

fn common_name(params: &rcgen::CertificateParams) -> Option<String> {
    match params.distinguished_name.get(&rcgen::DnType::CommonName)? {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The roots a secondary publishes: the primary's, with this CA's active signer as the active
/// id (sidecars compare it with their leaf's).
pub(super) fn published(state: &CaState, primary: &PrimaryTrust) -> CaRoots {
    CaRoots {
        active_root_id: state.set.active.clone(),
        trust_domain: state.trust_domain.clone(),
        roots: primary.roots.clone(),
    }
}

/// `PUT /v1/internal/wan/ca/intermediate` (needs `operator:write`).
pub fn router(ca: Arc<CertificateAuthority>) -> Router {
    Router::new()
        .route(PATH, put(sign_intermediate))
        .with_state(ca)
}

async fn sign_intermediate(
    State(ca): State<Arc<CertificateAuthority>>,
    authz: Authz,
    JsonBody(request): JsonBody<IntermediateRequest>,
) -> Response {
    if let Err(denied) = authz.require_operator_write() {
        return ApiError::from(denied).into_response();
    }
    match ca.sign_intermediate(&request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => super::api::ca_error(&ca, error),
    }
}

/// Keeps this server's CA a secondary of `primary`: waits until the federation knows the
/// primary's servers, asks one of them (with `token`) for an intermediate, then follows the
/// primary's roots (blocking query): their changes are published here, and a new active root
/// there (a rotation), or the intermediate two thirds into its life, gets a new intermediate.
/// Failures are retried with backoff; runs until `stop`.
pub async fn run_secondary(
    ca: Arc<CertificateAuthority>,
    federation: crate::wan::Shared,
    primary: String,
    token: Option<plexus_api::acl::SecretId>,
    stop: CancellationToken,
) {
    let mut backoff =
        plexus_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut index = 0;
    loop {
        let step = async {
            let client = match federation.client_for(&primary) {
                None => {
                    return Err(format!(
                        "no server of the primary datacenter {primary:?} is known yet (retry_join_wan)"
                    ));
                }
                Some(Err(error)) => return Err(error.to_string()),
                Some(Ok(client)) => client.with_token(token.clone()),
            };
            let renew = match ca
                .intermediate_of(&primary)
                .await
                .map_err(|e| plexus_runtime::ErrorChain(&e).to_string())?
            {
                None => true,
                Some((_, renew_at)) if unix_now() as i64 >= renew_at => true,
                Some((signed_by, _)) => {
                    let roots = client
                        .connect_ca_roots(plexus_api::client::QueryOptions::blocking(
                            index,
                            Duration::from_secs(300),
                        ))
                        .await
                        .map_err(|e| format!("reading the primary's roots: {e}"))?;
                    if roots.index < index {
                        index = 0;
                    } else {
                        index = roots.index;
                    }
                    ca.refresh_primary_roots(&roots.value)
                        .await
                        .map_err(|e| plexus_runtime::ErrorChain(&e).to_string())?;
                    roots.value.active_root_id != signed_by
                }
            };
            if renew {
                ca.become_secondary(&primary, |request| async move {
                    client
                        .put_json::<_, IntermediateAnswer>(PATH, Some(&request))
                        .await
                        .map_err(|e| format!("the primary refused or failed: {e}"))
                })
                .await
                .map_err(|e| plexus_runtime::ErrorChain(&e).to_string())?;
            }
            Ok(())
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = step => outcome,
        };
        match outcome {
            Ok(()) => backoff.reset(),
            Err(why) => {
                let delay = backoff.next_delay();
                warn!(primary = %primary, %why, retry_in = ?delay, "cannot keep the primary datacenter's CA; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
