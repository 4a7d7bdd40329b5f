//! Who may use a node: the one decision point for the connector's `hello` token and the token of
//! `POST /api/event` on the node.
//!
//! A node is open, requires one shared token (`--token-file`, `PLEXUS_EVENTS_TOKEN`), or takes
//! the control plane's ACL tokens ([`NodeAuth::Acl`]): a token may act as app `A` (say `hello`
//! as `A`, or post events through the node whose app is `A`) when it grants `service:write` on
//! `A`, the permission that registers `A` in the catalog and joins presence as `A`.
//! [`NodeAuth::check`] is the one decision point; nothing else in the node looks at tokens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

/// Why a token was refused: the HTTP-style status (401 no or unknown token, 403 not allowed,
/// 503 the control plane could not be asked) and a message that never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403 or 503.
    pub status: u16,
    /// Why.
    pub message: String,
}

/// The future an [`AppAuthority`] answers with.
pub type AuthorityFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>>;

/// Decides whether an ACL token may act as an app (implemented over the control plane's ACLs
/// by the binary, which resolves tokens as a remote agent does).
pub trait AppAuthority: Send + Sync + 'static {
    /// Whether `token` (`None`: no token, i.e. anonymous) may act as `app`.
    fn may_act_as<'a>(&'a self, token: Option<&'a str>, app: &'a str) -> AuthorityFuture<'a>;
}

/// How a node checks tokens.
#[derive(Clone, Default)]
pub enum NodeAuth {
    /// Anyone on the listener may connect (the listener is on loopback by default).
    #[default]
    Open,
    /// The app must present this token.
    Token(Secret),
    /// ACL tokens: the token must grant `service:write` on the app's name.
    Acl(Arc<dyn AppAuthority>),
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open => f.write_str("Open"),
            Self::Token(secret) => f.debug_tuple("Token").field(secret).finish(),
            Self::Acl(_) => f.write_str("Acl"),
        }
    }
}

impl NodeAuth {
    /// Decides on a token presented to act as `app`; the refusal says why (never the token).
    pub async fn check(&self, token: Option<&str>, app: &str) -> Result<(), Refusal> {
        let refuse = |message: &str| {
            Err(Refusal {
                status: 401,
                message: message.to_owned(),
            })
        };
        match (self, token) {
            (Self::Open, _) => Ok(()),
            (Self::Token(_), None) => refuse("this node requires a token (hello: token)"),
            (Self::Token(secret), Some(token)) if secret.matches(token) => Ok(()),
            (Self::Token(_), Some(_)) => refuse("the token is not valid for this node"),
            (Self::Acl(authority), token) => authority.may_act_as(token, app).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens() {
        assert!(NodeAuth::Open.check(None, "a").await.is_ok());
        let auth = NodeAuth::Token(Secret::new("s3cret\n"));
        assert!(auth.check(Some("s3cret"), "a").await.is_ok());
        assert!(auth.check(Some("s3cre"), "a").await.is_err());
        assert!(auth.check(Some("s3cretx"), "a").await.is_err());
        let refusal = auth.check(None, "a").await.unwrap_err();
        assert_eq!(refusal.status, 401);
        assert!(refusal.message.contains("requires a token"));
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
        assert_eq!(format!("{auth:?}"), "Token(Secret(<redacted>))");
    }

    /// Lets `good` act as `orders` only.
    struct OnlyOrders;

    impl AppAuthority for OnlyOrders {
        fn may_act_as<'a>(&'a self, token: Option<&'a str>, app: &'a str) -> AuthorityFuture<'a> {
            Box::pin(async move {
                match (token, app) {
                    (Some("good"), "orders") => Ok(()),
                    (Some("good"), _) => Err(Refusal {
                        status: 403,
                        message: format!("not {app}"),
                    }),
                    _ => Err(Refusal {
                        status: 401,
                        message: "ACL not found".to_owned(),
                    }),
                }
            })
        }
    }

    #[tokio::test]
    async fn acl_tokens_are_asked_about_the_app() {
        let auth = NodeAuth::Acl(Arc::new(OnlyOrders));
        assert!(auth.check(Some("good"), "orders").await.is_ok());
        assert_eq!(
            auth.check(Some("good"), "billing")
                .await
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(auth.check(None, "orders").await.unwrap_err().status, 401);
    }
}
