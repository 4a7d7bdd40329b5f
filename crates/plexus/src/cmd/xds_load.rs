//! `plexus xds-load` (hidden): the xDS scale benchmark's load client. Registers one target
//! service and `--clients` connect-proxies calling it, opens one delta ADS stream per proxy (as
//! Envoy does: CDS, then EDS for the clusters it names, every response ACKed), then changes the
//! target's endpoints `--changes` times and measures how long each change takes to reach every
//! stream. With `--server-pid`, also the xDS server's resident memory per stream.
//!
//! Not a test: `bench/xds_scale.sh` runs it against a release `plexus dev`; figures go to
//! docs/benchmarks.md.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use plexus_api::ServiceRegistration;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ControlArgs;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const TARGET: &str = "xds-load-target";
const CLIENT: &str = "xds-load-client";

/// `plexus xds-load`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated Envoys (one ADS stream and one registered proxy each).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// gRPC connections the streams share.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// The xDS server.
    #[arg(long = "grpc-addr", default_value = "127.0.0.1:8502")]
    pub grpc_addr: String,
    /// The xDS server's process id, to report its memory per stream.
    #[arg(long = "server-pid")]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// What each stream last saw: (endpoints of the target, when).
type Seen = Arc<Mutex<Vec<(usize, Option<Instant>)>>>;

fn proxy(
    id: &str,
    name: &str,
    service: &str,
    port: u16,
    upstream: Option<u16>,
) -> serde_json::Value {
    let upstreams: Vec<serde_json::Value> = upstream
        .map(|p| serde_json::json!({"DestinationName": TARGET, "LocalBindPort": p}))
        .into_iter()
        .collect();
    serde_json::json!({
        "Kind": "connect-proxy", "ID": id, "Name": name, "Port": port,
        "Proxy": {"DestinationServiceName": service, "DestinationServiceID": service,
                  "LocalServicePort": 1, "Upstreams": upstreams}
    })
}

async fn register(
    client: &plexus_api::client::Client,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let registration: ServiceRegistration = serde_json::from_value(body)?;
    client.register_service(&registration).await?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the benchmark and prints its figures as JSON.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.control.client()?;
    let base_port = 40_000u16;
    let clients = u16::try_from(args.clients).context("--clients is at most 20000")?;
    anyhow::ensure!(clients <= 20_000, "--clients is at most 20000");
    register(&client, serde_json::json!({"Name": TARGET, "Port": 1})).await?;
    register(&client, serde_json::json!({"Name": CLIENT, "Port": 1})).await?;
    for i in 0..2u16 {
        register(
            &client,
            proxy(
                &format!("{TARGET}-proxy-{i}"),
                &format!("{TARGET}-sidecar-proxy"),
                TARGET,
                30_000 + i,
                None,
            ),
        )
        .await?;
    }
    let registering = Instant::now();
    for i in 0..clients {
        register(
            &client,
            proxy(
                &format!("{CLIENT}-{i}"),
                &format!("{CLIENT}-sidecar-proxy"),
                CLIENT,
                base_port + i,
                Some(base_port + clients + i),
            ),
        )
        .await?;
    }
    eprintln!(
        "registered {clients} proxies in {:?}",
        registering.elapsed()
    );

    let rss_before = args.server_pid.map(rss_kib);
    let channels: Vec<tonic::transport::Channel> = {
        let mut out = Vec::new();
        for _ in 0..args.connections.max(1) {
            out.push(
                tonic::transport::Endpoint::from_shared(format!("http://{}", args.grpc_addr))?
                    .connect()
                    .await
                    .context("connecting to the xDS server")?,
            );
        }
        out
    };
    let seen: Seen = Arc::new(Mutex::new(vec![(0, None); args.clients]));
    let opening = Instant::now();
    for i in 0..args.clients {
        let channel = channels[i % channels.len()].clone();
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            if let Err(error) = stream(i, channel, seen).await {
                eprintln!("stream {i}: {error:#}");
            }
        });
    }
    let settled = wait_all(&seen, 2, Duration::from_secs(300)).await;
    anyhow::ensure!(
        settled.is_some(),
        "not every stream received the target's endpoints"
    );
    eprintln!(
        "{} streams configured in {:?}",
        args.clients,
        opening.elapsed()
    );
    let rss_after = args.server_pid.map(rss_kib);

    let mut latencies = Vec::new();
    for change in 0..args.changes {
        let extra = format!("{TARGET}-proxy-extra");
        let t0 = Instant::now();
        tracing::debug!(change, "changing the target's endpoints");
        let expect = if change % 2 == 0 {
            register(
                &client,
                proxy(
                    &extra,
                    &format!("{TARGET}-sidecar-proxy"),
                    TARGET,
                    30_100,
                    None,
                ),
            )
            .await?;
            3
        } else {
            client.deregister_service(&extra).await?;
            2
        };
        let arrived = wait_all(&seen, expect, Duration::from_secs(60))
            .await
            .context("a change did not reach every stream within 60 s")?;
        let mut round: Vec<f64> = arrived
            .iter()
            .map(|at| at.saturating_duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        round.sort_by(f64::total_cmp);
        eprintln!(
            "change {change}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&round, 0.50),
            percentile(&round, 0.99),
            percentile(&round, 1.0)
        );
        latencies.extend(round);
    }
    latencies.sort_by(f64::total_cmp);
    let per_stream = match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before)) as f64 / args.clients as f64)
        }
        _ => None,
    };
    let report = serde_json::json!({
        "clients": args.clients,
        "connections": args.connections,
        "changes": args.changes,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
        "server_rss_kib": {"before_streams": rss_before, "with_streams": rss_after},
        "server_kib_per_stream": per_stream,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Waits until every stream has seen `endpoints`; the instants each saw them.
async fn wait_all(seen: &Seen, endpoints: usize, deadline: Duration) -> Option<Vec<Instant>> {
    let until = Instant::now() + deadline;
    loop {
        {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.iter().all(|(n, _)| *n == endpoints) {
                return seen.iter().map(|(_, at)| *at).collect();
            }
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One simulated Envoy: CDS, EDS for the EDS clusters, every response ACKed.
async fn stream(i: usize, channel: tonic::transport::Channel, seen: Seen) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: format!("{CLIENT}-{i}"),
        cluster: CLIENT.to_owned(),
        ..Default::default()
    });
    tx.send(DeltaDiscoveryRequest {
        node: node.clone(),
        type_url: CDS.into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds_names = BTreeSet::new();
    while let Some(response) = responses.message().await? {
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        if response.type_url == CDS {
            let mut new = Vec::new();
            for resource in &response.resources {
                let Some(body) = &resource.resource else {
                    continue;
                };
                let cluster = Cluster::decode(body.value.as_slice())?;
                let eds = cluster.cluster_discovery_type
                    == Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32,
                    ));
                if eds && eds_names.insert(cluster.name.clone()) {
                    new.push(cluster.name);
                }
            }
            tx.send(ack).await?;
            if !new.is_empty() {
                tx.send(DeltaDiscoveryRequest {
                    type_url: EDS.into(),
                    resource_names_subscribe: new,
                    ..Default::default()
                })
                .await?;
            }
        } else if response.type_url == EDS {
            let at = Instant::now();
            for resource in &response.resources {
                let Some(body) = &resource.resource else {
                    continue;
                };
                let assignment = ClusterLoadAssignment::decode(body.value.as_slice())?;
                if assignment.cluster_name == TARGET {
                    let count = assignment
                        .endpoints
                        .iter()
                        .map(|l| l.lb_endpoints.len())
                        .sum();
                    seen.lock().unwrap_or_else(PoisonError::into_inner)[i] = (count, Some(at));
                }
            }
            tx.send(ack).await?;
        } else {
            tx.send(ack).await?;
        }
    }
    Ok(())
}
