//! The wire boundary: discovery requests and responses ↔ the session's own types.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as WireResource,
};
use tonic::Status;

use super::session::{Names, Request, Response};
use crate::resources::TypeUrl;

/// One protocol variant's wire types.
pub(super) trait Wire: Send + 'static {
    /// The request message.
    type Req: Send + 'static;
    /// The response message.
    type Resp: Send + 'static;
    /// The node id, when the request carries a node.
    fn node_id(request: &Self::Req) -> Option<String>;
    /// Converts a request; an unknown or missing type URL is `INVALID_ARGUMENT`.
    fn decode(request: Self::Req) -> Result<Request, Status>;
    /// Converts a response.
    fn encode(response: Response) -> Self::Resp;
}

fn type_url(url: &str) -> Result<TypeUrl, Status> {
    if url.is_empty() {
        return Err(Status::invalid_argument("type_url is required"));
    }
    TypeUrl::parse(url).ok_or_else(|| {
        Status::invalid_argument(format!(
            "type_url {url:?} is not served here (CDS, EDS, LDS, RDS and SDS are)"
        ))
    })
}

fn nack_detail(error: Option<envoy_types::pb::google::rpc::Status>) -> Option<String> {
    error.map(|status| {
        if status.message.is_empty() {
            format!("rejected (code {})", status.code)
        } else {
            status.message
        }
    })
}

/// State of the world.
pub(super) struct Sotw;

impl Wire for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn node_id(request: &DiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|node| node.id.clone())
    }

    fn decode(request: DiscoveryRequest) -> Result<Request, Status> {
        Ok(Request {
            type_url: type_url(&request.type_url)?,
            nonce: request.response_nonce,
            version: request.version_info,
            error: nack_detail(request.error_detail),
            names: Names::Sotw(request.resource_names),
        })
    }

    fn encode(response: Response) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: response.version,
            resources: response.resources.iter().map(|r| r.body.clone()).collect(),
            type_url: response.type_url.as_str().to_owned(),
            nonce: response.nonce,
            ..Default::default()
        }
    }
}

/// Incremental.
pub(super) struct Delta;

impl Wire for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn node_id(request: &DeltaDiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|node| node.id.clone())
    }

    fn decode(request: DeltaDiscoveryRequest) -> Result<Request, Status> {
        Ok(Request {
            type_url: type_url(&request.type_url)?,
            nonce: request.response_nonce,
            version: String::new(),
            error: nack_detail(request.error_detail),
            names: Names::Delta {
                subscribe: request.resource_names_subscribe,
                unsubscribe: request.resource_names_unsubscribe,
                initial: request
                    .initial_resource_versions
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            },
        })
    }

    fn encode(response: Response) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: response.version,
            resources: response
                .resources
                .iter()
                .map(|r| WireResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: response.type_url.as_str().to_owned(),
            removed_resources: response.removed,
            nonce: response.nonce,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;

    #[test]
    fn unknown_and_missing_type_urls_are_invalid_arguments() {
        let request = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into(),
            ..Default::default()
        };
        let status = Sotw::decode(request).expect_err("unknown type");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("TypedExtensionConfig"));
        let status = Delta::decode(DeltaDiscoveryRequest::default()).expect_err("no type");
        assert_eq!(status.message(), "type_url is required");
    }

    #[test]
    fn a_nack_carries_envoy_s_message() {
        let request = DiscoveryRequest {
            type_url: TypeUrl::Listener.as_str().into(),
            response_nonce: "3".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "Error adding/updating listener(s) x: bad".into(),
                details: Vec::new(),
            }),
            node: Some(Node {
                id: "web-sidecar-proxy".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Sotw::node_id(&request).as_deref(),
            Some("web-sidecar-proxy")
        );
        let decoded = Sotw::decode(request).expect("valid");
        assert_eq!(
            decoded.error.as_deref(),
            Some("Error adding/updating listener(s) x: bad")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever bytes arrive as a request: a decode error, or a request the session takes
        /// (or refuses as INVALID_ARGUMENT); never a panic.
        #[test]
        fn arbitrary_request_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            type_url in proptest::prop_oneof![
                proptest::strategy::Just(TypeUrl::Cluster.as_str().to_owned()),
                proptest::strategy::Just(String::new()),
                ".{0,40}",
            ],
        ) {
            use prost::Message;
            if let Ok(mut request) = DiscoveryRequest::decode(bytes.as_slice()) {
                let _ = Sotw::node_id(&request);
                request.type_url = type_url.clone();
                if let Err(status) = Sotw::decode(request) {
                    proptest::prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
            if let Ok(mut request) = DeltaDiscoveryRequest::decode(bytes.as_slice()) {
                let _ = Delta::node_id(&request);
                request.type_url = type_url;
                if let Err(status) = Delta::decode(request) {
                    proptest::prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
        }
    }
}
