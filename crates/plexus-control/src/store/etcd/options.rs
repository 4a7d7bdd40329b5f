//! How to reach etcd: endpoints, TLS, credentials, the key prefix, and the errors that say why a
//! connection is refused in words an operator can act on.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The namespace prefix when none is given.
pub const DEFAULT_PREFIX: &str = "plexus/";

/// A password, never shown by `Debug` (nor logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password; a trailing newline (as a password file usually ends) is dropped.
    pub fn new(text: impl Into<String>) -> Self {
        let mut text = text.into();
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Self(text)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// etcd user name and password (etcd's `--auth` simple or JWT tokens are handled by the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: Password,
}

/// TLS to etcd, as etcdctl's `--cacert`, `--cert`, `--key`.
#[derive(Clone)]
pub struct TlsFiles {
    /// The CA bundle that signed the members' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// Where it came from (for messages).
    pub ca_path: PathBuf,
    /// A client certificate and its key (PEM), when etcd asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_path", &self.ca_path)
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Reads the CA and (optionally) the client certificate and key. Every error names the
    /// file and the flag it came from.
    pub fn read(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, OptionsError> {
        let ca_pem = read_pem(ca, "--etcd-cacert", "CERTIFICATE")?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                read_pem(cert, "--etcd-cert", "CERTIFICATE")?,
                read_pem(key, "--etcd-key", "PRIVATE KEY")?,
            )),
            (None, None) => None,
            (Some(_), None) => return Err(OptionsError::Pair("--etcd-cert", "--etcd-key")),
            (None, Some(_)) => return Err(OptionsError::Pair("--etcd-key", "--etcd-cert")),
        };
        Ok(Self {
            ca_pem,
            ca_path: ca.to_owned(),
            client,
        })
    }
}

fn read_pem(path: &Path, flag: &'static str, label: &str) -> Result<Vec<u8>, OptionsError> {
    let bytes = std::fs::read(path).map_err(|source| OptionsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(label) {
        return Err(OptionsError::NotPem {
            flag,
            path: path.to_owned(),
            expected: if label == "CERTIFICATE" {
                "a PEM certificate"
            } else {
                "a PEM private key"
            },
        });
    }
    Ok(bytes)
}

/// Everything needed to connect.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, `http(s)://host:port` (see [`endpoint_url`]).
    pub endpoints: Vec<String>,
    /// Every key Plexus writes starts with this.
    pub prefix: String,
    /// TLS, when etcd serves it.
    pub tls: Option<TlsFiles>,
    /// etcd authentication.
    pub credentials: Option<Credentials>,
}

impl EtcdOptions {
    /// Plain-text etcd at `endpoints` under `prefix`, no authentication.
    pub fn new(endpoints: &[String], prefix: &str) -> Result<Self, OptionsError> {
        Self::build(endpoints, prefix, None, None)
    }

    /// Checks endpoints and prefix against the TLS choice: every endpoint becomes a URL
    /// (`https://` with TLS).
    pub fn build(
        endpoints: &[String],
        prefix: &str,
        tls: Option<TlsFiles>,
        credentials: Option<Credentials>,
    ) -> Result<Self, OptionsError> {
        if endpoints.is_empty() {
            return Err(OptionsError::NoEndpoints);
        }
        if prefix.is_empty() {
            return Err(OptionsError::EmptyPrefix);
        }
        let endpoints = endpoints
            .iter()
            .map(|e| endpoint_url(e, tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(credentials) = &credentials
            && credentials.username.is_empty()
        {
            return Err(OptionsError::EmptyUser);
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
            tls,
            credentials,
        })
    }

    /// The etcd client's options (timeouts, keep-alive, TLS, user).
    pub(super) fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(super::CONNECT_TIMEOUT)
            .with_timeout(super::REQUEST_TIMEOUT)
            .with_keep_alive(super::KEEP_ALIVE, super::KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader refuses instead of serving stale watches.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        if let Some(credentials) = &self.credentials {
            options = options.with_user(
                credentials.username.clone(),
                credentials.password.expose().to_owned(),
            );
        }
        options
    }

    /// The user, for messages (`(none)` without authentication).
    pub(super) fn user(&self) -> &str {
        self.credentials
            .as_ref()
            .map_or("(none)", |c| c.username.as_str())
    }
}

/// Normalises `host:port`, `http://host:port` or `https://host:port` to a URL; with `tls`,
/// `host:port` becomes `https://`, and `http://` is refused (and `https://` without it).
pub fn endpoint_url(text: &str, tls: bool) -> Result<String, OptionsError> {
    let trimmed = text.trim().trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        ("http", rest)
    } else {
        (if tls { "https" } else { "http" }, trimmed)
    };
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && !rest.contains('/');
    if !valid {
        return Err(OptionsError::BadEndpoint(text.to_owned()));
    }
    match (scheme, tls) {
        ("http", true) => Err(OptionsError::PlainWithTls(text.to_owned())),
        ("https", false) => Err(OptionsError::TlsWithoutCa(text.to_owned())),
        _ => Ok(format!("{scheme}://{rest}")),
    }
}

/// Why the etcd options are not usable (a configuration error: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// No endpoint at all.
    #[error("--store etcd needs --etcd-endpoints host:port[,host:port...]")]
    NoEndpoints,
    /// An endpoint that is not `host:port` or a URL of one.
    #[error(
        "--etcd-endpoints: invalid etcd endpoint {0:?}: expected host:port, http://host:port or https://host:port"
    )]
    BadEndpoint(String),
    /// `http://` while TLS is configured.
    #[error("--etcd-endpoints: {0:?} is plain http but --etcd-cacert asks for TLS")]
    PlainWithTls(String),
    /// `https://` without a CA.
    #[error("--etcd-endpoints: {0:?} is https but no --etcd-cacert was given")]
    TlsWithoutCa(String),
    /// An empty prefix would mix Plexus's keys with everything else in etcd.
    #[error("--etcd-prefix must not be empty")]
    EmptyPrefix,
    /// A password without a user name.
    #[error("--etcd-username must not be empty when a password is given")]
    EmptyUser,
    /// A certificate without its key or the other way round.
    #[error("{0} needs {1}")]
    Pair(&'static str, &'static str),
    /// A file that cannot be read.
    #[error("{flag}: cannot read {path}")]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not what the flag expects.
    #[error("{flag}: {path} is not {expected}")]
    NotPem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_follow_the_tls_choice() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:2379", true).unwrap(),
            "https://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("https://etcd.example:2379/", true).unwrap(),
            "https://etcd.example:2379"
        );
        assert!(matches!(
            endpoint_url("http://127.0.0.1:2379", true),
            Err(OptionsError::PlainWithTls(_))
        ));
        assert!(matches!(
            endpoint_url("https://127.0.0.1:2379", false),
            Err(OptionsError::TlsWithoutCa(_))
        ));
        for bad in ["", "nohost", ":2379", "h:0", "h:99999", "h:1/x"] {
            assert!(
                matches!(endpoint_url(bad, false), Err(OptionsError::BadEndpoint(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        let credentials = Credentials {
            username: "plexus".to_owned(),
            password: Password::new("hunter2\n"),
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(credentials.password.expose(), "hunter2");
    }

    #[test]
    fn unusable_files_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = TlsFiles::read(&missing, None, None).unwrap_err();
        assert!(error.to_string().starts_with("--etcd-cacert: cannot read"));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let error = TlsFiles::read(&junk, None, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("--etcd-cacert: {} is not a PEM certificate", junk.display())
        );
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let error = TlsFiles::read(&ca, Some(&ca), None).unwrap_err();
        assert_eq!(error.to_string(), "--etcd-cert needs --etcd-key");
        let error = TlsFiles::read(&ca, Some(&ca), Some(&ca)).unwrap_err();
        assert!(error.to_string().contains("is not a PEM private key"));
        assert!(matches!(
            EtcdOptions::new(&[], "p/"),
            Err(OptionsError::NoEndpoints)
        ));
        assert!(matches!(
            EtcdOptions::new(&["h:1".to_owned()], ""),
            Err(OptionsError::EmptyPrefix)
        ));
    }
}
