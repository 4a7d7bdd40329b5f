//! What went wrong talking to etcd, classified once: transient (retry), a write that never
//! reached etcd (safe to send again), or a start-up refusal an operator must fix (wrong CA,
//! wrong password, no permission on the prefix).

use etcd_client::Error as ClientError;
use tonic::Code;

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("no etcd endpoint reachable (tried {endpoints})")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last cause.
        #[source]
        source: Cause,
    },
    /// The TLS handshake failed: wrong CA, a client certificate etcd does not accept, or TLS
    /// spoken to a plain-text port (or the other way round).
    #[error(
        "TLS handshake with etcd ({endpoints}) failed; check --etcd-cacert, --etcd-cert and --etcd-key"
    )]
    Tls {
        /// The endpoints tried.
        endpoints: String,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// etcd refused the user name or password.
    #[error("etcd refused user {user:?}: wrong user name or password")]
    BadCredentials {
        /// The user.
        user: String,
    },
    /// etcd has authentication enabled and no user was given.
    #[error(
        "etcd requires authentication: give --etcd-username and --etcd-password-file (or PLEXUS_ETCD_PASSWORD)"
    )]
    AuthRequired,
    /// A user was given but etcd has authentication disabled.
    #[error("etcd has authentication disabled, but --etcd-username {user:?} was given")]
    AuthDisabled {
        /// The user.
        user: String,
    },
    /// The user may not read or write the namespace.
    #[error(
        "etcd user {user:?} may not {access} keys under prefix {prefix:?}: grant one of its roles readwrite permission on that prefix"
    )]
    PermissionDenied {
        /// The user.
        user: String,
        /// The namespace.
        prefix: String,
        /// `read` or `write`.
        access: &'static str,
    },
    /// Any other failure of one request.
    #[error("etcd {op} failed")]
    Request {
        /// What was asked (`range`, `txn`, `watch`, ...).
        op: &'static str,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// etcd answered with a key outside the namespace (a bug or a misconfigured proxy).
    #[error("etcd answered with key {0:?}, outside the namespace")]
    Malformed(String),
}

impl EtcdError {
    /// True for failures that go away by themselves: nothing reachable yet, a leader election,
    /// a request timed out inside etcd. Start-up retries these and gives up on the rest.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } => true,
            EtcdError::Request { source, .. } => source.transient,
            _ => false,
        }
    }
}

/// An etcd client error, described in one line: the gRPC status code and etcd's message, or the
/// transport failure with its causes.
#[derive(Debug, Clone)]
pub struct Cause {
    text: String,
    code: Option<Code>,
    transient: bool,
    /// The request never left this process or never reached a member (a refused connection, a
    /// member without a leader refusing before it applies anything).
    never_sent: bool,
    tls: bool,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {}

/// Appends `part` to `text` unless `text` already says it (transport errors repeat their
/// causes in their own messages).
fn push(text: &mut String, part: &str) {
    if part.is_empty() || text.contains(part) {
        return;
    }
    if !text.is_empty() {
        text.push_str(": ");
    }
    text.push_str(part);
}

/// The error with its source chain, each message once.
fn chain(text: &mut String, error: &(dyn std::error::Error + 'static)) {
    push(text, &error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        push(text, &cause.to_string());
        source = cause.source();
    }
}

impl Cause {
    /// Describes an etcd client error.
    pub fn of(error: &ClientError) -> Self {
        match error {
            ClientError::GRpcStatus(status) => {
                let mut text = format!("{:?}", status.code());
                push(&mut text, status.message());
                if let Some(source) = std::error::Error::source(status) {
                    chain(&mut text, source);
                }
                Self::classify(text, Some(status.code()))
            }
            ClientError::TransportError(error) => {
                let mut text = String::new();
                chain(&mut text, error);
                Self::classify(text, None)
            }
            other => Self::classify(other.to_string(), None),
        }
    }

    fn classify(text: String, code: Option<Code>) -> Self {
        let lower = text.to_ascii_lowercase();
        let tls = lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("invalid http version")
            || lower.contains("frame with invalid size");
        let connect = lower.contains("tcp connect error")
            || lower.contains("connection refused")
            || lower.contains("error trying to connect")
            || lower.contains("dns error");
        let no_leader = lower.contains("no leader");
        let transient = !tls
            && (connect
                || no_leader
                || matches!(
                    code,
                    None | Some(
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Unknown
                            | Code::Aborted
                            | Code::ResourceExhausted
                            | Code::Cancelled
                    )
                ));
        Self {
            never_sent: connect || no_leader,
            text,
            code,
            transient,
            tls,
        }
    }

    /// The gRPC status code, when etcd answered.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// True when a write certainly was not applied and may be sent again.
    pub fn never_sent(&self) -> bool {
        self.never_sent
    }

    /// True for a TLS failure.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// etcd's message, lower-cased (for the auth classifications).
    fn says(&self, words: &str) -> bool {
        self.text.to_ascii_lowercase().contains(words)
    }
}

/// Turns a failure at start-up into what the operator must fix.
pub(super) fn startup(
    op: &'static str,
    error: &ClientError,
    endpoints: &[String],
    user: Option<&str>,
    prefix: &str,
    access: &'static str,
) -> EtcdError {
    let cause = Cause::of(error);
    let endpoints = endpoints.join(",");
    if cause.is_tls() {
        return EtcdError::Tls {
            endpoints,
            source: cause,
        };
    }
    if cause.says("authentication failed") || cause.says("invalid user id or password") {
        return EtcdError::BadCredentials {
            user: user.unwrap_or_default().to_owned(),
        };
    }
    if cause.says("user name is empty") || cause.says("user name not found") && user.is_none() {
        return EtcdError::AuthRequired;
    }
    if cause.says("authentication is not enabled") {
        return EtcdError::AuthDisabled {
            user: user.unwrap_or_default().to_owned(),
        };
    }
    if cause.code() == Some(Code::PermissionDenied) || cause.says("permission denied") {
        return EtcdError::PermissionDenied {
            user: user.unwrap_or("(none)").to_owned(),
            prefix: prefix.to_owned(),
            access,
        };
    }
    if cause.never_sent() || cause.code() == Some(Code::Unavailable) {
        return EtcdError::Unreachable {
            endpoints,
            source: cause,
        };
    }
    EtcdError::Request { op, source: cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> ClientError {
        ClientError::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn start_up_failures_say_what_to_fix() {
        let endpoints = ["https://127.0.0.1:1".to_owned()];
        let bad = startup(
            "authenticate",
            &status(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            &endpoints,
            Some("plexus"),
            "p/",
            "read",
        );
        assert_eq!(
            bad.to_string(),
            "etcd refused user \"plexus\": wrong user name or password"
        );
        let denied = startup(
            "range",
            &status(Code::PermissionDenied, "etcdserver: permission denied"),
            &endpoints,
            Some("plexus"),
            "p/",
            "write",
        );
        assert_eq!(
            denied.to_string(),
            "etcd user \"plexus\" may not write keys under prefix \"p/\": grant one of its roles readwrite permission on that prefix"
        );
        assert!(!denied.is_transient());
        let required = startup(
            "range",
            &status(Code::InvalidArgument, "etcdserver: user name is empty"),
            &endpoints,
            None,
            "p/",
            "read",
        );
        assert!(matches!(required, EtcdError::AuthRequired));
        let tls = startup(
            "status",
            &status(
                Code::Unavailable,
                "transport error: invalid peer certificate: UnknownIssuer",
            ),
            &endpoints,
            None,
            "p/",
            "read",
        );
        assert!(matches!(tls, EtcdError::Tls { .. }), "{tls:?}");
        assert!(!tls.is_transient());
        let down = startup(
            "status",
            &status(
                Code::Unavailable,
                "tcp connect error: Connection refused (os error 111)",
            ),
            &endpoints,
            None,
            "p/",
            "read",
        );
        assert!(matches!(down, EtcdError::Unreachable { .. }));
        assert!(down.is_transient());
    }

    #[test]
    fn only_writes_that_never_left_are_sent_again() {
        let refused = Cause::of(&status(
            Code::Unavailable,
            "error trying to connect: Connection refused",
        ));
        assert!(refused.never_sent() && refused.is_transient());
        let no_leader = Cause::of(&status(Code::Unavailable, "etcdserver: no leader"));
        assert!(no_leader.never_sent());
        let timeout = Cause::of(&status(Code::Unavailable, "etcdserver: request timed out"));
        assert!(timeout.is_transient() && !timeout.never_sent());
        let denied = Cause::of(&status(Code::PermissionDenied, "permission denied"));
        assert!(!denied.is_transient());
    }
}
