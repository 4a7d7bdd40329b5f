//! Intentions: stored source → destination allow/deny rules, and the decisions made from them.
//!
//! Storage: `connect/intentions/<id>` holds each [`Intention`]; `connect/intention-pairs/<src>/<dst>`
//! holds the id of the one intention for that pair, created with compare-and-set so two writers
//! cannot create duplicates. The decision itself is [`plexus_api::connect::decide`] (pure).
//!
//! The default policy (`connect.default_intention_policy`) is server configuration: the dev
//! server allows by default, a production server denies.

pub mod api;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plexus_api::Indexed;
use plexus_api::config_entry::ServiceIntentions;
use plexus_api::connect::intention::{WILDCARD, precedence};
use plexus_api::connect::{
    Decision, DefaultPolicy, Intention, IntentionInput, ServiceId, decide, validate_rule,
};
use tokio::sync::watch;

use crate::catalog::keys::escape;
use crate::store::changes::{Changes, Interest};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn};

/// Prefix of the intention records.
pub const INTENTIONS: &str = "connect/intentions/";
/// Prefix of the uniqueness index by (source, destination).
pub const PAIRS: &str = "connect/intention-pairs/";

/// Why an intention operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IntentionError {
    /// The store failed.
    #[error("the intention store is unavailable")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored intention {key:?} is not valid")]
    Corrupt {
        /// Its key.
        key: String,
    },
    /// The request is invalid.
    #[error("{message}")]
    Invalid {
        /// Field at fault (`Permissions[0].HTTP.PathPrefix`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such intention.
    #[error("{0}")]
    NotFound(String),
    /// An intention for the pair exists already.
    #[error("an intention from {source_name:?} to {destination:?} already exists (ID {id})")]
    Duplicate {
        /// Source.
        source_name: String,
        /// Destination.
        destination: String,
        /// The existing one.
        id: String,
    },
    /// Concurrent writers.
    #[error("intentions kept changing during the write; try again")]
    Contended,
}

/// The intention service over a store.
pub struct Intentions {
    store: Arc<dyn Store>,
    changes: Changes,
    default_deny: AtomicBool,
}

impl std::fmt::Debug for Intentions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intentions")
            .field("default", &self.default_policy())
            .finish_non_exhaustive()
    }
}

fn pair_key(source: &str, destination: &str) -> String {
    format!("{PAIRS}{}/{}", escape(source), escape(destination))
}

fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn decode(kv: &KeyValue) -> Result<Intention, IntentionError> {
    let mut intention: Intention =
        serde_json::from_slice(&kv.value).map_err(|_| IntentionError::Corrupt {
            key: kv.key.clone(),
        })?;
    intention.create_index = kv.create_revision;
    intention.modify_index = kv.mod_revision;
    intention.precedence = precedence(&intention.source_name, &intention.destination_name);
    Ok(intention)
}

fn encode(intention: &Intention) -> Result<Vec<u8>, IntentionError> {
    serde_json::to_vec(intention).map_err(|_| IntentionError::Corrupt {
        key: intention.id.clone(),
    })
}

/// Checks a service name as a source or destination (`*` allowed).
fn validate_name(field: &'static str, name: &str) -> Result<(), IntentionError> {
    let invalid = |message: String| IntentionError::Invalid {
        field: field.to_owned(),
        message,
    };
    if name.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if name == WILDCARD {
        return Ok(());
    }
    if name.contains('*') {
        return Err(invalid(format!(
            "{field} {name:?}: a wildcard must be the whole name (\"*\")"
        )));
    }
    if name.len() > 256
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "{field} {name:?} is not a service name (letters, digits, '-', '_', '.'; at most 256)"
        )));
    }
    Ok(())
}

/// Validates an intention as written by a client, normalising the defaulted fields.
pub fn validate(intention: &mut Intention) -> Result<(), IntentionError> {
    validate_name("SourceName", &intention.source_name)?;
    validate_name("DestinationName", &intention.destination_name)?;
    for (field, value) in [
        ("SourceNS", &intention.source_ns),
        ("DestinationNS", &intention.destination_ns),
    ] {
        if !value.is_empty() && value != plexus_api::connect::DEFAULT_NAMESPACE {
            return Err(IntentionError::Invalid {
                field: field.to_owned(),
                message: format!("{field} must be \"default\" (namespaces are not supported)"),
            });
        }
    }
    if !intention.source_type.is_empty() && intention.source_type != "consul" {
        return Err(IntentionError::Invalid {
            field: "SourceType".to_owned(),
            message: "SourceType must be \"consul\"".to_owned(),
        });
    }
    if intention.description.len() > 4096 {
        return Err(IntentionError::Invalid {
            field: "Description".to_owned(),
            message: "Description is longer than 4096 bytes".to_owned(),
        });
    }
    validate_rule(intention.action, &intention.permissions)
        .map_err(|(field, message)| IntentionError::Invalid { field, message })?;
    intention.source_ns = plexus_api::connect::DEFAULT_NAMESPACE.to_owned();
    intention.destination_ns = plexus_api::connect::DEFAULT_NAMESPACE.to_owned();
    intention.source_type = "consul".to_owned();
    intention.precedence = precedence(&intention.source_name, &intention.destination_name);
    Ok(())
}

const MAX_ATTEMPTS: usize = 16;

impl Intentions {
    /// Intentions over `store`, with `default` applied when none matches.
    pub fn new(store: Arc<dyn Store>, default: DefaultPolicy) -> Self {
        Self {
            changes: Changes::new(Arc::clone(&store), INTENTIONS),
            store,
            default_deny: AtomicBool::new(default == DefaultPolicy::Deny),
        }
    }

    /// The default policy.
    pub fn default_policy(&self) -> DefaultPolicy {
        if self.default_deny.load(Ordering::Relaxed) {
            DefaultPolicy::Deny
        } else {
            DefaultPolicy::Allow
        }
    }

    /// Changes the default policy (server start-up configuration).
    pub fn set_default_policy(&self, policy: DefaultPolicy) {
        self.default_deny
            .store(policy == DefaultPolicy::Deny, Ordering::Relaxed);
    }

    /// The store's revision watch.
    pub fn revision_watch(&self) -> watch::Receiver<u64> {
        self.store.revision_watch()
    }

    /// What a blocking read of intentions waits on: the last revision at which any intention
    /// changed (other writes never move it).
    pub async fn changes(&self) -> watch::Receiver<u64> {
        self.changes
            .watch(Interest::Prefix(INTENTIONS.to_owned()))
            .await
    }

    /// Every intention, highest precedence first, then by source and destination.
    pub async fn list(&self) -> Result<Indexed<Vec<Intention>>, IntentionError> {
        let (records, index) = self.store.range(INTENTIONS).await?;
        let mut list = records.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        list.sort_by(|a, b| {
            b.precedence
                .cmp(&a.precedence)
                .then_with(|| a.source_name.cmp(&b.source_name))
                .then_with(|| a.destination_name.cmp(&b.destination_name))
        });
        Ok(Indexed { index, value: list })
    }

    /// One intention by id.
    pub async fn get(&self, id: &str) -> Result<Intention, IntentionError> {
        let kv = self
            .store
            .get(&format!("{INTENTIONS}{}", escape(id)))
            .await?
            .ok_or_else(|| IntentionError::NotFound(format!("no intention with ID {id:?}")))?;
        decode(&kv)
    }

    /// The intention for exactly this pair.
    pub async fn exact(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<Intention, IntentionError> {
        let id = self
            .store
            .get(&pair_key(source, destination))
            .await?
            .ok_or_else(|| {
                IntentionError::NotFound(format!("no intention from {source:?} to {destination:?}"))
            })?;
        self.get(&String::from_utf8_lossy(&id.value)).await
    }

    /// Creates an intention; returns it with its new id.
    pub async fn create(&self, mut intention: Intention) -> Result<Intention, IntentionError> {
        if !intention.id.is_empty() {
            return Err(IntentionError::Invalid {
                field: "ID".to_owned(),
                message: "ID must be empty on create; the server assigns it".to_owned(),
            });
        }
        validate(&mut intention)?;
        intention.id = new_id();
        let pair = pair_key(&intention.source_name, &intention.destination_name);
        let key = format!("{INTENTIONS}{}", intention.id);
        let result = self
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision {
                    key: pair.clone(),
                    revision: 0,
                }],
                ops: vec![
                    Op::Put {
                        key: pair,
                        value: intention.id.clone().into_bytes(),
                    },
                    Op::Put {
                        key: key.clone(),
                        value: encode(&intention)?,
                    },
                ],
            })
            .await?;
        if !result.succeeded {
            let existing = self
                .exact(&intention.source_name, &intention.destination_name)
                .await
                .map(|i| i.id)
                .unwrap_or_default();
            return Err(IntentionError::Duplicate {
                source_name: intention.source_name,
                destination: intention.destination_name,
                id: existing,
            });
        }
        self.get(&intention.id).await
    }

    /// Replaces intention `id` (its pair may change, if the new pair is free).
    pub async fn update(
        &self,
        id: &str,
        mut intention: Intention,
    ) -> Result<Intention, IntentionError> {
        if !intention.id.is_empty() && intention.id != id {
            return Err(IntentionError::Invalid {
                field: "ID".to_owned(),
                message: format!(
                    "ID {:?} in the body does not match {id:?} in the path",
                    intention.id
                ),
            });
        }
        validate(&mut intention)?;
        intention.id = id.to_owned();
        let key = format!("{INTENTIONS}{}", escape(id));
        for _ in 0..MAX_ATTEMPTS {
            let Some(current_kv) = self.store.get(&key).await? else {
                return Err(IntentionError::NotFound(format!(
                    "no intention with ID {id:?}"
                )));
            };
            let current = decode(&current_kv)?;
            let old_pair = pair_key(&current.source_name, &current.destination_name);
            let new_pair = pair_key(&intention.source_name, &intention.destination_name);
            let mut compares = vec![Compare::ModRevision {
                key: key.clone(),
                revision: current_kv.mod_revision,
            }];
            let mut ops = Vec::new();
            if old_pair != new_pair {
                compares.push(Compare::ModRevision {
                    key: new_pair.clone(),
                    revision: 0,
                });
                ops.push(Op::Delete { key: old_pair });
                ops.push(Op::Put {
                    key: new_pair,
                    value: id.as_bytes().to_vec(),
                });
            }
            ops.push(Op::Put {
                key: key.clone(),
                value: encode(&intention)?,
            });
            if self.store.txn(Txn { compares, ops }).await?.succeeded {
                return self.get(id).await;
            }
            if let Ok(other) = self
                .exact(&intention.source_name, &intention.destination_name)
                .await
                && other.id != id
            {
                return Err(IntentionError::Duplicate {
                    source_name: intention.source_name,
                    destination: intention.destination_name,
                    id: other.id,
                });
            }
        }
        Err(IntentionError::Contended)
    }

    /// Deletes intention `id`.
    pub async fn delete(&self, id: &str) -> Result<(), IntentionError> {
        let current = self.get(id).await?;
        self.store
            .txn(Txn {
                compares: vec![],
                ops: vec![
                    Op::Delete {
                        key: pair_key(&current.source_name, &current.destination_name),
                    },
                    Op::Delete {
                        key: format!("{INTENTIONS}{}", escape(id)),
                    },
                ],
            })
            .await?;
        Ok(())
    }

    /// Deletes the intention for exactly this pair.
    pub async fn delete_exact(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<(), IntentionError> {
        let intention = self.exact(source, destination).await?;
        self.delete(&intention.id).await
    }

    /// The `service-intentions` entry of `destination`: its intentions gathered (`None`: none).
    pub async fn entry(
        &self,
        destination: &str,
    ) -> Result<Indexed<Option<ServiceIntentions>>, IntentionError> {
        let Indexed { index, value } = self.list().await?;
        Ok(Indexed {
            index,
            value: ServiceIntentions::gather(destination, &value),
        })
    }

    /// Every `service-intentions` entry (one per destination with intentions), by name.
    pub async fn entries(&self) -> Result<Indexed<Vec<ServiceIntentions>>, IntentionError> {
        let Indexed { index, value } = self.list().await?;
        let destinations: std::collections::BTreeSet<&str> =
            value.iter().map(|i| i.destination_name.as_str()).collect();
        let entries = destinations
            .into_iter()
            .filter_map(|d| ServiceIntentions::gather(d, &value))
            .collect();
        Ok(Indexed {
            index,
            value: entries,
        })
    }

    /// Makes `entry.name`'s intentions exactly `entry`'s sources, in one transaction: a source
    /// already there keeps its intention's ID, a new one gets one, the others are deleted. With
    /// `cas`, only if the current entry's `ModifyIndex` is `cas` (0: only if it has none);
    /// `false` when that does not hold. Each intention is validated as the API validates it
    /// (errors name `Sources[i].…`).
    pub async fn replace_destination(
        &self,
        entry: &ServiceIntentions,
        cas: Option<u64>,
    ) -> Result<bool, IntentionError> {
        let mut wanted = entry.intentions();
        for (i, intention) in wanted.iter_mut().enumerate() {
            validate(intention).map_err(|error| match error {
                IntentionError::Invalid { field, message } => IntentionError::Invalid {
                    // The entry's own names for the intention's fields.
                    field: match field.as_str() {
                        "SourceName" => format!("Sources[{i}].Name"),
                        "SourceType" => format!("Sources[{i}].Type"),
                        "DestinationName" => "Name".to_owned(),
                        _ => format!("Sources[{i}].{field}"),
                    },
                    message,
                },
                other => other,
            })?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (records, _) = self.store.range(INTENTIONS).await?;
            let mut current = Vec::new();
            for kv in &records {
                let intention = decode(kv)?;
                if intention.destination_name == entry.name {
                    current.push((kv.mod_revision, intention));
                }
            }
            if let Some(cas) = cas {
                let modify = current.iter().map(|(rev, _)| *rev).max().unwrap_or(0);
                if modify != cas {
                    return Ok(false);
                }
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            // Every current intention is compared, kept or not: a concurrent change retries.
            for (revision, existing) in &current {
                compares.push(Compare::ModRevision {
                    key: format!("{INTENTIONS}{}", escape(&existing.id)),
                    revision: *revision,
                });
                if !wanted.iter().any(|w| w.source_name == existing.source_name) {
                    ops.push(Op::Delete {
                        key: pair_key(&existing.source_name, &existing.destination_name),
                    });
                    ops.push(Op::Delete {
                        key: format!("{INTENTIONS}{}", escape(&existing.id)),
                    });
                }
            }
            for want in &wanted {
                let mut intention = want.clone();
                match current
                    .iter()
                    .find(|(_, c)| c.source_name == want.source_name)
                {
                    Some((_, existing)) => intention.id = existing.id.clone(),
                    None => {
                        intention.id = new_id();
                        let pair = pair_key(&intention.source_name, &intention.destination_name);
                        compares.push(Compare::ModRevision {
                            key: pair.clone(),
                            revision: 0,
                        });
                        ops.push(Op::Put {
                            key: pair,
                            value: intention.id.clone().into_bytes(),
                        });
                    }
                }
                ops.push(Op::Put {
                    key: format!("{INTENTIONS}{}", escape(&intention.id)),
                    value: encode(&intention)?,
                });
            }
            if ops.is_empty() || self.store.txn(Txn { compares, ops }).await?.succeeded {
                return Ok(true);
            }
        }
        Err(IntentionError::Contended)
    }

    /// Deletes every intention whose destination is `destination` (none: nothing happens).
    pub async fn delete_destination(&self, destination: &str) -> Result<(), IntentionError> {
        let empty = ServiceIntentions {
            name: destination.to_owned(),
            ..Default::default()
        };
        self.replace_destination(&empty, None).await.map(|_| ())
    }

    /// Decides whether `source` may connect to `destination` now (without a request: an L7
    /// intention governing the pair denies).
    pub async fn check(&self, source: &str, destination: &str) -> Result<Decision, IntentionError> {
        let list = self.list().await?.value;
        let inputs: Vec<IntentionInput> = list.iter().map(IntentionInput::from).collect();
        Ok(decide(&inputs, source, destination, self.default_policy()))
    }

    /// The intentions that can apply to connections to `destination` (exact or wildcard),
    /// highest precedence first.
    pub async fn matching_destination(
        &self,
        destination: &str,
    ) -> Result<Indexed<Vec<Intention>>, IntentionError> {
        let Indexed { index, value } = self.list().await?;
        let value = value
            .into_iter()
            .filter(|i| i.destination_name == destination || i.destination_name == WILDCARD)
            .collect();
        Ok(Indexed { index, value })
    }

    /// The intentions that can apply to connections from `source`.
    pub async fn matching_source(
        &self,
        source: &str,
    ) -> Result<Indexed<Vec<Intention>>, IntentionError> {
        let Indexed { index, value } = self.list().await?;
        let value = value
            .into_iter()
            .filter(|i| i.source_name == source || i.source_name == WILDCARD)
            .collect();
        Ok(Indexed { index, value })
    }

    /// `POST /v1/agent/connect/authorize`: may the holder of `client_cert_uri` connect to
    /// `target`? A URI that is not a service SPIFFE id of `trust_domain` is refused.
    pub async fn authorize(
        &self,
        target: &str,
        client_cert_uri: &str,
        trust_domain: &str,
    ) -> Result<Decision, IntentionError> {
        let Some(id) = ServiceId::parse(client_cert_uri) else {
            return Err(IntentionError::Invalid {
                field: "ClientCertURI".to_owned(),
                message: format!("{client_cert_uri:?} is not a service SPIFFE id"),
            });
        };
        if id.trust_domain != trust_domain {
            return Ok(Decision {
                allowed: false,
                matched: None,
                reason: format!(
                    "Client certificate is from trust domain {:?}, not this cluster's",
                    id.trust_domain
                ),
            });
        }
        self.check(&id.service, target).await
    }
}
