//! Service identity on the wire: the CA's roots and leaf certificates, SPIFFE ids, and intentions,
//! in Consul's JSON shapes (`/v1/connect/ca/*`, `/v1/agent/connect/*`, `/v1/connect/intentions`).
//!
//! The decision of which intention applies ([`intention::decide`]) lives here because the control
//! plane (`/v1/connect/intentions/check`, `/v1/agent/connect/authorize`) and the sidecar (inbound
//! enforcement) must make it identically.

pub mod intention;
pub mod renew;

use serde::{Deserialize, Serialize};

pub use intention::{
    AuthorizeRequest, AuthorizeResponse, Decision, DefaultPolicy, Intention, IntentionAction,
    IntentionHttpHeaderPermission, IntentionHttpPermission, IntentionInput, IntentionPermission,
    Verdict, decide, governing, validate_rule, verdict,
};

/// The namespace every identity is in (Plexus has no namespaces yet; Consul's default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The SPIFFE id of `service` in datacenter `dc`:
/// `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`.
pub fn service_spiffe_id(trust_domain: &str, dc: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{DEFAULT_NAMESPACE}/dc/{dc}/svc/{service}")
}

/// A parsed service SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    /// The trust domain (the URI's host).
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Datacenter.
    pub datacenter: String,
    /// Service name.
    pub service: String,
}

impl ServiceId {
    /// Parses `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`; `None` for anything else.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next().filter(|s| !s.is_empty())?;
        let mut take = |label: &str| -> Option<String> {
            (parts.next()? == label).then_some(())?;
            parts.next().filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let namespace = take("ns")?;
        let datacenter = take("dc")?;
        let service = take("svc")?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            trust_domain: trust_domain.to_owned(),
            namespace,
            datacenter,
            service,
        })
    }
}

/// `GET /v1/connect/ca/roots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRoots {
    /// `ID` of the root that signs new leaves.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// The trust domain, e.g. `8f3c…-….plexus`.
    #[serde(rename = "TrustDomain")]
    pub trust_domain: String,
    /// Every root a peer must trust now (the active one and, during a rotation, the previous one).
    #[serde(rename = "Roots")]
    pub roots: Vec<CaRoot>,
}

impl CaRoots {
    /// The active root, if listed.
    pub fn active(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|r| r.id == self.active_root_id)
    }
}

/// One CA root, as Consul shows it (never with its private key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRoot {
    /// Colon-hex key id of the root.
    #[serde(rename = "ID")]
    pub id: String,
    /// Human name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Serial number.
    #[serde(rename = "SerialNumber")]
    pub serial_number: u64,
    /// Colon-hex key id (same as `ID`).
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    /// Provider (`consul` in Consul; here `plexus`).
    #[serde(rename = "ExternalTrustDomain")]
    pub external_trust_domain: String,
    /// Validity start (RFC 3339).
    #[serde(rename = "NotBefore")]
    pub not_before: String,
    /// Validity end (RFC 3339).
    #[serde(rename = "NotAfter")]
    pub not_after: String,
    /// The root certificate, PEM.
    #[serde(rename = "RootCert")]
    pub root_cert: String,
    /// Certificates a leaf of this root sends along: during a rotation, this root cross-signed by
    /// the previous one, so peers that only trust the previous root can still verify.
    #[serde(rename = "IntermediateCerts", default)]
    pub intermediate_certs: Vec<String>,
    /// True for the root that signs new leaves.
    #[serde(rename = "Active")]
    pub active: bool,
    /// `ec`.
    #[serde(rename = "PrivateKeyType")]
    pub private_key_type: String,
    /// 256.
    #[serde(rename = "PrivateKeyBits")]
    pub private_key_bits: u32,
    /// Store revision that created the root.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store revision that last changed the root.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// `GET/PUT /v1/connect/ca/configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfiguration {
    /// Always `plexus` (the built-in CA); accepted as `consul` too.
    #[serde(rename = "Provider", default = "default_provider")]
    pub provider: String,
    /// Provider settings.
    #[serde(rename = "Config", default)]
    pub config: CaProviderConfig,
    /// Store revision that created the configuration.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store revision that last changed it.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

fn default_provider() -> String {
    "plexus".to_owned()
}

/// The built-in CA's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaProviderConfig {
    /// Leaf lifetime as a Go duration (`72h`, `2m`); between 1 minute and 1 year.
    #[serde(
        rename = "LeafCertTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub leaf_cert_ttl: Option<String>,
    /// On a PUT: `true` asks for a new root (a rotation). Never set on a GET.
    #[serde(rename = "RotateRoot", default, skip_serializing_if = "is_false")]
    pub rotate_root: bool,
    /// Read only: the PEM of a private key is never accepted or shown; a non-empty value is
    /// refused, so a misdirected key is not silently stored.
    #[serde(
        rename = "PrivateKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `POST /v1/connect/ca/sign`: a sidecar asks for its CSR to be signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The id of the caller's registered `connect-proxy` service. Only the identity of that
    /// proxy's destination service is signed.
    #[serde(rename = "ProxyID")]
    pub proxy_id: String,
    /// The CSR, PEM (`CERTIFICATE REQUEST`), with exactly one URI SAN: the identity asked for.
    #[serde(rename = "CSR")]
    pub csr: String,
    /// Requested lifetime (Go duration); at most the configured leaf TTL. Absent: the leaf TTL.
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A signed leaf certificate, in the shape of Consul's `/v1/agent/connect/ca/leaf/:service`.
/// `Debug` leaves out the private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Serial number, colon hex.
    #[serde(rename = "SerialNumber")]
    pub serial_number: String,
    /// The leaf certificate, PEM, followed by any intermediate the peer needs (the cross-signed
    /// root during a rotation).
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// The leaf's private key: only for `/v1/agent/connect/ca/leaf/:service` (Consul's agent
    /// generates the key for its clients); empty on `/v1/connect/ca/sign`.
    #[serde(rename = "PrivateKeyPEM", default)]
    pub private_key_pem: String,
    /// Service name.
    #[serde(rename = "Service")]
    pub service: String,
    /// The SPIFFE id in the certificate.
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    /// Validity start (RFC 3339).
    #[serde(rename = "ValidAfter")]
    pub valid_after: String,
    /// Validity end (RFC 3339).
    #[serde(rename = "ValidBefore")]
    pub valid_before: String,
    /// Validity start, seconds since the Unix epoch (Plexus's addition, so clients need no
    /// RFC 3339 parser).
    #[serde(rename = "ValidAfterUnix", default)]
    pub valid_after_unix: i64,
    /// Validity end, seconds since the Unix epoch.
    #[serde(rename = "ValidBeforeUnix", default)]
    pub valid_before_unix: i64,
    /// The root that signed it.
    #[serde(rename = "RootID", default)]
    pub root_id: String,
    /// Store revision when issued.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Same as `CreateIndex`.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_number", &self.serial_number)
            .field("service", &self.service)
            .field("service_uri", &self.service_uri)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .field("root_id", &self.root_id)
            .field("private_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip() {
        let id = service_spiffe_id("abc.plexus", "dc1", "web");
        assert_eq!(id, "spiffe://abc.plexus/ns/default/dc/dc1/svc/web");
        let parsed = ServiceId::parse(&id).unwrap();
        assert_eq!(parsed.service, "web");
        assert_eq!(parsed.datacenter, "dc1");
        assert_eq!(parsed.trust_domain, "abc.plexus");
        for bad in [
            "",
            "spiffe://",
            "https://abc/ns/default/dc/dc1/svc/web",
            "spiffe://abc/ns/default/dc/dc1/svc/",
            "spiffe://abc/ns/default/dc/dc1/svc/web/extra",
            "spiffe://abc/ns/default/svc/web",
            "spiffe:///ns/default/dc/dc1/svc/web",
        ] {
            assert_eq!(ServiceId::parse(bad), None, "{bad:?}");
        }
    }
}
