//! Backups of the whole store: a consistent snapshot out, and back in.
//!
//! - `GET /v1/snapshot`: every key of the store as one read at one revision (a redb read
//!   transaction; an etcd range at one revision), as a [`Snapshot`] JSON document with a SHA-256
//!   checksum over its entries. `plexus operator backup FILE` saves it.
//! - `PUT /v1/snapshot`: replaces the store's contents with a snapshot's (the checksum is checked
//!   first; a damaged or foreign file is 400 and nothing changes). `plexus operator restore FILE`.
//! - `GET /v1/operator/store/metrics`: the store's counters (Prometheus text), `operator:read`.
//!
//! Saving and restoring need a management token (`acl:write` and `operator:write`): a snapshot
//! holds every ACL token's secret and the CA's keys.
//!
//! Leased keys (agent liveness, server announcements, presence) are left out: they belong to
//! processes that renew them and would otherwise come back as permanent keys. Their holders write
//! them again within one renewal. The embedded store knows which keys are leased; for a backend
//! that cannot say ([`Store::range_unleased`] is `None`), the prefixes in [`LEASED_PREFIXES`] are
//! left out instead.
//!
//! Restore is one transaction on the embedded store. etcd limits the operations of one
//! transaction (`--max-txn-ops`, 128 by default), so on etcd the snapshot is written in batches:
//! stop writers (agents, other servers' clients) for the restore, as the recovery procedure in
//! docs/operations.md says.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use plexus_runtime::acl::Authz;
use plexus_runtime::http::ApiError;
use serde::{Deserialize, Serialize};

use crate::api::ErrorChain;
use crate::store::{KeyValue, Op, Store, StoreError, Txn};

/// The `format` of a snapshot document.
pub const FORMAT: &str = "plexus-snapshot";
/// The version of the document's layout.
pub const VERSION: u32 = 1;
/// Largest snapshot `PUT /v1/snapshot` accepts (413 beyond).
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;
/// Key prefixes whose keys are bound to leases, left out of snapshots of a backend that cannot
/// tell leased keys apart.
pub const LEASED_PREFIXES: &[&str] = &[
    crate::operator::SERVERS_PREFIX,
    crate::remote::LIVE_PREFIX,
    "presence/",
];
/// Operations per transaction when restoring into a store that limits them (etcd).
const BATCH: usize = 100;

/// A snapshot document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The store revision the snapshot was read at.
    pub revision: u64,
    /// The backend it was taken from (`embedded`, `etcd`).
    pub backend: String,
    /// When it was taken (Unix seconds).
    pub taken_at: u64,
    /// Hex SHA-256 over the entries (see [`checksum`]).
    pub sha256: String,
    /// Every key with its value (base64).
    pub entries: Vec<Entry>,
}

/// One key of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The store key.
    pub key: String,
    /// The value, base64 (standard alphabet, padded).
    pub value: String,
}

/// A decoded entry: key and value.
pub type Pair = (String, Vec<u8>);

/// Why a snapshot document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not JSON of the snapshot's shape.
    #[error("not a snapshot document: {0}")]
    Shape(String),
    /// Another format or version.
    #[error(
        "unsupported snapshot {format:?} version {version} (expected {FORMAT:?} version {VERSION})"
    )]
    Version {
        /// The document's format.
        format: String,
        /// The document's version.
        version: u32,
    },
    /// A value is not base64.
    #[error("entry {key:?}: value is not base64")]
    Value {
        /// The entry's key.
        key: String,
    },
    /// The checksum does not match the entries: the file was changed or damaged.
    #[error(
        "checksum mismatch: the snapshot was damaged or edited (expected {expected}, computed {computed})"
    )]
    Checksum {
        /// The document's checksum.
        expected: String,
        /// The entries' checksum.
        computed: String,
    },
}

/// Hex SHA-256 over each entry's key length (8 bytes, big-endian), key, value length and value.
pub fn checksum<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (key, value) in entries {
        context.update(&(key.len() as u64).to_be_bytes());
        context.update(key.as_bytes());
        context.update(&(value.len() as u64).to_be_bytes());
        context.update(value);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leased(key: &str) -> bool {
    LEASED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Every key not bound to a lease, at one revision.
async fn unleased(store: &dyn Store) -> Result<(Vec<KeyValue>, u64), StoreError> {
    match store.range_unleased().await? {
        Some(read) => Ok(read),
        None => {
            let (kvs, revision) = store.range("").await?;
            Ok((
                kvs.into_iter().filter(|kv| !leased(&kv.key)).collect(),
                revision,
            ))
        }
    }
}

/// Reads the whole store at one revision.
pub async fn take(store: &dyn Store) -> Result<Snapshot, StoreError> {
    let (kept, revision) = unleased(store).await?;
    let sha256 = checksum(kept.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())));
    let engine = base64::engine::general_purpose::STANDARD;
    Ok(Snapshot {
        format: FORMAT.to_owned(),
        version: VERSION,
        revision,
        backend: store.status().await.backend,
        taken_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        sha256,
        entries: kept
            .into_iter()
            .map(|kv| Entry {
                value: engine.encode(&kv.value),
                key: kv.key,
            })
            .collect(),
    })
}

/// Parses and checks a snapshot document: shape, version, base64 values, checksum. Returns the
/// decoded entries.
pub fn parse(bytes: &[u8]) -> Result<(Snapshot, Vec<Pair>), SnapshotError> {
    let snapshot: Snapshot =
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::Shape(e.to_string()))?;
    if snapshot.format != FORMAT || snapshot.version != VERSION {
        return Err(SnapshotError::Version {
            format: snapshot.format,
            version: snapshot.version,
        });
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let entries = snapshot
        .entries
        .iter()
        .map(|e| {
            engine
                .decode(&e.value)
                .map(|v| (e.key.clone(), v))
                .map_err(|_| SnapshotError::Value { key: e.key.clone() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let computed = checksum(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    if computed != snapshot.sha256 {
        return Err(SnapshotError::Checksum {
            expected: snapshot.sha256,
            computed,
        });
    }
    Ok((snapshot, entries))
}

/// Replaces every key outside the leased prefixes with the snapshot's entries. One transaction
/// on the embedded store; batches of [`BATCH`] operations elsewhere. Returns the revision after.
pub async fn restore(store: &dyn Store, entries: Vec<Pair>) -> Result<u64, StoreError> {
    let (current, _) = unleased(store).await?;
    let mut ops: Vec<Op> = current
        .into_iter()
        .map(|kv| Op::Delete { key: kv.key })
        .collect();
    // A key in both lists is put, not deleted: etcd refuses a transaction naming a key twice.
    let putting: std::collections::HashSet<&str> =
        entries.iter().map(|(k, _)| k.as_str()).collect();
    ops.retain(|op| !matches!(op, Op::Delete { key } if putting.contains(key.as_str())));
    ops.extend(
        entries
            .into_iter()
            .map(|(key, value)| Op::Put { key, value }),
    );
    let one_txn = store.status().await.backend == "embedded";
    let size = if one_txn { ops.len().max(1) } else { BATCH };
    let mut revision = 0;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<Op> = ops.by_ref().take(size).collect();
        let result = store
            .txn(Txn {
                compares: Vec::new(),
                ops: batch,
            })
            .await?;
        revision = result.revision;
    }
    Ok(revision)
}

/// The snapshot routes (no fallback).
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/v1/snapshot", get(save).put(load))
        .route("/v1/operator/store/metrics", get(metrics))
        .with_state(store)
}

fn store_failed(error: StoreError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "snapshot store operation failed");
    if error.is_damage() {
        crate::api::damaged(&error)
    } else {
        ApiError::unavailable("the store is unavailable")
    }
}

/// A snapshot holds every token's secret and the CA's keys: saving or restoring one needs a
/// token that could read (and write) all of it, `acl:write` and `operator:write` (a management
/// token), as Consul asks.
fn require_management(authz: &Authz) -> Result<(), ApiError> {
    authz.require_acl_write()?;
    authz.require_operator_write()?;
    Ok(())
}

async fn save(State(store): State<Arc<dyn Store>>, authz: Authz) -> Result<Response, ApiError> {
    require_management(&authz)?;
    let snapshot = take(&*store).await.map_err(store_failed)?;
    tracing::info!(
        revision = snapshot.revision,
        keys = snapshot.entries.len(),
        "snapshot taken"
    );
    let mut response = axum::Json(&snapshot).into_response();
    response.headers_mut().insert(
        "x-consul-index",
        HeaderValue::from(snapshot.revision.max(1)),
    );
    Ok(response)
}

async fn load(
    State(store): State<Arc<dyn Store>>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    require_management(&authz)?;
    let body = http_body_util::Limited::new(request.into_body(), MAX_SNAPSHOT_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the snapshot: {e}"))
            }
        })?
        .to_bytes();
    let (snapshot, entries) =
        parse(&body).map_err(|e| ApiError::bad_request(format!("snapshot refused: {e}")))?;
    let keys = entries.len();
    let revision = restore(&*store, entries).await.map_err(store_failed)?;
    tracing::info!(
        from_revision = snapshot.revision,
        revision,
        keys,
        "snapshot restored"
    );
    Ok(axum::Json(serde_json::json!({ "Restored": keys, "Index": revision })).into_response())
}

async fn metrics(State(store): State<Arc<dyn Store>>, authz: Authz) -> Result<Response, ApiError> {
    authz.require_operator_read()?;
    let mut response = store.metrics_text().into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::EmbeddedStore;

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
        }
    }

    #[tokio::test]
    async fn a_snapshot_restores_the_same_keys_and_skips_leased_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let txn = |ops| Txn {
            compares: Vec::new(),
            ops,
        };
        let lease = store
            .lease_grant(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let leased = Op::PutLeased {
            key: "held/n".to_owned(),
            value: b"x".to_vec(),
            lease,
        };
        store
            .txn(txn(vec![put("kv/a", b"1"), put("kv/b", &[0, 255]), leased]))
            .await
            .unwrap();
        let snapshot = take(&store).await.unwrap();
        assert_eq!(snapshot.entries.len(), 2);
        let bytes = serde_json::to_vec(&snapshot).unwrap();
        store
            .txn(txn(vec![put("kv/a", b"changed"), put("kv/c", b"new")]))
            .await
            .unwrap();
        let (_, entries) = parse(&bytes).unwrap();
        restore(&store, entries).await.unwrap();
        let (all, _) = store.range("").await.unwrap();
        let pairs: Vec<(&str, &[u8])> = all
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("held/n", &b"x"[..]),
                ("kv/a", &b"1"[..]),
                ("kv/b", &[0, 255][..])
            ]
        );
    }

    #[test]
    fn damaged_or_foreign_documents_are_refused_naming_the_cause() {
        let good = Snapshot {
            format: FORMAT.to_owned(),
            version: VERSION,
            revision: 3,
            backend: "embedded".to_owned(),
            taken_at: 0,
            sha256: checksum([("k", &b"v"[..])]),
            entries: vec![Entry {
                key: "k".to_owned(),
                value: "dg==".to_owned(),
            }],
        };
        assert!(parse(&serde_json::to_vec(&good).unwrap()).is_ok());
        let mut edited = good.clone();
        edited.entries[0].value = "dw==".to_owned();
        let error = parse(&serde_json::to_vec(&edited).unwrap()).unwrap_err();
        assert!(matches!(error, SnapshotError::Checksum { .. }), "{error}");
        let mut newer = good.clone();
        newer.version = 9;
        let error = parse(&serde_json::to_vec(&newer).unwrap()).unwrap_err();
        assert!(error.to_string().contains("version 9"), "{error}");
        let mut not_base64 = good;
        not_base64.entries[0].value = "%%".to_owned();
        let error = parse(&serde_json::to_vec(&not_base64).unwrap()).unwrap_err();
        assert_eq!(
            error,
            SnapshotError::Value {
                key: "k".to_owned()
            }
        );
        let error = parse(b"{\"format\": 1}").unwrap_err();
        assert!(matches!(error, SnapshotError::Shape(_)), "{error}");
        let error = parse(b"").unwrap_err();
        assert!(matches!(error, SnapshotError::Shape(_)), "{error}");
    }

    proptest::proptest! {
        /// Any bytes: parsed or refused with a reason, never a panic.
        #[test]
        fn any_bytes_are_parsed_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        /// Any entries round-trip through a document, and any single changed byte of a value
        /// is caught by the checksum.
        #[test]
        fn documents_round_trip_and_edits_are_caught(
            entries in proptest::collection::btree_map("[a-z/]{1,12}", proptest::collection::vec(proptest::num::u8::ANY, 0..64), 1..8),
            flip in proptest::num::usize::ANY,
        ) {
            let engine = base64::engine::general_purpose::STANDARD;
            let pairs: Vec<(String, Vec<u8>)> = entries.into_iter().collect();
            let document = Snapshot {
                format: FORMAT.to_owned(),
                version: VERSION,
                revision: 1,
                backend: "embedded".to_owned(),
                taken_at: 0,
                sha256: checksum(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
                entries: pairs.iter().map(|(k, v)| Entry { key: k.clone(), value: engine.encode(v) }).collect(),
            };
            let (_, decoded) = parse(&serde_json::to_vec(&document).unwrap()).unwrap();
            proptest::prop_assert_eq!(&decoded, &pairs);
            let mut edited = pairs.clone();
            let which = flip % edited.len();
            edited[which].1.push(1);
            let mut changed = document;
            changed.entries[which].value = engine.encode(&edited[which].1);
            let refused = matches!(parse(&serde_json::to_vec(&changed).unwrap()), Err(SnapshotError::Checksum { .. }));
            proptest::prop_assert!(refused);
        }
    }
}
