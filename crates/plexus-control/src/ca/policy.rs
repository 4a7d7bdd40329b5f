//! The signing policy: a pure function of what a CSR asks for and what the caller is entitled to.
//!
//! Trust model: a caller names its registered `connect-proxy` service; it is entitled to exactly
//! one identity, the SPIFFE id of that proxy's destination service. The CSR must ask for that
//! identity and nothing else (exactly one URI SAN, no other names, no CA flag), and the lifetime
//! must lie within [`MIN_LEAF_TTL`] and the configured leaf TTL. The certificate is built from
//! this decision, never from the CSR's other contents.

use std::time::Duration;

/// The shortest leaf lifetime that may be configured or requested.
pub const MIN_LEAF_TTL: Duration = Duration::from_secs(60);
/// The longest leaf lifetime that may be configured (one year).
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The default leaf lifetime (Consul's): 72 hours.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

/// What a CSR asks for, as parsed at the boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrRequest {
    /// Every URI SAN requested.
    pub uris: Vec<String>,
    /// Every DNS SAN requested.
    pub dns_names: Vec<String>,
    /// How many other SANs (IPs, e-mail addresses, …) are requested.
    pub other_names: usize,
    /// True when the CSR asks for a CA certificate (basic constraints `CA:TRUE`).
    pub wants_ca: bool,
}

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No URI SAN: no identity was requested.
    #[error("the CSR has no URI SAN; it must ask for exactly one SPIFFE id")]
    NoIdentity,
    /// Several URI SANs.
    #[error("the CSR has {count} URI SANs; it must ask for exactly one SPIFFE id")]
    SeveralIdentities {
        /// How many.
        count: usize,
    },
    /// DNS, IP or other names besides the identity.
    #[error("the CSR asks for {count} name(s) besides the SPIFFE id; only one URI SAN is signed")]
    OtherNames {
        /// How many.
        count: usize,
    },
    /// The CSR asks to be a CA.
    #[error("the CSR asks for a CA certificate; only leaf certificates are signed")]
    WantsCa,
    /// A DNS name the caller may not have (only an ingress gateway may, for its TLS hosts).
    #[error(
        "the CSR asks for DNS name {requested:?}, which the caller may not have (allowed: {allowed:?})"
    )]
    DnsNotAllowed {
        /// Requested name.
        requested: String,
        /// What the caller may have.
        allowed: Vec<String>,
    },
    /// The identity is not the caller's.
    #[error("the CSR asks for {requested:?}, but the caller may only have {entitled:?}")]
    NotEntitled {
        /// Requested SPIFFE id.
        requested: String,
        /// The one the caller is entitled to.
        entitled: String,
    },
    /// The requested lifetime is longer than the configured leaf TTL.
    #[error("the requested lifetime {requested:?} is longer than the leaf TTL {max:?}")]
    TooLong {
        /// Requested.
        requested: Duration,
        /// The configured leaf TTL.
        max: Duration,
    },
    /// The requested lifetime is shorter than [`MIN_LEAF_TTL`].
    #[error("the requested lifetime {requested:?} is shorter than the minimum {min:?}")]
    TooShort {
        /// Requested.
        requested: Duration,
        /// [`MIN_LEAF_TTL`].
        min: Duration,
    },
}

impl Refusal {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoIdentity => "no_identity",
            Refusal::SeveralIdentities { .. } => "several_identities",
            Refusal::OtherNames { .. } => "other_names",
            Refusal::DnsNotAllowed { .. } => "dns_not_allowed",
            Refusal::WantsCa => "wants_ca",
            Refusal::NotEntitled { .. } => "not_entitled",
            Refusal::TooLong { .. } => "ttl_too_long",
            Refusal::TooShort { .. } => "ttl_too_short",
        }
    }
}

/// What will be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The one URI SAN of the certificate.
    pub spiffe_id: String,
    /// DNS SANs (an ingress gateway's TLS hosts; empty for every other caller).
    pub dns_names: Vec<String>,
    /// Its lifetime.
    pub ttl: Duration,
}

/// Decides whether to sign: the caller `entitled` to one SPIFFE id asks for `csr` with an
/// optional lifetime; `leaf_ttl` is the configured lifetime (and the longest one granted).
pub fn decide(
    csr: &CsrRequest,
    entitled: &str,
    requested_ttl: Option<Duration>,
    leaf_ttl: Duration,
) -> Result<Grant, Refusal> {
    decide_with_dns(csr, entitled, &[], requested_ttl, leaf_ttl)
}

/// [`decide`], where the caller may also have the DNS names in `allowed_dns` (an ingress
/// gateway: the hosts of its TLS listeners). Every DNS name asked for must be one of them.
pub fn decide_with_dns(
    csr: &CsrRequest,
    entitled: &str,
    allowed_dns: &[String],
    requested_ttl: Option<Duration>,
    leaf_ttl: Duration,
) -> Result<Grant, Refusal> {
    if csr.wants_ca {
        return Err(Refusal::WantsCa);
    }
    let requested = match csr.uris.as_slice() {
        [] => return Err(Refusal::NoIdentity),
        [one] => one,
        many => return Err(Refusal::SeveralIdentities { count: many.len() }),
    };
    if csr.other_names > 0 || (allowed_dns.is_empty() && !csr.dns_names.is_empty()) {
        return Err(Refusal::OtherNames {
            count: csr.other_names + csr.dns_names.len(),
        });
    }
    if let Some(name) = csr
        .dns_names
        .iter()
        .find(|name| !allowed_dns.iter().any(|a| a.eq_ignore_ascii_case(name)))
    {
        return Err(Refusal::DnsNotAllowed {
            requested: name.clone(),
            allowed: allowed_dns.to_vec(),
        });
    }
    if requested != entitled {
        return Err(Refusal::NotEntitled {
            requested: requested.clone(),
            entitled: entitled.to_owned(),
        });
    }
    let ttl = requested_ttl.unwrap_or(leaf_ttl);
    if ttl > leaf_ttl {
        return Err(Refusal::TooLong {
            requested: ttl,
            max: leaf_ttl,
        });
    }
    if ttl < MIN_LEAF_TTL {
        return Err(Refusal::TooShort {
            requested: ttl,
            min: MIN_LEAF_TTL,
        });
    }
    Ok(Grant {
        spiffe_id: requested.clone(),
        dns_names: csr.dns_names.clone(),
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WEB: &str = "spiffe://td/ns/default/dc/dc1/svc/web";

    fn csr(uris: &[&str]) -> CsrRequest {
        CsrRequest {
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            ..CsrRequest::default()
        }
    }

    #[test]
    fn the_entitled_identity_is_signed_for_the_leaf_ttl() {
        let grant = decide(&csr(&[WEB]), WEB, None, DEFAULT_LEAF_TTL).unwrap();
        assert_eq!(grant.spiffe_id, WEB);
        assert_eq!(grant.ttl, DEFAULT_LEAF_TTL);
        let short = Duration::from_secs(120);
        assert_eq!(
            decide(&csr(&[WEB]), WEB, Some(short), DEFAULT_LEAF_TTL)
                .unwrap()
                .ttl,
            short
        );
    }

    #[test]
    fn every_violation_is_refused_with_its_reason() {
        let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
        let db = "spiffe://td/ns/default/dc/dc1/svc/db";
        let cases = [
            (csr(&[]), None, "no_identity"),
            (csr(&[WEB, db]), None, "several_identities"),
            (csr(&[db]), None, "not_entitled"),
            (
                CsrRequest {
                    wants_ca: true,
                    ..csr(&[WEB])
                },
                None,
                "wants_ca",
            ),
            (
                CsrRequest {
                    other_names: 1,
                    ..csr(&[WEB])
                },
                None,
                "other_names",
            ),
            (csr(&[WEB]), Some(ten_years), "ttl_too_long"),
            (csr(&[WEB]), Some(Duration::from_secs(5)), "ttl_too_short"),
        ];
        for (request, ttl, reason) in cases {
            let refusal = decide(&request, WEB, ttl, DEFAULT_LEAF_TTL).unwrap_err();
            assert_eq!(refusal.reason(), reason, "{refusal}");
        }
    }

    proptest! {
        /// Whatever is asked, a grant is only ever for the entitled identity, within bounds.
        #[test]
        fn grants_never_exceed_the_entitlement(
            uris in proptest::collection::vec(prop_oneof![Just(WEB.to_owned()), "spiffe://[a-z/]{0,20}"], 0..4),
            other_names in 0usize..3,
            dns_names in proptest::collection::vec(prop_oneof![Just("web.example.com".to_owned()), "[a-z]{1,8}\\.test"], 0..3),
            allowed_dns in proptest::collection::vec(prop_oneof![Just("web.example.com".to_owned()), "[a-z]{1,8}\\.test"], 0..2),
            wants_ca: bool,
            ttl in proptest::option::of(0u64..(20 * 365 * 24 * 3600)),
            leaf_ttl in 60u64..(365 * 24 * 3600),
        ) {
            let request = CsrRequest { uris: uris.clone(), dns_names: dns_names.clone(), other_names, wants_ca };
            let leaf_ttl = Duration::from_secs(leaf_ttl);
            if let Ok(grant) = decide_with_dns(&request, WEB, &allowed_dns, ttl.map(Duration::from_secs), leaf_ttl) {
                prop_assert_eq!(&grant.spiffe_id, WEB);
                prop_assert_eq!(uris.len(), 1);
                prop_assert!(!wants_ca);
                prop_assert_eq!(other_names, 0);
                prop_assert!(grant.ttl <= leaf_ttl && grant.ttl >= MIN_LEAF_TTL);
                prop_assert!(grant.dns_names.iter().all(|name| allowed_dns.contains(name)));
            }
            // Without allowed names (every caller but an ingress gateway), none is signed.
            if let Ok(grant) = decide(&request, WEB, ttl.map(Duration::from_secs), leaf_ttl) {
                prop_assert!(grant.dns_names.is_empty());
            }
        }
    }
}
