//! KV locks: Consul's `?acquire=<session>` and `?release=<session>`.
//!
//! A key's lock state is a store record beside the key, `kv/<key>\0lock` (keys never contain
//! NUL, so it cannot clash with a user key and a prefix delete of the key takes it along). It
//! holds the holder session, the `LockIndex`, and what to do when the holder ends (its behavior
//! and lock-delay, copied at acquisition so the reaper needs nothing else). Every change is one
//! compare-and-set transaction on the lock record (and the holder's session record on acquire),
//! so two acquirers through different replicas never both win.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Kv, KvError, PREFIX, encode};
use crate::session::{self, Behavior};
use crate::store::{Compare, KeyValue, Op, Txn};

/// Suffix of a key's lock record.
pub const LOCK_SUFFIX: &str = "\u{0}lock";

/// How many times an acquire or release retries after losing a race on the lock record.
const RACE_RETRIES: usize = 16;

/// A key's lock state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockState {
    /// The holder (`""`: free).
    pub session: String,
    /// How many times the lock was acquired.
    pub lock_index: u64,
    /// The holder's behavior.
    pub behavior: Behavior,
    /// The holder's lock-delay, in milliseconds.
    pub lock_delay_ms: u64,
    /// Unix time in milliseconds before which nobody may acquire (lock-delay after an
    /// invalidation).
    pub delay_until_ms: u64,
}

/// The store key of `key`'s lock record.
pub fn lock_key(key: &str) -> String {
    format!("{PREFIX}{key}{LOCK_SUFFIX}")
}

pub(super) fn decode_lock(record: &KeyValue) -> Option<(String, LockState)> {
    let key = record.key.strip_prefix(PREFIX)?.strip_suffix(LOCK_SUFFIX)?;
    // A lock record that does not decode counts as free (it is ours; nothing else writes it).
    let state = serde_json::from_slice(&record.value).unwrap_or_default();
    Some((key.to_owned(), state))
}

fn encode_lock(state: &LockState) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why an acquire was refused before trying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// The session does not exist.
    #[error("invalid session {0:?}")]
    InvalidSession(String),
}

impl Kv {
    async fn lock_state(&self, key: &str) -> Result<(LockState, u64), KvError> {
        let record = self.store.get(&lock_key(key)).await?;
        Ok(match record {
            Some(record) => {
                let state = decode_lock(&record).map(|(_, s)| s).unwrap_or_default();
                (state, record.mod_revision)
            }
            None => (LockState::default(), 0),
        })
    }

    /// `PUT ?acquire=<session>`: takes the lock of `key` for `session` and writes the value.
    /// `Ok(false)` when another session holds it or its lock-delay runs; the holder itself
    /// acquiring again only updates the value.
    pub async fn acquire(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        session_id: &str,
    ) -> Result<Result<(bool, u64), AcquireError>, KvError> {
        let session_key = format!("{}{session_id}", session::PREFIX);
        for _ in 0..RACE_RETRIES {
            let Some(session_record) = self.store.get(&session_key).await? else {
                return Ok(Err(AcquireError::InvalidSession(session_id.to_owned())));
            };
            let holder: session::Session =
                serde_json::from_slice(&session_record.value).unwrap_or_default();
            let (state, lock_revision) = self.lock_state(key).await?;
            let held_by_us = state.session == session_id;
            if !held_by_us && (!state.session.is_empty() || state.delay_until_ms > now_ms()) {
                let revision = self.store.current_revision().await?;
                return Ok(Ok((false, revision)));
            }
            let next = if held_by_us {
                state
            } else {
                LockState {
                    session: session_id.to_owned(),
                    lock_index: state.lock_index + 1,
                    behavior: holder.behavior,
                    lock_delay_ms: Duration::from_nanos(holder.lock_delay).as_millis() as u64,
                    delay_until_ms: 0,
                }
            };
            let result = self
                .store
                .txn(Txn {
                    compares: vec![
                        Compare::ModRevision {
                            key: session_key.clone(),
                            revision: session_record.mod_revision,
                        },
                        Compare::ModRevision {
                            key: lock_key(key),
                            revision: lock_revision,
                        },
                    ],
                    ops: vec![
                        Op::Put {
                            key: format!("{PREFIX}{key}"),
                            value: encode(flags, value),
                        },
                        Op::Put {
                            key: lock_key(key),
                            value: encode_lock(&next),
                        },
                    ],
                })
                .await?;
            if result.succeeded {
                tracing::debug!(key, session = session_id, "KV lock acquired");
                return Ok(Ok((true, result.revision)));
            }
        }
        let revision = self.store.current_revision().await?;
        Ok(Ok((false, revision)))
    }

    /// `PUT ?release=<session>`: frees the lock of `key` when `session` holds it and writes the
    /// value. `false` when it does not hold it.
    pub async fn release(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        session_id: &str,
    ) -> Result<(bool, u64), KvError> {
        for _ in 0..RACE_RETRIES {
            let (state, lock_revision) = self.lock_state(key).await?;
            if state.session != session_id {
                let revision = self.store.current_revision().await?;
                return Ok((false, revision));
            }
            let next = LockState {
                session: String::new(),
                ..state
            };
            let result = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision {
                        key: lock_key(key),
                        revision: lock_revision,
                    }],
                    ops: vec![
                        Op::Put {
                            key: format!("{PREFIX}{key}"),
                            value: encode(flags, value),
                        },
                        Op::Put {
                            key: lock_key(key),
                            value: encode_lock(&next),
                        },
                    ],
                })
                .await?;
            if result.succeeded {
                return Ok((true, result.revision));
            }
        }
        let revision = self.store.current_revision().await?;
        Ok((false, revision))
    }

    /// Ends every lock whose holder matches `ended` (a session that is gone): behavior
    /// `release` frees it, `delete` deletes the key; both start the lock-delay. Each lock is its
    /// own compare-and-set, so running this twice (several replicas) changes nothing more.
    /// Returns the store revision after the last write.
    pub async fn invalidate_locks(&self, ended: impl Fn(&str) -> bool) -> Result<u64, KvError> {
        let (records, mut revision) = self.store.range(PREFIX).await?;
        for record in &records {
            let Some((key, state)) = decode_lock(record) else {
                continue;
            };
            if state.session.is_empty() || !ended(&state.session) {
                continue;
            }
            let delay_until_ms = now_ms() + state.lock_delay_ms;
            let ops = match state.behavior {
                Behavior::Release => vec![Op::Put {
                    key: record.key.clone(),
                    value: encode_lock(&LockState {
                        session: String::new(),
                        delay_until_ms,
                        ..state.clone()
                    }),
                }],
                // The key goes; the lock record stays (free) so the lock-delay holds.
                Behavior::Delete => vec![
                    Op::Delete {
                        key: format!("{PREFIX}{key}"),
                    },
                    Op::Put {
                        key: record.key.clone(),
                        value: encode_lock(&LockState {
                            session: String::new(),
                            delay_until_ms,
                            ..state.clone()
                        }),
                    },
                ],
            };
            let result = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision {
                        key: record.key.clone(),
                        revision: record.mod_revision,
                    }],
                    ops,
                })
                .await?;
            if result.succeeded {
                tracing::info!(key, session = %state.session, behavior = ?state.behavior, "KV lock invalidated with its session");
            }
            revision = revision.max(result.revision);
        }
        Ok(revision)
    }
}
