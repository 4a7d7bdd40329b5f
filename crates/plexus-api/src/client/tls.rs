//! TLS failures in words: what the handshake said, and what to check.

use rustls::{AlertDescription, CertificateError};

/// When `error` is a failed TLS handshake, what went wrong and what to check.
pub(super) fn failure(error: &reqwest::Error) -> Option<String> {
    let cause = rustls_error(error)?;
    Some(explain(cause))
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
