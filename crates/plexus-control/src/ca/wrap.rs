//! The CA's private keys at rest: in the store either as PEM (no key-encryption key given) or
//! wrapped with AES-256-GCM under a key-encryption key (KEK) that lives outside the store
//! (`--ca-key-file`, `PLEXUS_CA_KEY`).
//!
//! The KEK is derived from the secret text with HKDF-SHA256 (the text must be random, at least
//! [`MIN_SECRET_LEN`] bytes: it is not a password, no slow KDF is applied). A second HKDF output
//! is the KEK's id, stored beside each wrapped key so a wrong KEK is told apart from a damaged
//! record. The root's id is the AEAD's associated data: a wrapped key cannot be moved to another
//! root's record.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{CaError, SecretPem};

/// The shortest KEK secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The algorithm name stored with each wrapped key.
const ALGORITHM: &str = "A256GCM-HKDF-SHA256";
const SALT: &[u8] = b"plexus ca key-encryption key v1";

/// A key-encryption key for the CA's private keys. `Debug` shows its id only.
pub struct KeyEncryptionKey {
    key: RandomizedNonceKey,
    id: String,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a KEK secret is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// Too short to be a random key.
    #[error(
        "the CA key-encryption key must be at least {MIN_SECRET_LEN} bytes of random text (e.g. `head -c 32 /dev/urandom | base64`); it has {0}"
    )]
    TooShort(usize),
    /// The crypto library refused (does not happen with a 32-byte key).
    #[error("the CA key-encryption key could not be derived")]
    Derive,
}

impl KeyEncryptionKey {
    /// Derives the KEK from secret text (surrounding whitespace is ignored, so a file ending in
    /// a newline works).
    pub fn from_secret(secret: &str) -> Result<Self, KekError> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(KekError::TooShort(secret.len()));
        }
        let prk = Salt::new(HKDF_SHA256, SALT).extract(secret.as_bytes());
        let mut key = [0u8; 32];
        prk.expand(&[b"key"], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| KekError::Derive)?;
        let mut id = [0u8; 32];
        prk.expand(&[b"id"], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut id))
            .map_err(|_| KekError::Derive)?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key).map_err(|_| KekError::Derive)?;
        let id = id[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { key, id })
    }

    /// The KEK's id (not secret: a fingerprint to tell keys apart).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A root's private key as stored: PEM, or wrapped. Old records (a PEM string) read as
/// [`StoredKey::Plain`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum StoredKey {
    /// PEM, readable by whoever reads the store.
    Plain(SecretPem),
    /// Wrapped under a KEK.
    Wrapped(WrappedKey),
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredKey::Plain(_) => f.write_str("StoredKey::Plain(<redacted>)"),
            StoredKey::Wrapped(w) => write!(f, "StoredKey::Wrapped(kek {})", w.kek_id),
        }
    }
}

/// A wrapped key: what the store holds instead of the PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WrappedKey {
    alg: String,
    kek_id: String,
    nonce: String,
    ciphertext: String,
}

impl StoredKey {
    /// Stores `pem` for root `root_id`: wrapped when a KEK is given.
    pub(super) fn seal(
        pem: SecretPem,
        root_id: &str,
        kek: Option<&KeyEncryptionKey>,
    ) -> Result<Self, CaError> {
        let Some(kek) = kek else {
            return Ok(StoredKey::Plain(pem));
        };
        let mut data = pem.0.into_bytes();
        let nonce = kek
            .key
            .seal_in_place_append_tag(Aad::from(root_id.as_bytes()), &mut data)
            .map_err(|_| CaError::Corrupt {
                what: "wrapping a CA key failed",
            })?;
        Ok(StoredKey::Wrapped(WrappedKey {
            alg: ALGORITHM.to_owned(),
            kek_id: kek.id.clone(),
            nonce: STANDARD.encode(nonce.as_ref()),
            ciphertext: STANDARD.encode(&data),
        }))
    }

    /// The PEM of root `root_id`'s key; a wrapped key needs the KEK it was wrapped with.
    pub(super) fn open(
        &self,
        root_id: &str,
        kek: Option<&KeyEncryptionKey>,
    ) -> Result<SecretPem, CaError> {
        let wrapped = match self {
            StoredKey::Plain(pem) => return Ok(pem.clone()),
            StoredKey::Wrapped(wrapped) => wrapped,
        };
        let Some(kek) = kek else {
            return Err(CaError::KeyWrapped);
        };
        if wrapped.kek_id != kek.id {
            return Err(CaError::WrongKek {
                stored: wrapped.kek_id.clone(),
                given: kek.id.clone(),
            });
        }
        let damaged = CaError::Corrupt {
            what: "a wrapped CA key does not decrypt with its key-encryption key",
        };
        if wrapped.alg != ALGORITHM {
            return Err(CaError::Corrupt {
                what: "a wrapped CA key uses an unknown algorithm",
            });
        }
        let nonce = STANDARD
            .decode(&wrapped.nonce)
            .ok()
            .and_then(|n| Nonce::try_assume_unique_for_key(&n).ok())
            .ok_or(CaError::Corrupt {
                what: "a wrapped CA key's nonce is not valid",
            })?;
        let mut data = STANDARD
            .decode(&wrapped.ciphertext)
            .map_err(|_| CaError::Corrupt {
                what: "a wrapped CA key is not valid base64",
            })?;
        let plain = kek
            .key
            .open_in_place(nonce, Aad::from(root_id.as_bytes()), &mut data)
            .map_err(|_| damaged)?;
        let pem = String::from_utf8(plain.to_vec()).map_err(|_| CaError::Corrupt {
            what: "a wrapped CA key is not PEM",
        })?;
        Ok(SecretPem(pem))
    }

    /// Whether the key is wrapped.
    pub(super) fn is_wrapped(&self) -> bool {
        matches!(self, StoredKey::Wrapped(_))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    #[test]
    fn wrapped_keys_open_only_with_their_kek_and_root() {
        let kek = KeyEncryptionKey::from_secret(SECRET).unwrap();
        let pem = SecretPem("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n".into());
        let stored = StoredKey::seal(pem.clone(), "root-1", Some(&kek)).unwrap();
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(
            text.contains(ALGORITHM) && text.contains(kek.id()),
            "{text}"
        );
        let back: StoredKey = serde_json::from_str(&text).unwrap();
        assert!(back.is_wrapped());
        assert_eq!(back.open("root-1", Some(&kek)).unwrap(), pem);
        // Same secret (with a trailing newline, as in a file): same KEK.
        let again = KeyEncryptionKey::from_secret(&format!("{SECRET}\n")).unwrap();
        assert_eq!(back.open("root-1", Some(&again)).unwrap(), pem);
        // Another root's record: refused.
        assert!(matches!(
            back.open("root-2", Some(&kek)),
            Err(CaError::Corrupt { .. })
        ));
        // No KEK, another KEK: told apart.
        assert!(matches!(
            back.open("root-1", None),
            Err(CaError::KeyWrapped)
        ));
        let other = KeyEncryptionKey::from_secret(&format!("x{SECRET}")).unwrap();
        assert!(matches!(
            back.open("root-1", Some(&other)),
            Err(CaError::WrongKek { .. })
        ));
        // Two seals of one key differ (random nonces).
        let twice = StoredKey::seal(pem, "root-1", Some(&kek)).unwrap();
        assert_ne!(serde_json::to_string(&twice).unwrap(), text);
    }

    #[test]
    fn old_records_read_as_plain_and_short_secrets_are_refused() {
        let old: StoredKey = serde_json::from_str("\"-----BEGIN PRIVATE KEY-----\"").unwrap();
        assert!(!old.is_wrapped());
        assert_eq!(format!("{old:?}"), "StoredKey::Plain(<redacted>)");
        assert_eq!(
            KeyEncryptionKey::from_secret("short\n").unwrap_err(),
            KekError::TooShort(5)
        );
    }
}
