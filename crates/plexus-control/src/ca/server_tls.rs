//! A server's HTTPS listener configuration from the built-in CA: a certificate issued at start,
//! renewed half-way through its life and as soon as the active root changes (rotation), and,
//! under `verify_incoming`, client certificates checked against the CA's trusted roots (followed
//! as they change). New connections get the new configuration; open ones keep theirs.

use std::sync::Arc;
use std::time::Duration;

use plexus_runtime::tls::{ClientAuth, Identity, Roots, TlsError, TlsServer, server_config};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls_certs::{ServerNames, TlsCertificate};
use super::x509::unix_now;
use super::{CaError, CertificateAuthority};

/// The longest a changed active root goes unnoticed (store writes wake the check; it runs at
/// most this often).
const ROOTS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Which roots client certificates are checked against.
#[derive(Debug, Clone)]
pub enum ClientRoots {
    /// No client certificates are asked for.
    None,
    /// The built-in CA's trusted roots.
    BuiltIn,
    /// A CA file's roots (`--ca-file`).
    Fixed(Roots),
}

/// Why the HTTPS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The CA could not issue the certificate or list its roots.
    #[error("the built-in CA could not issue the HTTPS certificate")]
    Ca(#[from] CaError),
    /// The material did not make a TLS configuration.
    #[error("the HTTPS configuration could not be built")]
    Tls(#[from] TlsError),
}

/// An HTTPS listener whose certificate comes from the built-in CA.
pub struct CaServerTls {
    ca: Arc<CertificateAuthority>,
    names: ServerNames,
    client_roots: ClientRoots,
}

impl CaServerTls {
    /// Settings for a listener presenting a certificate for `names`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        names: ServerNames,
        client_roots: ClientRoots,
    ) -> Self {
        Self {
            ca,
            names,
            client_roots,
        }
    }

    /// Issues the first certificate and builds the listener's configuration. Under
    /// `verify_incoming` the caller adds the policy with [`TlsServer::require_client_cert`].
    pub async fn start(&self) -> Result<(TlsServer, TlsCertificate), ServerTlsError> {
        let (config, cert) = self.build().await?;
        Ok((TlsServer::new(config), cert))
    }

    async fn build(&self) -> Result<(Arc<rustls::ServerConfig>, TlsCertificate), ServerTlsError> {
        let cert = self.ca.server_certificate(&self.names).await?;
        let identity = Identity::from_pem(&cert.cert_pem, cert.key_pem(), "the built-in CA")?;
        let client_auth = match &self.client_roots {
            ClientRoots::None => ClientAuth::None,
            ClientRoots::BuiltIn => ClientAuth::Optional(Roots::from_pem(
                &self.ca.roots_pem().await?,
                "the built-in CA's roots",
            )?),
            ClientRoots::Fixed(roots) => ClientAuth::Optional(roots.clone()),
        };
        Ok((server_config(&identity, &client_auth)?, cert))
    }

    /// Renews `tls`'s certificate half-way through its life and when the active root changes,
    /// until `stop`. A failed renewal is retried (5 s, then doubling to a minute) while the
    /// current certificate serves on.
    pub async fn run_renewal(
        self,
        tls: TlsServer,
        mut current: TlsCertificate,
        stop: CancellationToken,
    ) {
        let mut revisions = self.ca.revision_watch();
        let mut retry = Duration::from_secs(5);
        loop {
            let due = current.renew_at().saturating_sub(unix_now() as i64).max(0) as u64;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(due)) => {}
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Any store write wakes this; look at the roots at most every few seconds.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ROOTS_CHECK_INTERVAL) => {}
                    }
                    revisions.borrow_and_update();
                    let active = self.ca.roots().await.map(|r| r.value.active_root_id);
                    if active.as_deref().is_ok_and(|id| id == current.root_id) {
                        continue;
                    }
                }
            }
            match self.build().await {
                Ok((config, cert)) => {
                    tls.replace(config);
                    info!(root_id = %cert.root_id, not_after = cert.not_after, "renewed the HTTPS server certificate");
                    current = cert;
                    retry = Duration::from_secs(5);
                }
                Err(error) => {
                    warn!(error = %crate::api::ErrorChain(&error), ?retry, "renewing the HTTPS server certificate failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}
