//! Token secrets: a type that never shows its value (`Debug` and `Display` redact) and compares
//! in constant time.

use subtle::ConstantTimeEq;

/// A token's SecretID as a caller presented it or the store holds it.
///
/// `Debug` and `Display` print `<redacted>`; [`SecretId::expose`] is the only way to the text
/// (for the one header a client sends, and the one answer that hands a new token out).
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretId(String);

impl SecretId {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> SecretId {
        SecretId(secret.into())
    }

    /// The secret itself. Never log it or put it into an error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison (the time taken does not depend on where the texts differ).
    pub fn matches(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl PartialEq for SecretId {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for SecretId {}

impl std::fmt::Debug for SecretId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretId(<redacted>)")
    }
}

impl std::fmt::Display for SecretId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_secret() {
        let secret = SecretId::new("3f1c-secret-value");
        assert!(!format!("{secret:?}").contains("3f1c"));
        assert!(!format!("{secret}").contains("3f1c"));
        assert!(secret.matches("3f1c-secret-value"));
        assert!(!secret.matches("3f1c-secret-valuE"));
        assert!(!secret.matches(""));
        assert_eq!(secret, SecretId::new("3f1c-secret-value"));
    }
}
