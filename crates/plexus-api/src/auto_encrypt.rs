//! `auto_encrypt`: an agent holding only a token and the CA bundle asks a server to sign its
//! own TLS certificate (Consul's `AutoEncrypt.Sign`), over `POST /v1/internal/auto-encrypt/sign`.
//!
//! The agent generates its key (it never leaves the agent) and sends a CSR asking for its agent
//! SPIFFE id ([`agent_spiffe_id`]) plus, optionally, DNS names and IP addresses it is reached by.
//! The server answers with the certificate and the CA roots to trust.

use serde::{Deserialize, Serialize};

use crate::connect::{CaRoots, IssuedCert};

/// The path of the signing endpoint.
pub const SIGN_PATH: &str = "/v1/internal/auto-encrypt/sign";

/// The SPIFFE id of an agent (Consul's form): `spiffe://<td>/agent/client/dc/<dc>/id/<node>`.
pub fn agent_spiffe_id(trust_domain: &str, datacenter: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/agent/client/dc/{datacenter}/id/{node}")
}

/// `POST /v1/internal/auto-encrypt/sign` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The agent's node name (the CSR's SPIFFE id must name it).
    #[serde(rename = "Node")]
    pub node: String,
    /// The agent's datacenter (default: the server's).
    #[serde(
        rename = "Datacenter",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    /// PEM `CERTIFICATE REQUEST`.
    #[serde(rename = "CSR")]
    pub csr: String,
}

/// The answer: the agent's certificate and the roots to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The signed certificate (no private key: the agent holds it).
    #[serde(rename = "IssuedCert")]
    pub issued_cert: IssuedCert,
    /// The CA roots (verify servers and other agents with them).
    #[serde(rename = "ConnectCARoots")]
    pub roots: CaRoots,
    /// Servers' certificates name `server.<dc>.<domain>`; clients may check it
    /// (`--tls-server-name`).
    #[serde(rename = "VerifyServerHostname")]
    pub verify_server_hostname: bool,
    /// The name servers' certificates carry (`server.<dc>.<domain>`).
    #[serde(rename = "ServerName", default)]
    pub server_name: String,
}
