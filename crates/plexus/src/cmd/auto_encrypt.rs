//! `plexus agent --auto-encrypt`: the agent's TLS certificate from a server, as Consul's
//! `auto_encrypt { tls = true }` does. The agent needs only the CA bundle (`--ca-file`, to
//! verify the server) and its token; it generates its key, sends a CSR for its agent SPIFFE id
//! (and its address) to `POST /v1/internal/auto-encrypt/sign`, and from then on presents the
//! certificate to servers and on its own HTTPS listener. It renews half-way through the
//! certificate's life.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use plexus_api::auto_encrypt::{SignRequest, SignResponse, agent_spiffe_id};
use plexus_api::client::Client;
use plexus_runtime::tls::{CertSlot, Identity};
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The trust domain an agent asks under before it knows the real one (the server signs the
/// real one).
const PLACEHOLDER_TRUST_DOMAIN: &str = "placeholder.invalid";

/// A signed agent certificate and its key.
pub struct AgentCertificate {
    /// Certificate and key, for TLS.
    pub identity: Identity,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// The answer's roots and server name.
    pub answer: SignResponse,
}

/// What an agent asks for.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// Node name.
    pub node: String,
    /// Datacenter.
    pub datacenter: String,
    /// The node's address (an IP SAN when it is one).
    pub address: String,
}

impl AgentRequest {
    /// Generates a key and asks `client` to sign it.
    pub async fn sign(&self, client: &Client) -> anyhow::Result<AgentCertificate> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the agent's key")?;
        let mut params = CertificateParams::default();
        let uri = agent_spiffe_id(PLACEHOLDER_TRUST_DOMAIN, &self.datacenter, &self.node);
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into().context("the agent's SPIFFE id")?,
        )];
        if let Ok(ip) = self.address.parse() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .context("writing the CSR")?;
        let answer = client
            .auto_encrypt_sign(&SignRequest {
                node: self.node.clone(),
                datacenter: self.datacenter.clone(),
                csr,
            })
            .await?;
        let identity = Identity::from_pem(
            &answer.issued_cert.cert_pem,
            &key.serialize_pem(),
            "the auto-encrypt certificate",
        )?;
        Ok(AgentCertificate {
            identity,
            not_before: answer.issued_cert.valid_after_unix,
            not_after: answer.issued_cert.valid_before_unix,
            answer,
        })
    }

    /// Signs, retrying with backoff while no server answers; a server's refusal (4xx) is
    /// final. `None` when `stop` came first.
    pub async fn obtain(
        &self,
        client: &Client,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<AgentCertificate>> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.sign(client).await {
                Ok(cert) => {
                    info!(node = %self.node, not_after = cert.not_after, server_name = %cert.answer.server_name, "obtained the agent certificate (auto_encrypt)");
                    return Ok(Some(cert));
                }
                Err(error) => {
                    // A refusal or a TLS failure (wrong CA, …) will not heal by retrying.
                    let refused = error
                        .downcast_ref::<plexus_api::client::ClientError>()
                        .is_some_and(|e| {
                            matches!(e, plexus_api::client::ClientError::Tls { .. })
                                || e.status()
                                    .is_some_and(|status| (400..500).contains(&status))
                        });
                    if refused {
                        return Err(
                            error.context("the server refused the agent's certificate request")
                        );
                    }
                    warn!(error = %format!("{error:#}"), retry_in = ?backoff, "cannot obtain the agent certificate; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Renews the certificate in `slot` half-way through its life until `stop`, retrying
    /// failures (1 s doubling to a minute) while the current one is still valid.
    pub async fn run_renewal(
        self,
        client: Client,
        slot: Arc<CertSlot>,
        mut not_before: i64,
        mut not_after: i64,
        stop: CancellationToken,
    ) {
        let mut retry = Duration::from_secs(1);
        loop {
            let renew_at = not_before + (not_after - not_before) / 2;
            let wait = u64::try_from(renew_at - unix_now()).unwrap_or(0);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            match self.sign(&client).await {
                Ok(cert) => match slot.replace(&cert.identity) {
                    Ok(()) => {
                        info!(node = %self.node, not_after = cert.not_after, "renewed the agent certificate");
                        (not_before, not_after) = (cert.not_before, cert.not_after);
                        retry = Duration::from_secs(1);
                        continue;
                    }
                    Err(error) => warn!(%error, "the renewed agent certificate is not usable"),
                },
                Err(error) => {
                    warn!(error = %format!("{error:#}"), ?retry, "renewing the agent certificate failed; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(60));
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
