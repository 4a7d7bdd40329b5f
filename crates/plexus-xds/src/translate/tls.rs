//! SDS secrets (the leaf with its key, the roots) and the TLS contexts that name them.
//!
//! Every TLS context takes its certificate and its trust anchors from SDS, so a renewed leaf or
//! a rotated root reaches Envoy as one secret update: new handshakes use it, open connections
//! are left alone, nothing restarts.

use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    secret, subject_alt_name_matcher, tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{LEAF_SECRET, ROOTS_SECRET, ads, regex_literal};
use crate::model::Inputs;
use crate::resources::any;

const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The two secrets: `leaf` (certificate chain and key) and `roots` (every trusted root).
pub(super) fn secrets(inputs: &Inputs) -> Vec<Secret> {
    let roots: Vec<&str> = inputs
        .roots
        .roots
        .iter()
        .map(|root| root.root_cert.trim_end())
        .collect();
    vec![
        Secret {
            name: LEAF_SECRET.to_owned(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&inputs.leaf.cert_pem)),
                private_key: Some(inline(&inputs.leaf.key_pem)),
                ..Default::default()
            })),
        },
        Secret {
            name: ROOTS_SECRET.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&format!("{}\n", roots.join("\n")))),
                    ..Default::default()
                },
            )),
        },
    ]
}

fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

/// TLS 1.3 only, like the built-in proxy.
fn tls13() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
        tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// Leaf and roots from SDS, peers' URI SANs checked by `san`.
fn common(alpn: &str, san: StringMatcher) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(tls13()),
        tls_certificate_sds_secret_configs: vec![sds(LEAF_SECRET)],
        alpn_protocols: vec![alpn.to_owned()],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(san),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOTS_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// Client side: present our leaf, require the server to be exactly `spiffe_id`.
pub(super) fn upstream(alpn: &str, spiffe_id: &str) -> TransportSocket {
    let san = StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(spiffe_id.to_owned())),
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(common(alpn, san)),
        ..Default::default()
    };
    transport_socket(any(&context))
}

/// Server side: require a client certificate carrying a service identity of our trust domain
/// (which service may connect is the RBAC filters' decision).
pub(super) fn downstream(alpn: &str, trust_domain: &str) -> TransportSocket {
    let san = StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: format!(
                "^spiffe://{}/ns/[^/]+/dc/[^/]+/svc/[^/]+$",
                regex_literal(trust_domain)
            ),
            ..Default::default()
        })),
        ..Default::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(common(alpn, san)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    transport_socket(any(&context))
}

fn transport_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                config,
            ),
        ),
    }
}
