//! How a remote agent (`plexus agent --server …`) resolves its callers' tokens: it asks a
//! server (`GET /v1/internal/acl/authorizer` with the caller's token) and keeps the answer for
//! `token_ttl` (Consul's `acl.token_ttl`, 30 s by default).
//!
//! Staleness, as with Consul's agents: a token deleted or changed on the servers may still be
//! honoured by an agent that cached it, for up to `token_ttl`. While no server answers, a
//! cached entry is used past its TTL (Consul's `down_policy = "extend-cache"`); a token never
//! seen is refused with 503. An unknown token is not cached (so a token created a moment ago
//! works at once).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use plexus_api::acl::{Authorizer, SecretId};
use plexus_api::client::Client;
use plexus_runtime::acl::{Resolve, ResolveError};

/// How many tokens an agent keeps (the oldest is dropped beyond).
const CAPACITY: usize = 1024;

/// Resolves tokens by asking a server, with a cache.
pub struct RemoteResolver {
    client: Client,
    token_ttl: Duration,
    cache: Mutex<Vec<Entry>>,
}

struct Entry {
    /// `None`: the anonymous token (no token sent).
    secret: Option<SecretId>,
    fetched: Instant,
    authz: Authorizer,
}

impl std::fmt::Debug for RemoteResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteResolver")
            .field("token_ttl", &self.token_ttl)
            .finish_non_exhaustive()
    }
}

impl RemoteResolver {
    /// A resolver asking the servers `client` talks to.
    pub fn new(client: Client, token_ttl: Duration) -> Self {
        Self {
            client,
            token_ttl,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The cached entry for `token` (compared in constant time), fresh or not.
    fn cached(&self, token: Option<&SecretId>) -> Option<(Instant, Authorizer)> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for entry in cache.iter() {
            let same = match (&entry.secret, token) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            if same && found.is_none() {
                found = Some((entry.fetched, entry.authz.clone()));
            }
        }
        found
    }

    fn remember(&self, token: Option<&SecretId>, authz: Authorizer) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|e| match (&e.secret, token) {
            (None, None) => false,
            (Some(a), Some(b)) => a != b,
            _ => true,
        });
        if cache.len() >= CAPACITY {
            cache.remove(0);
        }
        cache.push(Entry {
            secret: token.cloned(),
            fetched: Instant::now(),
            authz,
        });
    }

    fn forget(&self, token: Option<&SecretId>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|e| match (&e.secret, token) {
            (None, None) => false,
            (Some(a), Some(b)) => a != b,
            _ => true,
        });
    }
}

#[async_trait::async_trait]
impl Resolve for RemoteResolver {
    async fn resolve(&self, token: Option<&SecretId>) -> Result<Authorizer, ResolveError> {
        let cached = self.cached(token);
        if let Some((fetched, authz)) = &cached
            && fetched.elapsed() < self.token_ttl
        {
            return Ok(authz.clone());
        }
        match self.client.acl_resolve(token).await {
            Ok(resolved) => {
                let authz = resolved.authorizer();
                self.remember(token, authz.clone());
                Ok(authz)
            }
            Err(error) if error.status() == Some(403) => {
                self.forget(token);
                Err(ResolveError::NotFound)
            }
            Err(error) => match cached {
                Some((_, authz)) => {
                    tracing::warn!(%error, "cannot refresh a token from the servers; using the cached one");
                    Ok(authz)
                }
                None => Err(ResolveError::Unavailable(error.to_string())),
            },
        }
    }
}
