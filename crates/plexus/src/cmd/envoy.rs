//! `plexus connect envoy -sidecar-for SERVICE_ID`: writes Envoy's bootstrap (node id = the proxy's
//! service id, ADS over gRPC to `--grpc-addr`, the admin listener, and Prometheus on
//! `envoy_prometheus_bind_addr` when the registration asks for it) and execs Envoy with it.
//!
//! Consul's single-dash spelling (`-sidecar-for web`, `-proxy-id`, `-admin-bind`, `-bootstrap`)
//! works as well as the double-dash one; see [`consul_style_args`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plexus_api::client::{Client, QueryOptions};
use plexus_api::{AgentService, ServiceKind};
use plexus_xds::model::ProxySpec;
use serde_json::{Value, json};

use super::{ControlArgs, EXIT_CONFIG};

/// Where Envoy finds the xDS server when nothing else is said (Consul's gRPC port).
const DEFAULT_XDS_ADDR: &str = "127.0.0.1:8502";
/// Environment variable for `--grpc-addr`.
const GRPC_ADDR_ENV: &str = "PLEXUS_GRPC_ADDR";
/// The bootstrap's cluster for the xDS server.
const XDS_CLUSTER: &str = "plexus_xds";
/// The bootstrap's cluster for Envoy's own admin API (Prometheus scrapes go through it).
const SELF_ADMIN_CLUSTER: &str = "self_admin";

/// `plexus connect envoy`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app's service id whose sidecar Envoy runs as (`-sidecar-for`).
    #[arg(long = "sidecar-for", conflicts_with = "proxy_id")]
    pub sidecar_for: Option<String>,
    /// The id of an explicitly registered `connect-proxy` service (`-proxy-id`).
    #[arg(long = "proxy-id")]
    pub proxy_id: Option<String>,
    /// Envoy's admin listener (`-admin-bind`); port 0 lets Envoy pick one (pass
    /// `-- --admin-address-path FILE` to learn it).
    #[arg(long = "admin-bind", default_value = "127.0.0.1:19000")]
    pub admin_bind: String,
    /// Print the bootstrap JSON and exit instead of running Envoy (`-bootstrap`).
    #[arg(long)]
    pub bootstrap: bool,
    /// The Envoy executable.
    #[arg(long = "envoy-binary", default_value = "envoy")]
    pub envoy_binary: PathBuf,
    /// ACL token Envoy presents to the xDS server (gRPC metadata `x-consul-token`).
    #[arg(long, env = "PLEXUS_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The xDS server (`ip:port`): this node's agent, server or dev process.
    #[arg(long = "grpc-addr", env = GRPC_ADDR_ENV, default_value = DEFAULT_XDS_ADDR)]
    pub grpc_addr: String,
    /// xDS protocol variant: `delta` (incremental) or `sotw` (state of the world).
    #[arg(long = "xds", default_value = "delta", value_parser = ["delta", "sotw"])]
    pub xds: String,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Extra arguments for Envoy, after `--`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Rewrites Consul's single-dash long options of `connect envoy` (`-sidecar-for x`) into
/// clap's double-dash form; everything after `--` and every other command is left alone.
pub fn consul_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    let is_envoy = args.len() > 2 && args[1] == "connect" && args[2] == "envoy";
    if !is_envoy {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut passthrough = false;
    for (i, arg) in args.into_iter().enumerate() {
        let text = arg.to_string_lossy();
        if i > 2 && !passthrough {
            if text == "--" {
                passthrough = true;
            } else if text.len() > 2 && text.starts_with('-') && !text.starts_with("--") {
                out.push(OsString::from(format!("-{text}")));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// Runs the command: looks the proxy up, writes the bootstrap, execs Envoy.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let admin: SocketAddr = match args.admin_bind.parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!(
                "error: -admin-bind {:?} is not an ip:port address",
                args.admin_bind
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let xds: SocketAddr = match args.grpc_addr.parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!(
                "error: --grpc-addr {:?} is not an ip:port address",
                args.grpc_addr
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if args.sidecar_for.is_none() && args.proxy_id.is_none() {
        eprintln!("error: one of -sidecar-for SERVICE_ID or -proxy-id ID is required");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let client = args.control.client()?;
    let proxy = find_proxy(
        &client,
        args.sidecar_for.as_deref(),
        args.proxy_id.as_deref(),
    )
    .await?;
    let spec = ProxySpec::from_service(&proxy)
        .with_context(|| format!("the registration of {:?} cannot run under Envoy", proxy.id))?;
    if spec.prometheus_bind.is_some() && admin.port() == 0 {
        eprintln!(
            "error: envoy_prometheus_bind_addr needs a fixed -admin-bind port (Prometheus scrapes reach Envoy's admin through it)"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let bootstrap = bootstrap(&spec, admin, xds, &args.xds, args.token.as_deref());
    let text = serde_json::to_string_pretty(&bootstrap)?;
    if args.bootstrap {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let path = write_bootstrap(&spec.id, &text)?;
    exec_envoy(&args.envoy_binary, &path, &args.extra)
}

/// The connect-proxy to run: by its own id, or the one fronting `sidecar_for`.
async fn find_proxy(
    client: &Client,
    sidecar_for: Option<&str>,
    proxy_id: Option<&str>,
) -> anyhow::Result<AgentService> {
    if let Some(id) = proxy_id {
        let found = client
            .agent_service(id, QueryOptions::default())
            .await
            .with_context(|| format!("looking up proxy {id:?} on the local agent"))?
            .value;
        if found.kind != ServiceKind::ConnectProxy {
            anyhow::bail!("service {id:?} is not of kind connect-proxy");
        }
        return Ok(found);
    }
    let app = sidecar_for.unwrap_or_default();
    let services = client
        .agent_services()
        .await
        .context("listing the local agent's services")?;
    services
        .into_values()
        .find(|s| {
            s.kind == ServiceKind::ConnectProxy
                && s.proxy
                    .as_ref()
                    .is_some_and(|p| p.destination_service_id == app)
        })
        .ok_or_else(|| {
            anyhow::anyhow!("no sidecar proxy for service id {app:?} is registered on this agent")
        })
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// Envoy's bootstrap for `spec`.
pub fn bootstrap(
    spec: &ProxySpec,
    admin: SocketAddr,
    xds: SocketAddr,
    variant: &str,
    token: Option<&str>,
) -> Value {
    let mut grpc_service = json!({"envoy_grpc": {"cluster_name": XDS_CLUSTER}});
    if let Some(token) = token {
        grpc_service["initial_metadata"] =
            json!([{"key": plexus_xds::ads::TOKEN_METADATA, "value": token}]);
    }
    let static_cluster = |name: &str, addr: SocketAddr, http2: bool| {
        let mut cluster = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]
            }
        });
        if http2 {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            });
        }
        cluster
    };
    let mut clusters = vec![static_cluster(XDS_CLUSTER, xds, true)];
    let mut listeners = Vec::new();
    if let Some(prometheus) = spec.prometheus_bind {
        clusters.push(static_cluster(SELF_ADMIN_CLUSTER, admin, false));
        listeners.push(json!({
            "name": "envoy_prometheus_metrics_listener",
            "address": socket(prometheus),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "envoy_prometheus_metrics",
                    "codec_type": "HTTP1",
                    "route_config": {"name": "self_admin_route", "virtual_hosts": [{
                        "name": "self_admin", "domains": ["*"],
                        "routes": [
                            {"match": {"path": "/metrics"}, "route": {"cluster": SELF_ADMIN_CLUSTER, "prefix_rewrite": "/stats/prometheus"}},
                            {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
                        ]
                    }]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }));
    }
    let api_type = if variant == "sotw" {
        "GRPC"
    } else {
        "DELTA_GRPC"
    };
    json!({
        "admin": {"address": socket(admin)},
        "node": {
            "id": spec.id,
            "cluster": spec.service,
            "metadata": {"namespace": "default", "plexus_proxy_id": spec.id}
        },
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "dynamic_resources": {
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [grpc_service]
            }
        }
    })
}

/// Writes the bootstrap to a file only we can read (it may hold the token).
fn write_bootstrap(proxy_id: &str, text: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let safe: String = proxy_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path =
        std::env::temp_dir().join(format!("plexus-envoy-{safe}-{}.json", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing the bootstrap to {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing the bootstrap to {}", path.display()))?;
    Ok(path)
}

/// Replaces this process with Envoy.
fn exec_envoy(binary: &PathBuf, bootstrap: &PathBuf, extra: &[String]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(binary)
        .arg("--config-path")
        .arg(bootstrap)
        .args(extra)
        .exec();
    eprintln!(
        "error: cannot run Envoy ({}): {error} (install it, or name it with --envoy-binary)",
        binary.display()
    );
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn consul_single_dash_options_are_accepted() {
        let rewritten = consul_style_args(os(&[
            "plexus",
            "connect",
            "envoy",
            "-sidecar-for",
            "web",
            "-admin-bind",
            "127.0.0.1:0",
            "--",
            "-l",
            "-debug",
        ]));
        assert_eq!(
            rewritten,
            os(&[
                "plexus",
                "connect",
                "envoy",
                "--sidecar-for",
                "web",
                "--admin-bind",
                "127.0.0.1:0",
                "--",
                "-l",
                "-debug"
            ])
        );
        let other = os(&["plexus", "kv", "get", "-x"]);
        assert_eq!(consul_style_args(other.clone()), other);
    }

    #[test]
    fn the_bootstrap_names_the_proxy_and_the_xds_server() {
        let service = plexus_api::AgentService {
            kind: ServiceKind::ConnectProxy,
            id: "web-sidecar-proxy".into(),
            service: "web-sidecar-proxy".into(),
            port: 21000,
            proxy: Some(plexus_api::AgentProxy {
                destination_service_name: "web".into(),
                destination_service_id: "web".into(),
                local_service_port: 8080,
                config: Some(json!({"envoy_prometheus_bind_addr": "127.0.0.1:9102"})),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = ProxySpec::from_service(&service).expect("valid");
        let admin = "127.0.0.1:19000".parse().expect("addr");
        let xds = "127.0.0.1:8502".parse().expect("addr");
        let b = bootstrap(&spec, admin, xds, "sotw", Some("secret"));
        assert_eq!(b["node"]["id"], "web-sidecar-proxy");
        assert_eq!(b["node"]["cluster"], "web");
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["key"],
            "x-consul-token"
        );
        assert_eq!(
            b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
            9102
        );
        let delta = bootstrap(&spec, admin, xds, "delta", None);
        assert_eq!(
            delta["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }
}
