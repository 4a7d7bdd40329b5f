//! Why [`run`](crate::run) stopped, and the listener names errors and logs use.

use std::fmt;
use std::net::SocketAddr;

use crate::discovery::RegistrationError;

/// Why the proxy could not start (or stopped).
///
/// Only start-up problems are fatal: once the first configuration is applied, control-plane outages,
/// deregistration and bind failures of later changes are logged and the proxy keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The control plane answered, but no `connect-proxy` service fronts the given service id.
    #[error("no sidecar proxy is registered for service {service_id:?}")]
    NoSidecar {
        /// The app's service id (`sidecar_for`).
        service_id: String,
    },
    /// The control plane answered, but `--proxy-id` names no `connect-proxy` service.
    #[error("no connect-proxy service with id {proxy_id:?} is registered")]
    NoProxy {
        /// The proxy's service id (`proxy_id`).
        proxy_id: String,
    },
    /// The control plane refused this sidecar's token (403): no token against a server whose
    /// default policy denies, a token without `service:write` on the service, or an unknown one.
    #[error(
        "the control plane refused this sidecar's token ({token}): {message}; give the sidecar a token with service:write on its service (--token, --token-file or PLEXUS_HTTP_TOKEN)"
    )]
    Denied {
        /// `no token given` or `token given`.
        token: &'static str,
        /// The control plane's answer.
        message: String,
    },
    /// The sidecar registration cannot be turned into listeners.
    #[error("sidecar registration {sidecar_id:?} is invalid")]
    InvalidRegistration {
        /// The sidecar's service id.
        sidecar_id: String,
        /// What is wrong with it.
        #[source]
        source: RegistrationError,
    },
    /// A listener of the first configuration could not be bound.
    #[error("cannot bind {listener} listener on {addr}")]
    Bind {
        /// Which listener.
        listener: ListenerName,
        /// The address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from this sidecar's identity.
    #[error("cannot set up mTLS")]
    Tls(#[source] crate::tls::TlsConfigError),
    /// `plexus gateway --kind K --service S`, but S is registered with another kind.
    #[error(
        "service {service:?} is registered with kind {registered:?}, not {requested:?}; use --kind to match it or another --service name"
    )]
    KindMismatch {
        /// The gateway's service.
        service: String,
        /// Its registered kind (`""`: an ordinary service).
        registered: String,
        /// The kind asked for.
        requested: String,
    },
    /// The gateway could not register itself.
    #[error("cannot register gateway service {service:?}: {message}")]
    Register {
        /// The gateway's service.
        service: String,
        /// The control plane's answer.
        message: String,
    },
    /// The admin listener handed in by the caller is unusable.
    #[error("admin listener is unusable")]
    AdminListener {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The name of one of the proxy's listeners.
///
/// `Display` is the phrase errors use (`inbound`, `upstream "echo"`); [`ListenerName::log_name`] is
/// the name `listening` lines, spans and metrics use (`inbound`, `upstream:echo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenerName {
    /// The sidecar's public port, forwarding to the local app.
    Inbound,
    /// The local port through which the app reaches an upstream service.
    Upstream(String),
    /// A gateway's listener (`ingress:8080`, `terminating`).
    Gateway(String),
}

impl ListenerName {
    /// `inbound` or `upstream:<destination>`.
    pub fn log_name(&self) -> String {
        match self {
            ListenerName::Inbound => "inbound".to_owned(),
            ListenerName::Upstream(destination) => format!("upstream:{destination}"),
            ListenerName::Gateway(name) => name.clone(),
        }
    }
}

impl fmt::Display for ListenerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerName::Inbound => f.write_str("inbound"),
            ListenerName::Upstream(destination) => write!(f, "upstream \"{destination}\""),
            ListenerName::Gateway(name) => write!(f, "gateway {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_runtime::ErrorChain;

    #[test]
    fn bind_error_names_the_listener_and_address() {
        let error = ProxyError::Bind {
            listener: ListenerName::Upstream("echo".into()),
            addr: "127.0.0.1:9191".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            error.to_string(),
            "cannot bind upstream \"echo\" listener on 127.0.0.1:9191"
        );
        assert!(
            ErrorChain(&error)
                .to_string()
                .starts_with(&error.to_string())
        );
        assert!(ErrorChain(&error).to_string().len() > error.to_string().len());
        assert_eq!(
            ListenerName::Upstream("echo".into()).log_name(),
            "upstream:echo"
        );
    }

    #[test]
    fn no_sidecar_names_the_service() {
        let error = ProxyError::NoSidecar {
            service_id: "x".into(),
        };
        assert_eq!(
            error.to_string(),
            "no sidecar proxy is registered for service \"x\""
        );
    }
}
