//! TLS certificates for the control plane itself, from the built-in CA: a server's HTTPS
//! certificate (SANs `server.<dc>.<domain>`, `localhost`, configured names and addresses) and an
//! agent's certificate from its CSR (`auto_encrypt`).
//!
//! Agent policy ([`decide_agent`], pure): the CSR asks for exactly one URI SAN, the agent SPIFFE
//! id of the node it signs for; DNS names and IP addresses may be added, but never a server's
//! name (`server.<dc>.<domain>` or below: an agent must not pass for a server to clients that
//! check it); no CA flag. Lifetime: the CA's leaf TTL.

use std::net::IpAddr;
use std::time::Duration;

use plexus_api::Indexed;
use plexus_api::auto_encrypt::agent_spiffe_id;
use plexus_api::connect::IssuedCert;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use tracing::info;

use super::x509::{colon_hex, issuer, pem_der, random_serial, rfc3339, unix_now};
use super::{CaError, CertificateAuthority, LEAF_BACKDATE, SecretPem, format_duration};

/// The names a server's HTTPS certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl ServerNames {
    /// `server.<dc>.<domain>`, `localhost`, 127.0.0.1 and ::1, plus `extra_dns` and `extra_ips`.
    pub fn for_server(
        datacenter: &str,
        domain: &str,
        extra_dns: &[String],
        extra_ips: &[IpAddr],
    ) -> Self {
        let mut names = Self {
            dns: vec![server_name(datacenter, domain), "localhost".to_owned()],
            ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        };
        for dns in extra_dns {
            if !names.dns.contains(dns) {
                names.dns.push(dns.clone());
            }
        }
        for ip in extra_ips {
            if !ip.is_unspecified() && !names.ips.contains(ip) {
                names.ips.push(*ip);
            }
        }
        names
    }
}

/// The name every server's certificate carries: `server.<dc>.<domain>` (Consul's).
pub fn server_name(datacenter: &str, domain: &str) -> String {
    format!("server.{datacenter}.{}", domain.trim_end_matches('.'))
}

/// A certificate and its key, for a TLS listener or client.
#[derive(Debug, Clone)]
pub struct TlsCertificate {
    /// The certificate, PEM, followed by the cross-signed root during a rotation.
    pub cert_pem: String,
    /// Its private key.
    pub key: SecretPem,
    /// The active root's id when it was signed.
    pub root_id: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
}

impl TlsCertificate {
    /// The key, PEM (for building a TLS configuration; never log it).
    pub fn key_pem(&self) -> &str {
        &self.key.0
    }

    /// When to renew: half-way through its life.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) / 2
    }
}

/// What an agent's CSR asks for, as parsed at the boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCsr {
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// SANs of other kinds (e-mail, …).
    pub other_names: usize,
    /// Basic constraints `CA:TRUE`.
    pub wants_ca: bool,
}

/// Why an agent's CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    /// Not exactly one URI SAN.
    #[error(
        "the CSR must ask for exactly one URI SAN, the agent's SPIFFE id ({expected}); it asks for {count}"
    )]
    Identity {
        /// How many URI SANs.
        count: usize,
        /// The one expected.
        expected: String,
    },
    /// Another node's identity.
    #[error("the CSR asks for {requested:?}, but this agent may only have {expected:?}")]
    NotEntitled {
        /// Requested.
        requested: String,
        /// Entitled.
        expected: String,
    },
    /// A server's name.
    #[error("agent certificates may not carry a server's name ({name:?})")]
    ServerName {
        /// The name.
        name: String,
    },
    /// SANs other than URI, DNS and IP.
    #[error("the CSR asks for {count} name(s) that are not URIs, DNS names or IP addresses")]
    OtherNames {
        /// How many.
        count: usize,
    },
    /// A CA certificate.
    #[error("the CSR asks for a CA certificate; only leaf certificates are signed")]
    WantsCa,
}

/// Whether two agent SPIFFE ids name the same agent, whatever their trust domains: an agent
/// does not know the trust domain before its first certificate, so (as Consul's agents do) it
/// asks with a placeholder, and the certificate carries the real one.
fn same_agent(requested: &str, expected: &str) -> bool {
    let path = |uri: &str| {
        uri.strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, path)| path.to_owned())
    };
    matches!((path(requested), path(expected)), (Some(a), Some(b)) if a == b)
}

/// The agent-certificate decision: the names to sign, or why not. The agent SPIFFE id may be
/// asked for under any trust domain; the certificate carries `expected_uri`.
pub fn decide_agent(
    csr: &AgentCsr,
    expected_uri: &str,
    server_name: &str,
) -> Result<ServerNames, AgentRefusal> {
    if csr.wants_ca {
        return Err(AgentRefusal::WantsCa);
    }
    match csr.uris.as_slice() {
        [one] if same_agent(one, expected_uri) => {}
        [one] => {
            return Err(AgentRefusal::NotEntitled {
                requested: one.clone(),
                expected: expected_uri.to_owned(),
            });
        }
        many => {
            return Err(AgentRefusal::Identity {
                count: many.len(),
                expected: expected_uri.to_owned(),
            });
        }
    }
    if csr.other_names > 0 {
        return Err(AgentRefusal::OtherNames {
            count: csr.other_names,
        });
    }
    let server_name = server_name.to_ascii_lowercase();
    if let Some(name) = csr.dns.iter().find(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == server_name || name.ends_with(&format!(".{server_name}"))
    }) {
        return Err(AgentRefusal::ServerName { name: name.clone() });
    }
    Ok(ServerNames {
        dns: csr.dns.clone(),
        ips: csr.ips.clone(),
    })
}

impl CertificateAuthority {
    /// A fresh key and an HTTPS server certificate for `names`, valid for the leaf TTL.
    pub async fn server_certificate(&self, names: &ServerNames) -> Result<TlsCertificate, CaError> {
        let (state, _) = self.state().await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Crypto)?;
        let ttl = Duration::from_secs(state.leaf_ttl_secs);
        let (cert_pem, root_id, not_before, not_after, _) =
            self.sign_tls(&state, "plexus server", None, names, &key, ttl)?;
        info!(dns = ?names.dns, ips = ?names.ips, ttl = %format_duration(ttl), "issued the HTTPS server certificate");
        Ok(TlsCertificate {
            cert_pem,
            key: SecretPem(key.serialize_pem()),
            root_id,
            not_before,
            not_after,
        })
    }

    /// Signs an agent's CSR (`auto_encrypt`) for `node`, after [`decide_agent`].
    pub async fn sign_agent(
        &self,
        node: &str,
        csr_pem: &str,
        domain: &str,
    ) -> Result<Indexed<IssuedCert>, CaError> {
        let bad = |message: String, field: &'static str| CaError::BadRequest { message, field };
        if let Err(error) = check_node_name(node) {
            return Err(bad(error, "Node"));
        }
        self.limit(&format!("agent:{node}"))?;
        let (csr, public_key) = parse_agent_csr(csr_pem)?;
        let (state, kv) = self.state().await?;
        let expected = agent_spiffe_id(&state.trust_domain, &self.datacenter, node);
        let server_name = server_name(&self.datacenter, domain);
        let names = decide_agent(&csr, &expected, &server_name).map_err(CaError::Agent)?;
        let mut names_with_local = ServerNames::for_server("", "", &[], &[]);
        names_with_local.dns.retain(|d| d == "localhost");
        for dns in names.dns {
            if !names_with_local.dns.contains(&dns) {
                names_with_local.dns.push(dns);
            }
        }
        for ip in names.ips {
            if !names_with_local.ips.contains(&ip) {
                names_with_local.ips.push(ip);
            }
        }
        let ttl = Duration::from_secs(state.leaf_ttl_secs);
        let (cert_pem, root_id, not_before, not_after, serial) = self.sign_tls(
            &state,
            node,
            Some(&expected),
            &names_with_local,
            &public_key,
            ttl,
        )?;
        self.metrics.signed.inc();
        info!(node, spiffe_id = %expected, ttl = %format_duration(ttl), "signed an agent certificate (auto_encrypt)");
        Ok(Indexed {
            index: kv.store,
            value: IssuedCert {
                serial_number: colon_hex(&serial.to_be_bytes()),
                cert_pem,
                private_key_pem: String::new(),
                service: String::new(),
                service_uri: expected,
                valid_after: rfc3339(not_before),
                valid_before: rfc3339(not_after),
                valid_after_unix: not_before,
                valid_before_unix: not_after,
                root_id,
                create_index: kv.store,
                modify_index: kv.store,
            },
        })
    }

    /// Every trusted root, PEM, active first.
    pub async fn roots_pem(&self) -> Result<String, CaError> {
        let roots = self.roots().await?.value;
        let mut ordered: Vec<_> = roots.roots.iter().filter(|r| r.active).collect();
        ordered.extend(roots.roots.iter().filter(|r| !r.active));
        Ok(ordered.iter().map(|r| r.root_cert.as_str()).collect())
    }

    /// Signs a TLS certificate (server and client use) for `names` (and `uri`).
    fn sign_tls(
        &self,
        state: &super::CaState,
        common_name: &str,
        uri: Option<&str>,
        names: &ServerNames,
        public_key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<(String, String, i64, i64, u64), CaError> {
        let active = state.active()?;
        let by = issuer(active, &state.trust_domain, self.kek.as_ref())?;
        let now = unix_now() as i64;
        let not_before = now - LEAF_BACKDATE.as_secs() as i64;
        let not_after = now + ttl.as_secs() as i64;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        if let Some(uri) = uri {
            sans.push(SanType::URI(
                uri.to_owned().try_into().map_err(CaError::Crypto)?,
            ));
        }
        for dns in &names.dns {
            sans.push(SanType::DnsName(
                dns.clone().try_into().map_err(CaError::Crypto)?,
            ));
        }
        sans.extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from(serial));
        let at = |unix: i64| {
            OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::Corrupt {
                what: "clock out of range",
            })
        };
        params.not_before = at(not_before)?;
        params.not_after = at(not_after)?;
        let cert = params
            .signed_by(public_key, &by.cert, &by.key)
            .map_err(CaError::Crypto)?;
        let mut cert_pem = cert.pem();
        if let Some(cross) = &active.cross_signed_pem {
            cert_pem.push_str(cross);
        }
        Ok((cert_pem, active.id.clone(), not_before, not_after, serial))
    }
}

/// A node name goes into a URI: letters, digits, `-`, `_` and `.`, 1 to 128 of them.
fn check_node_name(node: &str) -> Result<(), String> {
    let valid = !node.is_empty()
        && node.len() <= 128
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "node name {node:?} must be 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Reads an agent CSR's names and public key, checking its signature.
fn parse_agent_csr(pem: &str) -> Result<(AgentCsr, rcgen::PublicKey), CaError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let bad = |message: String| CaError::BadRequest {
        message,
        field: "CSR",
    };
    let der = pem_der(pem).ok_or_else(|| bad("CSR is not a PEM \"CERTIFICATE REQUEST\"".into()))?;
    let (_, request) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|error| bad(format!("CSR does not parse: {error}")))?;
    request
        .verify_signature()
        .map_err(|_| bad("CSR signature does not verify".into()))?;
    let mut csr = AgentCsr::default();
    for extension in request.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => csr.uris.push((*uri).to_owned()),
                        GeneralName::DNSName(dns) => csr.dns.push((*dns).to_owned()),
                        GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                            Some(ip) => csr.ips.push(ip),
                            None => csr.other_names += 1,
                        },
                        _ => csr.other_names += 1,
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => csr.wants_ca = true,
            _ => {}
        }
    }
    if csr.wants_ca {
        return Err(CaError::Agent(AgentRefusal::WantsCa));
    }
    let public_key = rcgen::CertificateSigningRequestParams::from_der(&der.into())
        .map_err(|error| bad(format!("CSR is not usable: {error}")))?
        .public_key;
    Ok((csr, public_key))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    const ID: &str = "spiffe://td/agent/client/dc/dc1/id/n1";
    const SERVER: &str = "server.dc1.consul";

    fn csr(uris: &[&str], dns: &[&str]) -> AgentCsr {
        AgentCsr {
            uris: uris.iter().map(|s| (*s).to_owned()).collect(),
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            ..AgentCsr::default()
        }
    }

    #[test]
    fn an_agent_gets_its_own_identity_and_names_only() {
        let names = decide_agent(&csr(&[ID], &["n1.example"]), ID, SERVER).unwrap();
        assert_eq!(names.dns, ["n1.example"]);
        // A placeholder trust domain is fine: the agent cannot know the real one yet.
        let placeholder = "spiffe://placeholder.invalid/agent/client/dc/dc1/id/n1";
        assert!(decide_agent(&csr(&[placeholder], &[]), ID, SERVER).is_ok());
        assert!(
            decide_agent(
                &csr(&["https://td/agent/client/dc/dc1/id/n1"], &[]),
                ID,
                SERVER
            )
            .is_err()
        );
        assert!(matches!(
            decide_agent(
                &csr(&["spiffe://td/agent/client/dc/dc1/id/n2"], &[]),
                ID,
                SERVER
            ),
            Err(AgentRefusal::NotEntitled { .. })
        ));
        assert!(matches!(
            decide_agent(&csr(&[], &[]), ID, SERVER),
            Err(AgentRefusal::Identity { count: 0, .. })
        ));
        assert!(matches!(
            decide_agent(&csr(&[ID, ID], &[]), ID, SERVER),
            Err(AgentRefusal::Identity { count: 2, .. })
        ));
        for server in [
            "server.dc1.consul",
            "SERVER.dc1.consul.",
            "a.server.dc1.consul",
        ] {
            assert!(
                matches!(
                    decide_agent(&csr(&[ID], &[server]), ID, SERVER),
                    Err(AgentRefusal::ServerName { .. })
                ),
                "{server}"
            );
        }
        let ca = AgentCsr {
            wants_ca: true,
            ..csr(&[ID], &[])
        };
        assert_eq!(decide_agent(&ca, ID, SERVER), Err(AgentRefusal::WantsCa));
    }

    proptest! {
        /// Whatever the CSR holds, a signed agent certificate names exactly the expected
        /// identity and never a server.
        #[test]
        fn never_another_identity_nor_a_server_name(
            uris in proptest::collection::vec(prop_oneof![Just(ID.to_owned()), "[a-z:/]{0,12}"], 0..3),
            dns in proptest::collection::vec(prop_oneof![Just(SERVER.to_owned()), "[a-z.]{1,20}"], 0..3),
        ) {
            let request = AgentCsr { uris: uris.clone(), dns: dns.clone(), ..AgentCsr::default() };
            if let Ok(names) = decide_agent(&request, ID, SERVER) {
                prop_assert_eq!(uris.len(), 1);
                prop_assert!(uris[0].ends_with("/agent/client/dc/dc1/id/n1"));
                prop_assert!(names.dns.iter().all(|d| !d.ends_with(SERVER)));
            }
        }
    }
}
