//! The built-in certificate authority: one ECDSA P-256 root (two during a rotation) kept in the
//! store, signing short-lived SPIFFE leaf certificates for sidecars.
//!
//! - [`CertificateAuthority`]: bootstrap (first start creates the trust domain and the root, with
//!   compare-and-set so replicas agree), roots, configuration, rotation.
//! - `signing`: who may have which identity (the registered proxy or gateway, its config
//!   entries), per-caller limits, issuing and caching leaves.
//! - [`policy`]: the pure signing decision (who may have which identity, for how long).
//! - [`rotation`]: the pure root rotation state machine.
//! - [`limit`]: per-caller token buckets (a CSR flood gets 429).
//! - [`api`]: `/v1/connect/ca/*` and `/v1/agent/connect/ca/leaf/:service`.
//!
//! - [`auto_encrypt`]: `POST /v1/internal/auto-encrypt/sign`.
//! - [`tls_certs`]: HTTPS certificates for servers and (`auto_encrypt`) agents.
//! - [`server_tls`]: a server's HTTPS listener configuration from this CA, renewed.
//! - [`wrap`]: the roots' private keys at rest, wrapped under a key-encryption key when one is
//!   given.
//!
//! Everything lives under one store key, `connect/ca/state`, written with compare-and-set. The
//! roots' private keys are in that record and nowhere else: as PEM, or wrapped with AES-256-GCM
//! under a key-encryption key kept outside the store ([`wrap`]); in memory they are held in
//! [`SecretPem`], whose `Debug` redacts, and no API response type has a field for them.

pub mod api;
pub mod auto_encrypt;
pub mod federation;
pub mod limit;
pub mod metrics;
pub mod policy;
pub mod rotation;
pub mod server_tls;
mod signing;
#[cfg(test)]
mod tests;
pub mod tls_certs;
#[cfg(test)]
mod tls_tests;
pub mod wrap;
mod x509;

pub use signing::Entitlement;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_api::Indexed;
use plexus_api::connect::{CaConfiguration, CaProviderConfig, CaRoot, CaRoots, IssuedCert};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::changes::{Changes, Interest};
use crate::store::{Compare, Op, Store, StoreError, Txn};
use policy::Refusal;
use rotation::RootSet;
use x509::{new_root, random_trust_domain, rfc3339, unix_now};

/// The store key of the CA's state.
pub const STATE_KEY: &str = "connect/ca/state";
/// How long a root is valid (ten years).
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are valid from a minute before they are signed (clock skew between hosts).
const LEAF_BACKDATE: Duration = Duration::from_secs(60);
/// Compare-and-set attempts before a write gives up.
const MAX_ATTEMPTS: usize = 16;
/// Signing requests one caller may send at once.
pub const SIGN_BURST: u32 = 10;
/// Signing requests one caller may send per second, sustained.
pub const SIGN_PER_SECOND: f64 = 1.0;

/// A PEM private key: serialised into the store, never shown (`Debug` redacts).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(pub(crate) String);

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// One root as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredRoot {
    id: String,
    name: String,
    serial: u64,
    common_name: String,
    cert_pem: String,
    key: wrap::StoredKey,
    not_before: i64,
    not_after: i64,
    /// This root's certificate signed by the root that was active before it (a rotation).
    cross_signed_pem: Option<String>,
}

/// Revisions of the state record, and of the store when it was read.
#[derive(Debug, Clone, Copy)]
struct Revisions {
    create: u64,
    modify: u64,
    store: u64,
}

/// The CA's whole state: one store record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CaState {
    trust_domain: String,
    leaf_ttl_secs: u64,
    set: RootSet,
    roots: Vec<StoredRoot>,
    /// In a secondary datacenter: the primary and its roots (see [`federation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary: Option<federation::PrimaryTrust>,
}

impl CaState {
    fn root(&self, id: &str) -> Option<&StoredRoot> {
        self.roots.iter().find(|r| r.id == id)
    }

    fn active(&self) -> Result<&StoredRoot, CaError> {
        self.root(&self.set.active).ok_or(CaError::Corrupt {
            what: "the active root is missing",
        })
    }
}

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The store failed.
    #[error("the CA store is unavailable")]
    Store(#[from] StoreError),
    /// The stored state is not readable.
    #[error("the CA state in the store is not valid: {what}")]
    Corrupt {
        /// What is wrong.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed")]
    Crypto(#[source] rcgen::Error),
    /// The stored keys are wrapped and no key-encryption key was given.
    #[error(
        "the CA's private keys in the store are wrapped with a key-encryption key: start with --ca-key-file or PLEXUS_CA_KEY"
    )]
    KeyWrapped,
    /// The stored keys were wrapped with another key-encryption key.
    #[error(
        "the CA key-encryption key (id {given}) is not the one the CA's private keys were wrapped with (id {stored})"
    )]
    WrongKek {
        /// The id stored with the wrapped key.
        stored: String,
        /// The id of the key given.
        given: String,
    },
    /// An agent's CSR was refused (`auto_encrypt`).
    #[error(transparent)]
    Agent(#[from] tls_certs::AgentRefusal),
    /// Concurrent writers kept changing the state.
    #[error("the CA state kept changing during the write; try again")]
    Contended,
    /// A secondary datacenter's CA has no intermediate from its primary yet.
    #[error(
        "this datacenter's CA waits for its intermediate from the primary datacenter {0:?}; try again"
    )]
    AwaitingPrimary(String),
    /// The request is malformed (a CSR that does not parse, a bad duration, …).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the caller.
        message: String,
        /// The request field at fault.
        field: &'static str,
    },
    /// The signing policy refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The caller named a proxy or service that is not registered.
    #[error("{0}")]
    NotFound(String),
    /// Too many signing requests from this caller.
    #[error("too many signing requests from {caller:?}; retry in {retry_after:?}")]
    RateLimited {
        /// The caller.
        caller: String,
        /// When a token is available.
        retry_after: Duration,
    },
}

/// The built-in CA over a store.
pub struct CertificateAuthority {
    store: Arc<dyn Store>,
    changes: Changes,
    datacenter: String,
    limiter: Mutex<limit::Limiter>,
    metrics: metrics::CaMetrics,
    /// Leaves handed out by `/v1/agent/connect/ca/leaf/:service`, by service, until renewal
    /// time or a root rotation (this replica's memory only).
    leaves: Mutex<std::collections::HashMap<String, Indexed<IssuedCert>>>,
    kek: Option<wrap::KeyEncryptionKey>,
    /// `--primary-datacenter` of a secondary: nothing is signed and no roots are published
    /// until the intermediate from it is installed (see [`federation`]).
    expected_primary: Mutex<Option<String>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A CA over `store` for datacenter `datacenter`. Nothing is read or written until
    /// [`CertificateAuthority::bootstrap`] or the first request.
    pub fn new(store: Arc<dyn Store>, datacenter: impl Into<String>) -> Self {
        Self {
            changes: Changes::new(Arc::clone(&store), STATE_KEY),
            store,
            datacenter: datacenter.into(),
            limiter: Mutex::new(limit::Limiter::new(SIGN_BURST, SIGN_PER_SECOND)),
            metrics: metrics::CaMetrics::default(),
            leaves: Mutex::new(std::collections::HashMap::new()),
            kek: None,
            expected_primary: Mutex::new(None),
        }
    }

    /// Keeps the roots' private keys wrapped under `kek` in the store (plaintext keys found at
    /// [`CertificateAuthority::bootstrap`] are wrapped then).
    pub fn with_key_encryption(mut self, kek: wrap::KeyEncryptionKey) -> Self {
        self.kek = Some(kek);
        self
    }

    /// The datacenter it signs for.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// Whether a key-encryption key was given.
    pub fn wraps_keys(&self) -> bool {
        self.kek.is_some()
    }

    /// The CA's metrics.
    pub fn metrics(&self) -> &metrics::CaMetrics {
        &self.metrics
    }

    /// The store's revision watch.
    pub fn revision_watch(&self) -> watch::Receiver<u64> {
        self.store.revision_watch()
    }

    /// The last revision at which the CA's state (roots, configuration) changed, moving with
    /// each change: what blocking queries on the roots wait on.
    pub async fn changes(&self) -> watch::Receiver<u64> {
        self.changes
            .watch(Interest::Key(STATE_KEY.to_owned()))
            .await
    }

    /// The state with its record's revisions and the store revision the read reflects.
    async fn read(&self) -> Result<Option<(CaState, Revisions)>, CaError> {
        let (records, store) = self.store.range(STATE_KEY).await?;
        let Some(kv) = records.into_iter().find(|kv| kv.key == STATE_KEY) else {
            return Ok(None);
        };
        let state = serde_json::from_slice(&kv.value).map_err(|_| CaError::Corrupt {
            what: "the record does not decode",
        })?;
        Ok(Some((
            state,
            Revisions {
                create: kv.create_revision,
                modify: kv.mod_revision,
                store,
            },
        )))
    }

    /// Reads the state, creating the trust domain and first root when there is none yet. Replicas
    /// starting together agree: only one creation commits; the others read it.
    ///
    /// Then checks that the roots' keys can be read (a wrapped key needs the key-encryption key
    /// it was wrapped with: [`CaError::KeyWrapped`], [`CaError::WrongKek`]) and, with a
    /// key-encryption key, wraps keys still stored in plaintext.
    pub async fn bootstrap(&self) -> Result<(), CaError> {
        self.state().await?;
        self.check_keys().await
    }

    async fn check_keys(&self) -> Result<(), CaError> {
        let kek = self.kek.as_ref();
        let (state, _) = self.state().await?;
        for root in &state.roots {
            root.key.open(&root.id, kek)?;
        }
        if kek.is_none() || state.roots.iter().all(|r| r.key.is_wrapped()) {
            return Ok(());
        }
        let state = self
            .update(|state| {
                if state.roots.iter().all(|r| r.key.is_wrapped()) {
                    return Ok(None);
                }
                let mut next = state.clone();
                for root in &mut next.roots {
                    let pem = root.key.open(&root.id, kek)?;
                    root.key = wrap::StoredKey::seal(pem, &root.id, kek)?;
                }
                Ok(Some(next))
            })
            .await?;
        info!(roots = state.roots.len(), kek_id = %kek.map(|k| k.id()).unwrap_or_default(), "wrapped the CA's private keys with the key-encryption key");
        Ok(())
    }

    /// Like [`CertificateAuthority::bootstrap`], and sets the leaf TTL: a new CA starts with it
    /// (so its roots never need to outlive the 72 h default), an existing one is reconfigured.
    pub async fn bootstrap_with_leaf_ttl(&self, ttl: Duration) -> Result<(), CaError> {
        self.create_with(ttl).await?;
        self.check_keys().await?;
        self.set_leaf_ttl(ttl).await
    }

    async fn state(&self) -> Result<(CaState, Revisions), CaError> {
        self.create_with(policy::DEFAULT_LEAF_TTL).await
    }

    async fn create_with(&self, leaf_ttl: Duration) -> Result<(CaState, Revisions), CaError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(found) = self.read().await? {
                return Ok(found);
            }
            let trust_domain = random_trust_domain();
            let root = new_root(&trust_domain, None, 1, self.kek.as_ref())?;
            let state = CaState {
                leaf_ttl_secs: leaf_ttl.as_secs(),
                set: RootSet::new(root.id.clone(), leaf_ttl.as_secs()),
                roots: vec![root],
                trust_domain,
                primary: None,
            };
            if self.write(&state, 0).await? {
                info!(trust_domain = %state.trust_domain, root_id = %state.set.active, "created the CA root");
            }
        }
        Err(CaError::Contended)
    }

    /// Writes `state` if the record's revision is still `expected` (0: absent).
    async fn write(&self, state: &CaState, expected: u64) -> Result<bool, CaError> {
        let value = serde_json::to_vec(state).map_err(|_| CaError::Corrupt {
            what: "the record does not encode",
        })?;
        let result = self
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision {
                    key: STATE_KEY.to_owned(),
                    revision: expected,
                }],
                ops: vec![Op::Put {
                    key: STATE_KEY.to_owned(),
                    value,
                }],
            })
            .await?;
        Ok(result.succeeded)
    }

    /// Applies `change` to the state with compare-and-set, retrying on conflicts.
    async fn update(
        &self,
        change: impl Fn(&CaState) -> Result<Option<CaState>, CaError>,
    ) -> Result<CaState, CaError> {
        for _ in 0..MAX_ATTEMPTS {
            let (state, kv) = self.state().await?;
            let Some(next) = change(&state)? else {
                return Ok(state);
            };
            if self.write(&next, kv.modify).await? {
                return Ok(next);
            }
        }
        Err(CaError::Contended)
    }

    /// `GET /v1/connect/ca/roots`.
    pub async fn roots(&self) -> Result<Indexed<CaRoots>, CaError> {
        let (state, kv) = self.state().await?;
        if let Some(primary) = &state.primary {
            return Ok(Indexed {
                index: kv.store,
                value: federation::published(&state, primary),
            });
        }
        let trusted = state.set.trusted();
        let roots = state
            .roots
            .iter()
            .filter(|r| trusted.contains(&r.id.as_str()))
            .map(|r| CaRoot {
                id: r.id.clone(),
                name: r.name.clone(),
                serial_number: r.serial,
                signing_key_id: r.id.clone(),
                external_trust_domain: state.trust_domain.clone(),
                not_before: rfc3339(r.not_before),
                not_after: rfc3339(r.not_after),
                root_cert: r.cert_pem.clone(),
                intermediate_certs: r.cross_signed_pem.iter().cloned().collect(),
                active: r.id == state.set.active,
                private_key_type: "ec".to_owned(),
                private_key_bits: 256,
                create_index: kv.create,
                modify_index: kv.modify,
            })
            .collect();
        Ok(Indexed {
            index: kv.store,
            value: CaRoots {
                active_root_id: state.set.active.clone(),
                trust_domain: state.trust_domain.clone(),
                roots,
            },
        })
    }

    /// The trust domain.
    pub async fn trust_domain(&self) -> Result<String, CaError> {
        Ok(self.state().await?.0.trust_domain)
    }

    /// `GET /v1/connect/ca/configuration`.
    pub async fn configuration(&self) -> Result<CaConfiguration, CaError> {
        let (state, kv) = self.state().await?;
        Ok(CaConfiguration {
            provider: "plexus".to_owned(),
            config: CaProviderConfig {
                leaf_cert_ttl: Some(format_duration(Duration::from_secs(state.leaf_ttl_secs))),
                rotate_root: false,
                private_key: None,
            },
            create_index: kv.create,
            modify_index: kv.modify,
        })
    }

    /// Sets the leaf TTL (bounded by [`policy::MIN_LEAF_TTL`] and [`policy::MAX_LEAF_TTL`]).
    pub async fn set_leaf_ttl(&self, ttl: Duration) -> Result<(), CaError> {
        if !(policy::MIN_LEAF_TTL..=policy::MAX_LEAF_TTL).contains(&ttl) {
            return Err(CaError::BadRequest {
                message: format!(
                    "LeafCertTTL must be between {} and {}, not {}",
                    format_duration(policy::MIN_LEAF_TTL),
                    format_duration(policy::MAX_LEAF_TTL),
                    format_duration(ttl)
                ),
                field: "Config.LeafCertTTL",
            });
        }
        let secs = ttl.as_secs();
        self.update(|state| {
            if state.leaf_ttl_secs == secs {
                return Ok(None);
            }
            let mut next = state.clone();
            next.leaf_ttl_secs = secs;
            next.set = state.set.leaf_ttl_changed(secs);
            Ok(Some(next))
        })
        .await?;
        info!(leaf_ttl = %format_duration(ttl), "CA leaf TTL set");
        Ok(())
    }

    /// Creates a new root, cross-signed by the active one, and makes it active. The previous
    /// root stays trusted until every leaf it signed has expired.
    pub async fn rotate(&self) -> Result<String, CaError> {
        let state = self
            .update(|state| {
                if let Some(primary) = &state.primary {
                    return Err(CaError::BadRequest {
                        message: format!(
                            "this datacenter's CA is an intermediate of {:?}'s: rotate the root there",
                            primary.datacenter
                        ),
                        field: "Config.RotateRoot",
                    });
                }
                let active = state.active()?;
                let root = new_root(
                    &state.trust_domain,
                    Some(active),
                    state.roots.len() + 1,
                    self.kek.as_ref(),
                )?;
                let mut next = state.clone();
                next.set = state.set.rotate(root.id.clone(), unix_now());
                next.roots.push(root);
                let trusted = next.set.trusted();
                next.roots.retain(|r| trusted.contains(&r.id.as_str()));
                Ok(Some(next))
            })
            .await?;
        self.metrics.rotations.inc();
        info!(root_id = %state.set.active, retiring = state.set.retiring.len(), "CA root rotated");
        Ok(state.set.active)
    }

    /// Drops roots whose leaves have all expired; returns when the next one is due, if any.
    pub async fn retire_due(&self) -> Result<Option<u64>, CaError> {
        let now = unix_now();
        let state = self
            .update(|state| {
                let next_set = state.set.retire(now);
                if next_set == state.set {
                    return Ok(None);
                }
                let mut next = state.clone();
                next.set = next_set;
                let trusted = next.set.trusted();
                next.roots.retain(|r| trusted.contains(&r.id.as_str()));
                Ok(Some(next))
            })
            .await?;
        Ok(state.set.next_retirement())
    }

    /// Retires old roots when they are due until `stop` resolves (a timer per rotation, woken
    /// early by a change of the CA's state so a new rotation is noticed).
    pub async fn run_retirement(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut revisions = self.changes().await;
        tokio::pin!(stop);
        loop {
            let next = match self.retire_due().await {
                Ok(next) => next,
                Err(error) => {
                    warn!(error = %crate::api::ErrorChain(&error), "root retirement failed; retrying");
                    Some(unix_now() + 5)
                }
            };
            let sleep = async {
                match next {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_secs(
                            at.saturating_sub(unix_now()).max(1),
                        ))
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = sleep => {}
                changed = revisions.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// When a leaf handed out by the leaf endpoint is replaced: at half its lifetime.
pub fn renew_time(cert: &IssuedCert) -> i64 {
    cert.valid_after_unix + (cert.valid_before_unix - cert.valid_after_unix) / 2
}

/// Formats a duration as Go does for whole units (`72h0m0s` → `72h`, `2m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}
