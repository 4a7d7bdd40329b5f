//! Certificates: roots (self-signed and cross-signed), leaves built from a signing decision, and
//! CSR parsing. Private keys are handled here only as [`SecretPem`] or rcgen key pairs.

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::policy::{CsrRequest, Grant, Refusal};
use super::wrap::{KeyEncryptionKey, StoredKey};
use super::{CaError, LEAF_BACKDATE, ROOT_VALIDITY, SecretPem, StoredRoot};

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(super) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(super) fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn random_trust_domain() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}.plexus",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A positive random serial number that fits in 63 bits.
pub(super) fn random_serial() -> u64 {
    rand::random::<u64>() >> 1 | 1
}

pub(super) fn root_params(
    root: &StoredRoot,
    trust_domain: &str,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, root.common_name.clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(CaError::Crypto)?,
    )];
    params.not_before =
        OffsetDateTime::from_unix_timestamp(root.not_before).map_err(|_| CaError::Corrupt {
            what: "root validity start",
        })?;
    params.not_after =
        OffsetDateTime::from_unix_timestamp(root.not_after).map_err(|_| CaError::Corrupt {
            what: "root validity end",
        })?;
    params.serial_number = Some(SerialNumber::from(root.serial));
    Ok(params)
}

/// A root that can sign: its certificate (as an issuer) and key.
pub(super) struct Issuer {
    pub(super) cert: rcgen::Certificate,
    pub(super) key: KeyPair,
}

pub(super) fn issuer(
    root: &StoredRoot,
    trust_domain: &str,
    kek: Option<&KeyEncryptionKey>,
) -> Result<Issuer, CaError> {
    let pem = root.key.open(&root.id, kek)?;
    let key = KeyPair::from_pem(&pem.0).map_err(|_| CaError::Corrupt {
        what: "a root private key",
    })?;
    let cert = root_params(root, trust_domain)?
        .self_signed(&key)
        .map_err(CaError::Crypto)?;
    Ok(Issuer { cert, key })
}

/// Creates a root; with `previous`, also this root cross-signed by it.
pub(super) fn new_root(
    trust_domain: &str,
    previous: Option<&StoredRoot>,
    index: usize,
    kek: Option<&KeyEncryptionKey>,
) -> Result<StoredRoot, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Crypto)?;
    let now = unix_now() as i64;
    let serial = random_serial();
    let mut root = StoredRoot {
        id: String::new(),
        name: format!("Plexus CA Primary Cert {index}"),
        serial,
        common_name: format!("Plexus CA {index} {serial:x}"),
        cert_pem: String::new(),
        key: StoredKey::Plain(SecretPem(String::new())),
        not_before: now - LEAF_BACKDATE.as_secs() as i64,
        not_after: now + ROOT_VALIDITY.as_secs() as i64,
        cross_signed_pem: None,
    };
    let params = root_params(&root, trust_domain)?;
    let cert = params.clone().self_signed(&key).map_err(CaError::Crypto)?;
    root.id = colon_hex(&cert.key_identifier());
    root.cert_pem = cert.pem();
    root.key = StoredKey::seal(SecretPem(key.serialize_pem()), &root.id, kek)?;
    if let Some(previous) = previous {
        let by = issuer(previous, trust_domain, kek)?;
        let mut cross = params;
        cross.use_authority_key_identifier_extension = true;
        let cross = cross
            .signed_by(&key, &by.cert, &by.key)
            .map_err(CaError::Crypto)?;
        root.cross_signed_pem = Some(cross.pem());
    }
    Ok(root)
}

/// Reads what a CSR asks for and its public key, checking its signature.
pub(super) fn parse_csr(pem: &str) -> Result<(CsrRequest, rcgen::PublicKey), CaError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let bad = |message: String| CaError::BadRequest {
        message,
        field: "CSR",
    };
    let der = pem_der(pem).ok_or_else(|| bad("CSR is not a PEM \"CERTIFICATE REQUEST\"".into()))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|error| bad(format!("CSR does not parse: {error}")))?;
    csr.verify_signature()
        .map_err(|_| bad("CSR signature does not verify".into()))?;
    let mut request = CsrRequest::default();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => request.uris.push((*uri).to_owned()),
                        GeneralName::DNSName(name) => request.dns_names.push((*name).to_owned()),
                        _ => request.other_names += 1,
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => request.wants_ca = true,
            _ => {}
        }
    }
    // rcgen reads the public key (it also refuses extensions it does not know; the policy
    // above has already looked at the ones that matter).
    let public_key = match CertificateSigningRequestParams::from_der(&der.clone().into()) {
        Ok(params) => params.public_key,
        Err(_) if request.wants_ca => return Err(Refusal::WantsCa.into()),
        Err(error) => return Err(bad(format!("CSR is not usable: {error}"))),
    };
    Ok((request, public_key))
}

/// The DER inside the first PEM block labelled `CERTIFICATE REQUEST`.
pub(super) fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let parsed = ::pem::parse(pem).ok()?;
    (parsed.tag() == "CERTIFICATE REQUEST" || parsed.tag() == "NEW CERTIFICATE REQUEST")
        .then(|| parsed.contents().to_vec())
}

pub(super) fn leaf_params(
    grant: &Grant,
    service: &str,
) -> Result<(CertificateParams, i64, i64, u64), CaError> {
    let now = unix_now() as i64;
    let not_before = now - LEAF_BACKDATE.as_secs() as i64;
    let not_after = now + grant.ttl.as_secs() as i64;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, service);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        grant
            .spiffe_id
            .clone()
            .try_into()
            .map_err(CaError::Crypto)?,
    )];
    for name in &grant.dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            name.clone().try_into().map_err(CaError::Crypto)?,
        ));
    }
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
    params.not_before =
        OffsetDateTime::from_unix_timestamp(not_before).map_err(|_| CaError::Corrupt {
            what: "clock out of range",
        })?;
    params.not_after =
        OffsetDateTime::from_unix_timestamp(not_after).map_err(|_| CaError::Corrupt {
            what: "clock out of range",
        })?;
    Ok((params, not_before, not_after, serial))
}
