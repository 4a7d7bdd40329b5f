//! xDS correctness against the real server: a configuration Plexus accepts but Envoy rejects is
//! NACKed, shown, and traffic continues on the last good one; bad input on the xDS port is
//! answered per the protocol and leaves the server serving.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use plexus_test::upstream::HttpStub;
use plexus_test::{Dev, eventually, free_port};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::envoy::envoy;
use crate::l7::{app_hcl, client_hcl};
use crate::{dev, write_file};

const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// `client → web` over HTTP with a web app; the client's upstream address.
async fn http_mesh() -> (Dev, HttpStub, SocketAddr, tempfile::TempDir) {
    let web = HttpStub::start_named("web").await.unwrap();
    let local = free_port();
    let hcl = client_hcl("web", local, Some("http"))
        + &app_hcl(
            ("web", "web", web.addr.port()),
            "",
            free_port(),
            Some("http"),
        );
    let (dir, file) = write_file("mesh.hcl", &hcl);
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    (dev, web, ([127, 0, 0, 1], local).into(), dir)
}

#[tokio::test]
async fn a_configuration_envoy_rejects_is_nacked_shown_and_the_last_good_one_stays() {
    let (dev, web, local, _dir) = http_mesh().await;
    let _web = envoy(&dev, &["-sidecar-for", "web"], &[]).await;
    let client = envoy(&dev, &["-sidecar-for", "client"], &[]).await;
    let url = format!("http://{local}/hello");
    let http = reqwest::Client::new();
    eventually!(http.get(&url).send().await.is_ok_and(|r| r.status() == 200));

    // A long repetition: fine for Plexus's regex engine, over the program size Envoy's RE2
    // accepts by default (100).
    let router = serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathRegex": "/api/x{300}"}},
         "Destination": {"PrefixRewrite": "/"}}]});
    let url_config = format!("http://{}/v1/config", dev.http);
    let (status, reply, _) =
        crate::http("PUT", &url_config, Some(router.to_string().into_bytes())).await;
    assert_eq!(status, 200, "Plexus accepts the entry: {reply}");

    eventually!(dev.client.operator().await.is_ok_and(|view| {
        view.proxies.iter().any(|p| {
            p.id == "client-sidecar-proxy"
                && p.xds
                    .as_ref()
                    .and_then(|x| x.nack.as_ref())
                    .is_some_and(|nack| nack.type_url == "RDS" && !nack.error.is_empty())
        })
    }));
    dev.process
        .wait_for_line("Envoy rejected the configuration (NACK)")
        .await
        .unwrap();
    let (code, out, _) = dev.cli(&["operator"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("client-sidecar-proxy") && l.contains("NACK RDS")),
        "{out}"
    );
    // Envoy keeps the last accepted routes: traffic continues.
    let served = web.requests();
    for _ in 0..10 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(web.requests(), served + 10);
    assert!(client.stat("control_plane.connected_state").await.unwrap() == 1);

    // A good configuration is accepted and clears the NACK.
    let fixed = serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/api/"}},
         "Destination": {"PrefixRewrite": "/"}}]});
    let (status, _, _) =
        crate::http("PUT", &url_config, Some(fixed.to_string().into_bytes())).await;
    assert_eq!(status, 200);
    eventually!(dev.client.operator().await.is_ok_and(|view| {
        view.proxies.iter().any(|p| {
            p.id == "client-sidecar-proxy" && p.xds.as_ref().is_some_and(|x| x.nack.is_none())
        })
    }));
    eventually!(
        http.get(format!("http://{local}/api/abc"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    );
    assert_eq!(web.last_path(), "/abc", "the fixed route applies");
}

/// Bytes sent as they are (to send what is not a discovery request), responses as decoded.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = DiscoveryResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn request(node: &str, type_url: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// Opens a SotW stream; the sender of its requests and the stream of responses.
async fn open(
    channel: &tonic::transport::Channel,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    let responses = AggregatedDiscoveryServiceClient::new(channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

/// The status a stream ends with after `first`.
async fn refusal(channel: &tonic::transport::Channel, first: DiscoveryRequest) -> tonic::Status {
    let (tx, mut responses) = open(channel).await;
    tx.send(first).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), responses.message())
        .await
        .expect("an answer in time")
        .expect_err("the stream ends with a status")
}

/// The dev process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn bad_input_on_the_xds_port_is_answered_per_the_protocol_and_the_server_keeps_serving() {
    let (dev, web, local, _dir) = http_mesh().await;
    let grpc = dev.grpc().await.unwrap();
    let ch = channel(grpc).await;

    // Malformed request bytes: INVALID_ARGUMENT.
    let (tx, rx) = mpsc::channel(1);
    let mut grpc_client = tonic::client::Grpc::new(ch.clone());
    grpc_client.ready().await.unwrap();
    tx.send(vec![0x0a, 0xff, 0x01]).await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let mut responses = grpc_client
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed request"), "{status:?}");

    // No node id: INVALID_ARGUMENT naming the field.
    let status = refusal(&ch, request("", CLUSTERS, "")).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node.id"), "{status:?}");

    // A node id that names no registered proxy: NOT_FOUND, and a warning in the log.
    let status = refusal(&ch, request("nobody", CLUSTERS, "")).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("\"nobody\""), "{status:?}");
    dev.process
        .wait_for_line("refusing xDS stream")
        .await
        .unwrap();

    // An unknown type URL: INVALID_ARGUMENT naming it.
    let odd = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    let status = refusal(&ch, request("client-sidecar-proxy", odd, "")).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("TypedExtensionConfig"),
        "{status:?}"
    );

    // A stream that never ACKs gets its first answer and then waits; it holds up nobody.
    let (stuck_tx, mut stuck) = open(&ch).await;
    stuck_tx
        .send(request("client-sidecar-proxy", CLUSTERS, ""))
        .await
        .unwrap();
    let first = stuck.message().await.unwrap().expect("a first response");
    assert_eq!(first.type_url, CLUSTERS);
    let _web = envoy(&dev, &["-sidecar-for", "web"], &[]).await;
    let client = envoy(&dev, &["-sidecar-for", "client"], &[]).await;
    let url = format!("http://{local}/");
    let http = reqwest::Client::new();
    eventually!(http.get(&url).send().await.is_ok_and(|r| r.status() == 200));
    // A change reaches the healthy Envoy; the stuck stream sees nothing new.
    let entry = serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
        "Limits": {"MaxConnections": 7}});
    let (status, _, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", dev.http),
        Some(entry.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200);
    eventually!(
        client
            .config_dump()
            .await
            .is_ok_and(|dump| dump.to_string().contains("\"max_connections\":7"))
    );
    let more = tokio::time::timeout(Duration::from_millis(500), stuck.message()).await;
    assert!(more.is_err(), "nothing is sent before the ACK: {more:?}");

    // 1,000 streams opened and dropped: the server keeps serving, nothing piles up.
    let pid = dev.process.pid();
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    for _ in 0..10 {
        let batch = (0..100).map(|i| {
            let ch = ch.clone();
            async move {
                let (tx, mut responses) = open(&ch).await;
                if i % 2 == 0 {
                    tx.send(request("client-sidecar-proxy", CLUSTERS, ""))
                        .await
                        .unwrap();
                    let _ = responses.message().await;
                }
                drop(tx);
                drop(responses);
            }
        });
        futures::future::join_all(batch).await;
    }
    let served = web.requests();
    for _ in 0..20 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(web.requests(), served + 20);
    eventually!(open_fds(pid) <= fds_before + 5);
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The status report endpoint refuses bad reports, naming the entry at fault.
    let report_url = format!("http://{}/v1/internal/proxies/xds", dev.http);
    for (body, field) in [
        (
            serde_json::json!([{"ID": "", "Revision": 1, "Xds": {}}]),
            "[0].ID",
        ),
        (
            serde_json::json!([{"ID": "a", "Revision": 1, "Xds": {}}, {"ID": "b", "Revision": 1}]),
            "[1].Xds",
        ),
        (
            serde_json::json!([{"ID": "a", "Revision": 1, "Xds": {}}, {"ID": "a", "Revision": 1, "Xds": {}}]),
            "[1].ID",
        ),
        // A missing required field names the entry (serde's message names the field).
        (serde_json::json!([{"ID": "a", "Xds": {}}]), "[0]"),
    ] {
        let (status, reply, _) =
            crate::http("PUT", &report_url, Some(body.to_string().into_bytes())).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["field"], field, "{reply}");
    }
    let (status, _, _) = crate::http("PUT", &report_url, Some(b"not json".to_vec())).await;
    assert_eq!(status, 400);

    // A new stream is still served.
    let (tx, mut responses) = open(&ch).await;
    tx.send(request("client-sidecar-proxy", CLUSTERS, ""))
        .await
        .unwrap();
    assert!(responses.message().await.unwrap().is_some());
}

/// The status a stream presenting `token` ends with after `first`.
async fn refusal_with_token(
    channel: &tonic::transport::Channel,
    token: &str,
    first: DiscoveryRequest,
) -> tonic::Status {
    let (tx, rx) = mpsc::channel(8);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-consul-token", token.parse().unwrap());
    tx.send(first).await.unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel.clone())
        .stream_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(15), responses.message())
        .await
        .expect("an answer in time")
        .expect_err("the stream ends with a status")
}

/// With ACLs enforced (default deny) each Envoy runs with its service's token: the xDS server
/// reads the proxy's inputs with that token and refuses a stream whose token lacks
/// `service:write` on the proxy service, or is unknown, saying why.
#[tokio::test]
async fn envoys_need_a_token_with_service_write_on_their_service() {
    let echo = plexus_test::TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let (_defs, file) = write_file(
        "mesh.hcl",
        &crate::client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let data = tempfile::tempdir().unwrap();
    let management = plexus_test::server::random_uuid();
    let dev = Dev::start_with_env(
        crate::bin(),
        data.path(),
        &[
            "--acl",
            "--acl-default-policy",
            "deny",
            "--config-file",
            file.to_str().unwrap(),
        ],
        &[("PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN", management.as_str())],
    )
    .await
    .unwrap();
    let token_for = |service: &'static str| {
        let (url, management) = (
            format!("http://{}/v1/acl/token", dev.http),
            management.clone(),
        );
        async move {
            let (status, token, _) = crate::acl::call(
                &url,
                "PUT",
                Some(&management),
                Some(serde_json::json!({"ServiceIdentities": [{"ServiceName": service}]})),
            )
            .await;
            assert_eq!(status, 200, "{token}");
            let secret = token["SecretID"].as_str().unwrap().to_owned();
            plexus_test::secrets::register(&secret);
            secret
        }
    };
    let (echo_token, client_token) = (token_for("echo").await, token_for("client").await);
    let _echo_envoy = envoy(&dev, &["-sidecar-for", "echo"], &["--token", &echo_token]).await;
    let _client_envoy = envoy(
        &dev,
        &["-sidecar-for", "client"],
        &["--token", &client_token],
    )
    .await;
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    crate::envoy::echoes(upstream, "with tokens").await;
    // Each status report went out with its proxy's token.
    let operator = dev
        .client
        .clone()
        .with_token(Some(plexus_api::acl::SecretId::new(management.as_str())));
    eventually!(operator.operator().await.is_ok_and(|view| {
        ["echo-sidecar-proxy", "client-sidecar-proxy"]
            .iter()
            .all(|id| {
                view.proxies.iter().any(|p| {
                    p.id == *id && p.xds.as_ref().is_some_and(|x| x.acked.contains_key("CDS"))
                })
            })
    }));

    let ch = channel(dev.grpc().await.unwrap()).await;
    let first = request("client-sidecar-proxy", CLUSTERS, "");
    // Another service's token: Consul's permission-denied text.
    let status = refusal_with_token(&ch, &echo_token, first.clone()).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("lacks permission 'service:write' on \"client-sidecar-proxy\""),
        "{status:?}"
    );
    // A token that does not exist.
    let status =
        refusal_with_token(&ch, "8a0c1f7e-0000-4000-8000-000000000000", first.clone()).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "ACL not found");
    // No token: the anonymous token sees no registration.
    let status = refusal(&ch, first).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        dev.process.output().contains("refusing xDS stream"),
        "refusals are logged"
    );
    assert!(
        !dev.process.output().contains(&echo_token),
        "a token was logged"
    );
    // The server keeps serving the Envoys.
    crate::envoy::echoes(upstream, "still served").await;
}
