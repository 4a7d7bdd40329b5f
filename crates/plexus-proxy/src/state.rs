//! The sidecar's last good configuration on disk (`plexus proxy --state-dir DIR`), so that a
//! sidecar restarted while no control-plane server answers serves from it, marked stale, instead
//! of waiting for the control plane.
//!
//! One JSON file per answer the sidecar follows: its registration, its leaf certificate, the CA
//! roots, the intentions for its service, and per upstream the endpoints and the discovery chain.
//! Each is rewritten (to a temporary file, then renamed; mode 0600 in a 0700 directory) whenever
//! a new answer is applied, and read only when the control plane cannot be reached at start.
//!
//! The leaf's private key is the one secret. It is sealed with AES-256-GCM under a key derived
//! (HKDF-SHA256) from the sidecar's ACL token, which is not in the directory; the sidecar id and
//! the SPIFFE id are the associated data. Without a token the key is not written, and a
//! sidecar restarted during an outage waits for the control plane to sign a new leaf.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use plexus_api::acl::SecretId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use plexus_runtime::ErrorChain;

const SALT: &[u8] = b"plexus sidecar state key v1";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating or checking the directory failed.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The crypto library refused to derive the key (does not happen with HKDF-SHA256).
    #[error("cannot derive the state key from the token")]
    Derive,
}

/// A saved answer and when it was saved.
#[derive(Debug, Serialize, Deserialize)]
struct Saved<T> {
    saved_at: u64,
    value: T,
}

/// A sealed secret as written: nonce and ciphertext, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sealed {
    nonce: String,
    ciphertext: String,
}

/// The sidecar's state directory.
pub struct StateDir {
    dir: PathBuf,
    key: Option<RandomizedNonceKey>,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("dir", &self.dir)
            .field("sealing", &self.key.is_some())
            .finish()
    }
}

impl StateDir {
    /// Opens (creating it, mode 0700) the directory; the private key is sealed under `token`.
    pub fn open(dir: &Path, token: Option<&SecretId>) -> Result<Self, StateError> {
        let failed = |source| StateError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(failed)?;
        }
        // Writable? (A read-only directory is found now, not at the first save.)
        let probe = dir.join(".probe");
        std::fs::write(&probe, b"").map_err(failed)?;
        std::fs::remove_file(&probe).map_err(failed)?;
        let key = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => {
                let prk = Salt::new(HKDF_SHA256, SALT).extract(token.expose().as_bytes());
                let mut key = [0u8; 32];
                prk.expand(&[b"leaf key"], HKDF_SHA256)
                    .and_then(|okm| okm.fill(&mut key))
                    .map_err(|_| StateError::Derive)?;
                Some(RandomizedNonceKey::new(&AES_256_GCM, &key).map_err(|_| StateError::Derive)?)
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file for `name` (names of upstreams are escaped into a file name).
    fn file(&self, name: &str) -> PathBuf {
        let mut file = String::with_capacity(name.len() + 5);
        for c in name.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') && !file.is_empty() {
                file.push(c);
            } else {
                file.push_str(&format!("%{:02x}", u32::from(c)));
            }
        }
        file.push_str(".json");
        self.dir.join(file)
    }

    /// Writes `value` as `name`, replacing what was there; a failure is logged, never fatal.
    pub(crate) fn save<T: Serialize>(&self, name: &str, value: &T) {
        let path = self.file(name);
        let saved_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let written = serde_json::to_vec(&Saved { saved_at, value })
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_private(&path, &bytes));
        match written {
            Ok(()) => debug!(file = %path.display(), "saved the last good answer"),
            Err(error) => {
                warn!(error = %ErrorChain(&error), file = %path.display(), "cannot save the last good answer")
            }
        }
    }

    /// Reads `name` and when it was saved; `None` (logged unless absent) when it cannot be used.
    pub(crate) fn load<T: DeserializeOwned>(&self, name: &str) -> Option<(T, SystemTime)> {
        let path = self.file(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                warn!(error = %error, file = %path.display(), "cannot read the last good answer");
                return None;
            }
        };
        match serde_json::from_slice::<Saved<T>>(&bytes) {
            Ok(saved) => Some((
                saved.value,
                UNIX_EPOCH + std::time::Duration::from_secs(saved.saved_at),
            )),
            Err(error) => {
                warn!(error = %error, file = %path.display(), "ignoring an unreadable last good answer");
                None
            }
        }
    }

    /// Seals `secret` bound to `context`; `None` without a token.
    pub(crate) fn seal(&self, secret: &[u8], context: &str) -> Option<Sealed> {
        let key = self.key.as_ref()?;
        let mut data = secret.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut data)
            .ok()?;
        Some(Sealed {
            nonce: STANDARD.encode(nonce.as_ref()),
            ciphertext: STANDARD.encode(&data),
        })
    }

    /// Opens what [`StateDir::seal`] sealed for `context`; `None` with another token or
    /// context, or damaged data.
    pub(crate) fn unseal(&self, sealed: &Sealed, context: &str) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let nonce = STANDARD.decode(&sealed.nonce).ok()?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce).ok()?;
        let mut data = STANDARD.decode(&sealed.ciphertext).ok()?;
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600), so a
/// crash leaves the old file or the new one, never half of one.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_names_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path(), None).unwrap();
        state.save("endpoints/a b", &vec![1, 2, 3]);
        let (value, saved_at): (Vec<u32>, _) = state.load("endpoints/a b").unwrap();
        assert_eq!(value, [1, 2, 3]);
        assert!(saved_at <= SystemTime::now());
        assert!(dir.path().join("endpoints%2fa%20b.json").exists());
        assert!(state.file("..").ends_with("%2e..json"));
        assert!(state.load::<Vec<u32>>("missing").is_none());
        // A damaged file is ignored, not a failure.
        std::fs::write(state.file("bad"), b"{").unwrap();
        assert!(state.load::<Vec<u32>>("bad").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.path()), 0o700);
            assert_eq!(mode(&state.file("endpoints/a b")), 0o600);
        }
    }

    #[test]
    fn a_key_is_sealed_under_the_token_and_bound_to_its_context() {
        let dir = tempfile::tempdir().unwrap();
        let token = SecretId::new("6a1f0f3e-token");
        let state = StateDir::open(dir.path(), Some(&token)).unwrap();
        let sealed = state.seal(b"private key", "web-sidecar-proxy").unwrap();
        assert!(!sealed.ciphertext.contains("private"));
        assert_eq!(
            state.unseal(&sealed, "web-sidecar-proxy").unwrap(),
            b"private key"
        );
        assert_eq!(state.unseal(&sealed, "db-sidecar-proxy"), None);
        let other = StateDir::open(dir.path(), Some(&SecretId::new("other"))).unwrap();
        assert_eq!(other.unseal(&sealed, "web-sidecar-proxy"), None);
        // Without a token nothing is sealed, and nothing opens.
        let open = StateDir::open(dir.path(), None).unwrap();
        assert_eq!(open.seal(b"private key", "web-sidecar-proxy"), None);
        assert_eq!(open.unseal(&sealed, "web-sidecar-proxy"), None);
    }

    #[test]
    fn an_unusable_directory_is_refused_naming_it() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let error = StateDir::open(&file.path().join("state"), None).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&file.path().display().to_string()),
            "{error}"
        );
    }
}
