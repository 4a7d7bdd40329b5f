//! TLS failures in words: what the handshake said, and what to check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use tokio::io::AsyncReadExt;

/// When `error` is a failed TLS handshake, what went wrong and what to check.
pub(super) fn failure(error: &reqwest::Error) -> Option<String> {
    let cause = rustls_error(error)?;
    Some(explain(cause))
}

/// How long [`probe`] waits for the server's verdict after the handshake.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// Why an HTTPS request failed when the error does not say: a TLS 1.3 server checks a client
/// certificate after the handshake, and its refusal can close the connection before the request
/// is written, so the pool reports only a closed connection. A handshake of its own with the same
/// configuration and one read then hear the server's alert (`None`: no alert within
/// [`PROBE_WAIT`], or `url` is not HTTPS).
pub(super) async fn probe(
    url: &str,
    config: &rustls::ClientConfig,
    resolve: &[(String, Vec<SocketAddr>)],
) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    if url.scheme() != "https" {
        return None;
    }
    let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default()?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
    let attempt = async {
        // As the request went: the names overridden for the client (the URL's port), else DNS.
        let tcp = match resolve.iter().find(|(overridden, _)| *overridden == host) {
            Some((_, addrs)) => {
                let addrs: Vec<SocketAddr> = addrs
                    .iter()
                    .map(|addr| SocketAddr::new(addr.ip(), port))
                    .collect();
                tokio::net::TcpStream::connect(&addrs[..]).await
            }
            None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
        }
        .ok()?;
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(error) => return rustls_error(&error).map(explain),
        };
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Err(error) => rustls_error(&error).map(explain),
            Ok(_) => None,
        }
    };
    tokio::time::timeout(PROBE_WAIT, attempt)
        .await
        .ok()
        .flatten()
}

/// The rustls error somewhere in `error`'s chain (an I/O error may wrap it).
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // An I/O error's `source()` skips the error it wraps (which may wrap another).
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

fn explain(error: &rustls::Error) -> String {
    let hint = match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by the CA in --ca-file (PLEXUS_CACERT)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the server's certificate is not valid yet (check the clocks)",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the server's certificate does not name this address; give the name it holds with --tls-server-name (PLEXUS_TLS_SERVER_NAME)"
        }
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => {
            "the server refused our client certificate (--client-cert/--client-key must be signed by the server's CA and valid)"
        }
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer in TLS (is this a plain-HTTP port? then use http://)"
        }
        _ => "",
    };
    if hint.is_empty() {
        error.to_string()
    } else {
        format!("{hint} ({error})")
    }
}
