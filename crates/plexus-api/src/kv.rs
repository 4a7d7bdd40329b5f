//! The KV store's wire shapes and key rules, as Consul's `/v1/kv` API shows them.
//!
//! Values travel base64-encoded in JSON (`Value`), raw with `?raw`. Keys are checked the same way
//! by the server and the CLI: see [`check_key`].

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value accepted, in bytes (Consul's limit).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// One key as `GET /v1/kv/<key>` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// The key.
    pub key: String,
    /// Opaque flags the writer chose.
    pub flags: u64,
    /// The value, base64 (`null` for an empty value, as Consul shows it).
    pub value: Option<String>,
    /// The index that created the key.
    pub create_index: u64,
    /// The index that last changed the key; the `cas` to give for the next write.
    pub modify_index: u64,
    /// The session holding the key's lock, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// One entry of `plexus kv export` / `import` (the shape `consul kv export` writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvExportEntry {
    /// The key.
    pub key: String,
    /// Flags.
    #[serde(default)]
    pub flags: u64,
    /// The value, base64.
    #[serde(default)]
    pub value: String,
}

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty where a key is required.
    #[error("missing key: give one after /v1/kv/")]
    Empty,
    /// Longer than [`MAX_KEY_BYTES`].
    #[error("key is {0} bytes long; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    /// Contains a NUL byte.
    #[error("key contains a NUL byte")]
    Nul,
    /// Contains `..`.
    #[error("key contains \"..\", which is not allowed")]
    DotDot,
}

/// Checks a key (or a prefix, where `allow_empty`): at most [`MAX_KEY_BYTES`] bytes, no NUL, no `..`.
pub fn check_key(key: &str, allow_empty: bool) -> Result<(), KeyError> {
    if key.is_empty() && !allow_empty {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.contains('\0') {
        return Err(KeyError::Nul);
    }
    if key.contains("..") {
        return Err(KeyError::DotDot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text: the check never panics, and what passes is within the limits.
        #[test]
        fn key_check_never_panics_and_passing_keys_are_within_limits(key in ".{0,600}") {
            if check_key(&key, true).is_ok() {
                proptest::prop_assert!(key.len() <= MAX_KEY_BYTES);
                proptest::prop_assert!(!key.contains('\0') && !key.contains(".."));
            }
        }
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(check_key("a/b", false), Ok(()));
        assert_eq!(check_key("", true), Ok(()));
        assert_eq!(check_key("", false), Err(KeyError::Empty));
        assert_eq!(check_key("a/../b", false), Err(KeyError::DotDot));
        assert_eq!(check_key("a\0b", false), Err(KeyError::Nul));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(check_key(&long, false), Err(KeyError::TooLong(513)));
        assert_eq!(check_key(&long[..MAX_KEY_BYTES], false), Ok(()));
    }
}
