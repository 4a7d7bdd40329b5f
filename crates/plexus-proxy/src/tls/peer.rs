//! What a peer's leaf certificate must be, as a pure function of its parsed facts.

use plexus_api::connect::ServiceId;

/// The facts about a peer's leaf certificate that the checks look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeafFacts {
    /// Every URI SAN.
    pub uris: Vec<String>,
    /// True when basic constraints say `CA:TRUE`.
    pub is_ca: bool,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
}

/// Why a peer's certificate is refused. [`PeerRefusal::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerRefusal {
    /// The certificate does not parse.
    #[error("the peer certificate does not parse")]
    Malformed,
    /// A CA certificate presented as a leaf.
    #[error("the peer certificate is a CA certificate")]
    CaFlag,
    /// Not exactly one URI SAN.
    #[error("the peer certificate has {0} URI SANs; exactly one is required")]
    UriSanCount(usize),
    /// The URI SAN is not a service SPIFFE id.
    #[error("the peer's URI SAN {0:?} is not a service SPIFFE id")]
    NotSpiffe(String),
    /// Another trust domain.
    #[error("the peer is in trust domain {found:?}, not {expected:?}")]
    ForeignTrustDomain {
        /// Found.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Outbound: not the service the catalog says is there.
    #[error("the peer is {found:?}, but {expected:?} was expected")]
    WrongIdentity {
        /// Found.
        found: String,
        /// Expected.
        expected: String,
    },
    /// Expired or not yet valid.
    #[error("the peer certificate is not valid now (valid {not_before}..{not_after}, now {now})")]
    Expired {
        /// Validity start.
        not_before: i64,
        /// Validity end.
        not_after: i64,
        /// Now.
        now: i64,
    },
    /// The chain does not lead to a trusted root (another CA, a forged chain, …).
    #[error("the peer certificate does not chain to a trusted root: {0}")]
    UntrustedChain(String),
}

impl PeerRefusal {
    /// A short, bounded label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            PeerRefusal::Malformed => "malformed_certificate",
            PeerRefusal::CaFlag => "ca_certificate",
            PeerRefusal::UriSanCount(_) => "uri_san_count",
            PeerRefusal::NotSpiffe(_) => "not_spiffe",
            PeerRefusal::ForeignTrustDomain { .. } => "foreign_trust_domain",
            PeerRefusal::WrongIdentity { .. } => "wrong_identity",
            PeerRefusal::Expired { .. } => "expired",
            PeerRefusal::UntrustedChain(_) => "untrusted_chain",
        }
    }
}

/// Checks a peer leaf: not a CA, exactly one URI SAN, a service SPIFFE id of `trust_domain`,
/// valid at `now`, and (outbound) exactly `expected`. Returns the peer's identity.
pub(crate) fn check(
    facts: &LeafFacts,
    trust_domain: &str,
    expected: Option<&str>,
    now: i64,
) -> Result<ServiceId, PeerRefusal> {
    if facts.is_ca {
        return Err(PeerRefusal::CaFlag);
    }
    let uri = match facts.uris.as_slice() {
        [one] => one,
        other => return Err(PeerRefusal::UriSanCount(other.len())),
    };
    if now < facts.not_before || now >= facts.not_after {
        return Err(PeerRefusal::Expired {
            not_before: facts.not_before,
            not_after: facts.not_after,
            now,
        });
    }
    let id = ServiceId::parse(uri).ok_or_else(|| PeerRefusal::NotSpiffe(uri.clone()))?;
    if id.trust_domain != trust_domain {
        return Err(PeerRefusal::ForeignTrustDomain {
            found: id.trust_domain,
            expected: trust_domain.to_owned(),
        });
    }
    if let Some(expected) = expected
        && uri != expected
    {
        return Err(PeerRefusal::WrongIdentity {
            found: uri.clone(),
            expected: expected.to_owned(),
        });
    }
    Ok(id)
}

/// Parses the facts out of a DER certificate.
pub(crate) fn facts(der: &[u8]) -> Result<LeafFacts, PeerRefusal> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| PeerRefusal::Malformed)?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    } else if cert.subject_alternative_name().is_err() {
        return Err(PeerRefusal::Malformed);
    }
    Ok(LeafFacts {
        uris,
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WEB: &str = "spiffe://td/ns/default/dc/dc1/svc/web";

    fn leaf(uris: &[&str]) -> LeafFacts {
        LeafFacts {
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            is_ca: false,
            not_before: 100,
            not_after: 200,
        }
    }

    #[test]
    fn each_defect_has_its_reason() {
        assert_eq!(
            check(&leaf(&[WEB]), "td", Some(WEB), 150).unwrap().service,
            "web"
        );
        let cases = [
            (
                LeafFacts {
                    is_ca: true,
                    ..leaf(&[WEB])
                },
                "ca_certificate",
            ),
            (leaf(&[]), "uri_san_count"),
            (leaf(&[WEB, WEB]), "uri_san_count"),
            (leaf(&["https://web"]), "not_spiffe"),
            (
                leaf(&["spiffe://other/ns/default/dc/dc1/svc/web"]),
                "foreign_trust_domain",
            ),
            (
                leaf(&["spiffe://td/ns/default/dc/dc1/svc/db"]),
                "wrong_identity",
            ),
            (
                LeafFacts {
                    not_after: 120,
                    ..leaf(&[WEB])
                },
                "expired",
            ),
        ];
        for (facts, reason) in cases {
            assert_eq!(
                check(&facts, "td", Some(WEB), 150).unwrap_err().reason(),
                reason
            );
        }
    }

    proptest! {
        /// Whatever the certificate says, an accepted peer has exactly one URI SAN in our trust
        /// domain, is not a CA, is valid now, and is the expected identity when one is given.
        #[test]
        fn accepted_peers_meet_every_rule(
            uris in proptest::collection::vec(prop_oneof![Just(WEB.to_owned()), "spiffe://td/ns/default/dc/dc1/svc/[a-z]{1,3}", ".{0,20}"], 0..3),
            is_ca: bool,
            not_before in 0i64..300,
            span in 0i64..300,
            now in 0i64..600,
            expect: bool,
        ) {
            let facts = LeafFacts { uris: uris.clone(), is_ca, not_before, not_after: not_before + span };
            if let Ok(id) = check(&facts, "td", expect.then_some(WEB), now) {
                prop_assert!(!is_ca);
                prop_assert_eq!(uris.len(), 1);
                prop_assert_eq!(id.trust_domain, "td");
                prop_assert!(now >= not_before && now < not_before + span);
                if expect { prop_assert_eq!(&uris[0], WEB); }
            }
        }
    }
}
