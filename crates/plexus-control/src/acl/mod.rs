//! ACL state in the store and token resolution: tokens, policies and roles under `acl/`, the
//! built-in `global-management` policy and anonymous token, bootstrap (once, with Consul's reset
//! file), expiry, and the [`plexus_runtime::acl::Resolve`] every request's edge calls.
//!
//! - [`Acl`]: reads through an in-memory snapshot of `acl/`, re-read when the store revision
//!   has moved (and once more before answering "ACL not found", so a token just created through
//!   another replica is found); compiled authorizers are cached per token within a snapshot.
//! - [`write`]: creating, updating and deleting tokens, policies and roles, and bootstrap.
//! - [`api`]: `/v1/acl/*` and `/v1/internal/acl/authorizer` (remote agents).
//!
//! Secrets are compared in constant time ([`SecretId::matches`], every token looked at) and
//! never logged: log lines name AccessorIDs only.

pub mod api;
#[cfg(test)]
mod tests;
pub mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use plexus_api::acl::model::{Policy, ResolvedToken, Role, Token};
use plexus_api::acl::{
    ANONYMOUS_ACCESSOR_ID, Authorizer, DefaultPolicy, Rules, SecretId, parse_rules,
};
use plexus_runtime::acl::{Resolve, ResolveError};

use crate::store::{Store, StoreError};

/// Store prefix of everything ACL.
pub const PREFIX: &str = "acl/";
pub(crate) const TOKENS: &str = "acl/tokens/";
pub(crate) const POLICIES: &str = "acl/policies/";
pub(crate) const ROLES: &str = "acl/roles/";
pub(crate) const POLICY_NAMES: &str = "acl/policy-names/";
pub(crate) const ROLE_NAMES: &str = "acl/role-names/";
pub(crate) const BOOTSTRAP: &str = "acl/bootstrap";

/// The name of the file that allows one more bootstrap (Consul's), in the server's data dir.
pub const RESET_FILE: &str = "acl-bootstrap-reset";

/// How the control plane enforces ACLs.
#[derive(Debug, Clone)]
pub struct AclConfig {
    /// Whether tokens are checked at all (`plexus server`: on; `plexus dev`: off unless `--acl`).
    pub enabled: bool,
    /// What happens when no rule matches (`--acl-default-policy`; `deny` by default).
    pub default_policy: DefaultPolicy,
    /// Where the bootstrap reset file is looked for (`<data dir>/acl-bootstrap-reset`).
    pub reset_file: Option<PathBuf>,
    /// Shortest `ExpirationTTL` a token may be given (Consul's `token_min_expiration_ttl`, 1m).
    pub min_expiration_ttl: Duration,
    /// Longest `ExpirationTTL` (Consul's `token_max_expiration_ttl`, 24h).
    pub max_expiration_ttl: Duration,
}

impl Default for AclConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            default_policy: DefaultPolicy::Deny,
            reset_file: None,
            min_expiration_ttl: Duration::from_secs(60),
            max_expiration_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why an ACL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The store failed.
    #[error("the ACL store is unavailable")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored ACL record {0:?} is malformed")]
    Corrupt(String),
    /// ACLs are disabled (401, as Consul answers).
    #[error("ACL support disabled")]
    Disabled,
    /// Bad input (400 naming the field).
    #[error("{message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such token, policy or role (404).
    #[error("{0}")]
    NotFound(String),
    /// A name or id is taken, or concurrent writers kept colliding (409).
    #[error("{0}")]
    Conflict(String),
    /// Bootstrap was done already (403).
    #[error("{0}")]
    BootstrapDone(String),
}

impl AclError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AclError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything under `acl/` as of one store revision.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) revision: u64,
    pub(crate) tokens: HashMap<String, Token>,
    pub(crate) policies: HashMap<String, Policy>,
    pub(crate) roles: HashMap<String, Role>,
    /// Compiled authorizers by AccessorID, filled on first use.
    compiled: RwLock<HashMap<String, Authorizer>>,
}

impl Snapshot {
    /// The token whose secret is `secret`: every token is compared, in constant time each.
    fn by_secret(&self, secret: &SecretId) -> Option<&Token> {
        let mut found = None;
        for token in self.tokens.values() {
            if token.secret_id.matches(secret.expose()) && found.is_none() {
                found = Some(token);
            }
        }
        found
    }

    pub(crate) fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.get(id)
    }

    pub(crate) fn policy_by_name(&self, name: &str) -> Option<&Policy> {
        self.policies.values().find(|p| p.name == name)
    }

    pub(crate) fn role_by_name(&self, name: &str) -> Option<&Role> {
        self.roles.values().find(|r| r.name == name)
    }

    /// What a token may do, as rule texts and identities (links to deleted policies or roles
    /// grant nothing).
    pub(crate) fn effective(&self, token: &Token) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut rules = Vec::new();
        let mut services: Vec<String> = token
            .service_identities
            .iter()
            .map(|s| s.service_name.clone())
            .collect();
        let mut nodes: Vec<String> = token
            .node_identities
            .iter()
            .map(|n| n.node_name.clone())
            .collect();
        let mut policy_ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        for link in &token.roles {
            if let Some(role) = self.roles.get(&link.id) {
                policy_ids.extend(role.policies.iter().map(|l| l.id.as_str()));
                services.extend(
                    role.service_identities
                        .iter()
                        .map(|s| s.service_name.clone()),
                );
                nodes.extend(role.node_identities.iter().map(|n| n.node_name.clone()));
            }
        }
        policy_ids.sort_unstable();
        policy_ids.dedup();
        for id in policy_ids {
            if let Some(policy) = self.policies.get(id) {
                rules.push(policy.rules.clone());
            }
        }
        (rules, services, nodes)
    }
}

/// The ACL system of one control-plane replica.
pub struct Acl {
    store: Arc<dyn Store>,
    config: AclConfig,
    anonymous: SecretId,
    snapshot: RwLock<Arc<Snapshot>>,
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time into Unix seconds.
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Formats Unix seconds as RFC 3339.
pub(crate) fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Whether `token` has expired at `now`.
pub(crate) fn expired(token: &Token, now: i64) -> bool {
    token
        .expiration_time
        .as_deref()
        .and_then(parse_time)
        .is_some_and(|at| at <= now)
}

impl Acl {
    /// The ACL system over `store`. Call [`Acl::start`] before serving.
    pub fn new(store: Arc<dyn Store>, config: AclConfig) -> Self {
        Self {
            store,
            config,
            anonymous: SecretId::new(plexus_api::acl::ANONYMOUS_SECRET_ID),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AclConfig {
        &self.config
    }

    /// Creates the built-in policy and the anonymous token when missing (compare-and-set, so
    /// replicas starting together agree), and, with `initial_management`, a management token
    /// with that secret (Consul's `acl.tokens.initial_management`).
    pub async fn start(&self, initial_management: Option<&SecretId>) -> Result<(), AclError> {
        if !self.config.enabled {
            return Ok(());
        }
        write::ensure_builtins(self).await?;
        if let Some(secret) = initial_management {
            write::ensure_initial_management(self, secret).await?;
        }
        self.reload().await?;
        Ok(())
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads `acl/` from the store.
    pub(crate) async fn reload(&self) -> Result<Arc<Snapshot>, AclError> {
        let _one_at_a_time = self.refresh.lock().await;
        let (records, revision) = self.store.range(PREFIX).await?;
        let mut snapshot = Snapshot {
            revision,
            ..Snapshot::default()
        };
        for kv in records {
            let corrupt = || AclError::Corrupt(kv.key.clone());
            if let Some(id) = kv.key.strip_prefix(TOKENS) {
                let mut token: Token = serde_json::from_slice(&kv.value).map_err(|_| corrupt())?;
                (token.create_index, token.modify_index) = (kv.create_revision, kv.mod_revision);
                snapshot.tokens.insert(id.to_owned(), token);
            } else if let Some(id) = kv.key.strip_prefix(POLICIES) {
                let mut policy: Policy =
                    serde_json::from_slice(&kv.value).map_err(|_| corrupt())?;
                (policy.create_index, policy.modify_index) = (kv.create_revision, kv.mod_revision);
                snapshot.policies.insert(id.to_owned(), policy);
            } else if let Some(id) = kv.key.strip_prefix(ROLES) {
                let mut role: Role = serde_json::from_slice(&kv.value).map_err(|_| corrupt())?;
                (role.create_index, role.modify_index) = (kv.create_revision, kv.mod_revision);
                snapshot.roles.insert(id.to_owned(), role);
            }
        }
        let snapshot = Arc::new(snapshot);
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot.clone();
        Ok(snapshot)
    }

    /// The snapshot, re-read when the store has moved since it was taken.
    pub(crate) async fn fresh(&self) -> Result<Arc<Snapshot>, AclError> {
        let current = self.current();
        let revision = *self.store.revision_watch().borrow();
        if current.revision >= revision && current.revision > 0 {
            return Ok(current);
        }
        self.reload().await
    }

    /// The token a secret belongs to (`None`: the anonymous token), unexpired.
    pub(crate) async fn token_for(&self, secret: Option<&SecretId>) -> Result<Token, ResolveError> {
        let unavailable = |e: AclError| ResolveError::Unavailable(e.to_string());
        let secret = secret.unwrap_or(&self.anonymous);
        let mut snapshot = self.fresh().await.map_err(unavailable)?;
        let mut found = snapshot.by_secret(secret).cloned();
        if found.is_none() {
            // Written through another replica a moment ago?
            snapshot = self.reload().await.map_err(unavailable)?;
            found = snapshot.by_secret(secret).cloned();
        }
        match found {
            Some(token) if !expired(&token, unix_now()) => Ok(token),
            Some(token) => {
                tracing::debug!(accessor_id = %token.accessor_id, "expired token refused");
                Err(ResolveError::NotFound)
            }
            None => Err(ResolveError::NotFound),
        }
    }

    /// What the token with `secret` may do, for a remote agent to build the same authorizer.
    pub async fn resolved(&self, secret: Option<&SecretId>) -> Result<ResolvedToken, ResolveError> {
        if !self.config.enabled {
            return Ok(ResolvedToken {
                enabled: false,
                default_policy: self.config.default_policy,
                ..ResolvedToken::default()
            });
        }
        let token = self.token_for(secret).await?;
        let snapshot = self.current();
        let (policy_rules, service_identities, node_identities) = snapshot.effective(&token);
        Ok(ResolvedToken {
            accessor_id: token.accessor_id,
            policy_rules,
            service_identities,
            node_identities,
            default_policy: self.config.default_policy,
            enabled: true,
        })
    }

    /// Compiles (or takes from the snapshot's cache) a token's authorizer.
    fn authorizer(&self, snapshot: &Snapshot, token: &Token) -> Authorizer {
        if let Some(found) = snapshot
            .compiled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&token.accessor_id)
        {
            return found.clone();
        }
        let (texts, services, nodes) = snapshot.effective(token);
        let mut all: Vec<Rules> = Vec::with_capacity(texts.len() + services.len() + nodes.len());
        for text in &texts {
            match parse_rules(text) {
                Ok(rules) => all.push(rules),
                // Validated when written; a record that no longer parses grants nothing.
                Err(error) => {
                    tracing::warn!(accessor_id = %token.accessor_id, %error, "stored policy rules do not parse")
                }
            }
        }
        all.extend(services.iter().map(|s| Rules::service_identity(s)));
        all.extend(nodes.iter().map(|n| Rules::node_identity(n)));
        let authz =
            Authorizer::from_rules(token.accessor_id.clone(), &all, self.config.default_policy);
        snapshot
            .compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.accessor_id.clone(), authz.clone());
        authz
    }
}

#[async_trait::async_trait]
impl Resolve for Acl {
    /// The hot path of every request: no allocation when the token is known and its
    /// authorizer compiled (the common case), one snapshot re-read when the store moved.
    async fn resolve(&self, token: Option<&SecretId>) -> Result<Authorizer, ResolveError> {
        if !self.config.enabled {
            return Ok(Authorizer::allow_all());
        }
        let unavailable = |e: AclError| ResolveError::Unavailable(e.to_string());
        let secret = token.unwrap_or(&self.anonymous);
        let mut snapshot = self.fresh().await.map_err(unavailable)?;
        if snapshot.by_secret(secret).is_none() {
            // Written through another replica a moment ago?
            snapshot = self.reload().await.map_err(unavailable)?;
        }
        match snapshot.by_secret(secret) {
            Some(found) if !expired(found, unix_now()) => Ok(self.authorizer(&snapshot, found)),
            Some(found) => {
                tracing::debug!(accessor_id = %found.accessor_id, "expired token refused");
                Err(ResolveError::NotFound)
            }
            None => Err(ResolveError::NotFound),
        }
    }
}

/// Whether `id` is the anonymous token's.
pub(crate) fn is_anonymous(id: &str) -> bool {
    id == ANONYMOUS_ACCESSOR_ID
}

/// A random UUID (version 4).
pub(crate) fn new_uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `text` is shaped like a UUID.
pub(crate) fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
