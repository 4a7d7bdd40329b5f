//! Who may use a node: the one decision point for the connector's `hello` token and the token of
//! `POST /api/event` on the node.
//!
//! Today a node is open or requires one shared token (`--token-file`, `PLEXUS_EVENTS_TOKEN`).
//! When the control plane has ACL tokens, [`NodeAuth::check`] is where a token is resolved into
//! what it may do; nothing else in the node looks at tokens.

/// A secret string whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret (surrounding whitespace, e.g. a file's final newline, is dropped).
    pub fn new(text: &str) -> Self {
        Self(text.trim().to_owned())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in time that does not depend on where the first difference is.
    fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a node checks tokens.
#[derive(Debug, Clone, Default)]
pub enum NodeAuth {
    /// Anyone on the listener may connect (the listener is on loopback by default).
    #[default]
    Open,
    /// The app must present this token.
    Token(Secret),
}

impl NodeAuth {
    /// Decides on a presented token; the error says why (never the token).
    pub fn check(&self, token: Option<&str>) -> Result<(), String> {
        match (self, token) {
            (Self::Open, _) => Ok(()),
            (Self::Token(_), None) => Err("this node requires a token (hello: token)".into()),
            (Self::Token(secret), Some(token)) if secret.matches(token) => Ok(()),
            (Self::Token(_), Some(_)) => Err("the token is not valid for this node".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(NodeAuth::Open.check(None).is_ok());
        let auth = NodeAuth::Token(Secret::new("s3cret\n"));
        assert!(auth.check(Some("s3cret")).is_ok());
        assert!(auth.check(Some("s3cre")).is_err());
        assert!(auth.check(Some("s3cretx")).is_err());
        assert!(auth.check(None).unwrap_err().contains("requires a token"));
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
    }
}
