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
    /// The xDS server: this node's agent, server or dev process. `ip:port` (or `http://ip:port`)
    /// for plain gRPC; `https://ip:port` for its `--grpc-tls-addr`, verified with --ca-file
    /// (and --tls-server-name, else the IP address), presenting --client-cert/--client-key when
    /// given [env: PLEXUS_GRPC_ADDR, CONSUL_GRPC_ADDR].
    #[arg(long = "grpc-addr", env = GRPC_ADDR_ENV, default_value_t = default_grpc_addr(), hide_env = true)]
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

/// `CONSUL_GRPC_ADDR`, else Consul's gRPC port (`PLEXUS_GRPC_ADDR` and the flag come first).
fn default_grpc_addr() -> String {
    super::tls::env_first(&["CONSUL_GRPC_ADDR"]).unwrap_or_else(|| DEFAULT_XDS_ADDR.to_owned())
}

/// Where Envoy reaches the xDS server, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// TLS to it (`https://`).
    pub tls: Option<XdsTls>,
}

/// TLS from Envoy to the xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// CA certificates (PEM file) that verify the server.
    pub ca_file: PathBuf,
    /// The name the server's certificate must carry (else its IP address).
    pub server_name: Option<String>,
    /// Envoy's client certificate and key (PEM files), for `verify_incoming`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl XdsTarget {
    /// Parses `--grpc-addr` with the command's TLS flags; `Err` names the problem.
    pub fn parse(text: &str, tls: &super::tls::ClientTlsArgs) -> Result<Self, String> {
        let (https, rest) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "--grpc-addr {text:?}: unknown scheme {scheme:?} (http or https)"
                ));
            }
            None => (false, text),
        };
        let addr: SocketAddr = rest.trim_end_matches('/').parse().map_err(|_| {
            format!(
                "--grpc-addr {text:?} is not an ip:port address (optionally http:// or https://)"
            )
        })?;
        if !https {
            return Ok(Self { addr, tls: None });
        }
        let tls = tls.resolved();
        let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let ca_file = tls.ca_file.as_ref().map(absolute).ok_or_else(|| {
            format!(
                "--grpc-addr {text:?} needs --ca-file (or PLEXUS_CACERT) to verify the xDS server"
            )
        })?;
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some((absolute(cert), absolute(key))),
            (None, None) => None,
            _ => return Err("--client-cert and --client-key go together".to_owned()),
        };
        Ok(Self {
            addr,
            tls: Some(XdsTls {
                ca_file,
                server_name: tls.tls_server_name,
                client,
            }),
        })
    }
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
    let xds = match XdsTarget::parse(&args.grpc_addr, &args.control.tls) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("error: {message}");
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
    // The command's token (--token, --token-file, PLEXUS_HTTP_TOKEN, CONSUL_HTTP_TOKEN) is also
    // the one Envoy presents to the xDS server (gRPC metadata `x-consul-token`).
    let token = args.control.token.resolve()?;
    let bootstrap = bootstrap(
        &spec,
        admin,
        &xds,
        &args.xds,
        token.as_ref().map(|t| t.expose()),
    );
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

/// The xDS cluster's TLS: the server's certificate verified against the CA file and its name
/// (or IP address), ALPN h2, Envoy's client certificate when given.
fn xds_tls(tls: &XdsTls, addr: SocketAddr) -> Value {
    let san = match &tls.server_name {
        Some(name) => json!({"san_type": "DNS", "matcher": {"exact": name}}),
        None => json!({"san_type": "IP_ADDRESS", "matcher": {"exact": addr.ip().to_string()}}),
    };
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": tls.ca_file},
            "match_typed_subject_alt_names": [san]
        }
    });
    if let Some((cert, key)) = &tls.client {
        common["tls_certificates"] = json!([{
            "certificate_chain": {"filename": cert},
            "private_key": {"filename": key}
        }]);
    }
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common
    });
    if let Some(name) = &tls.server_name {
        context["sni"] = json!(name);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// Envoy's bootstrap for `spec`.
pub fn bootstrap(
    spec: &ProxySpec,
    admin: SocketAddr,
    xds: &XdsTarget,
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
    let mut xds_cluster = static_cluster(XDS_CLUSTER, xds.addr, true);
    if let Some(tls) = &xds.tls {
        xds_cluster["transport_socket"] = xds_tls(tls, xds.addr);
    }
    let mut clusters = vec![xds_cluster];
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
        let xds = XdsTarget {
            addr: "127.0.0.1:8502".parse().expect("addr"),
            tls: None,
        };
        let b = bootstrap(&spec, admin, &xds, "sotw", Some("secret"));
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
        assert!(
            b["static_resources"]["clusters"][0]
                .get("transport_socket")
                .is_none()
        );
        let delta = bootstrap(&spec, admin, &xds, "delta", None);
        assert_eq!(
            delta["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }

    #[test]
    fn an_https_grpc_addr_means_a_verified_tls_xds_cluster() {
        let flags = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| {
            super::super::tls::ClientTlsArgs {
                ca_file: ca.map(PathBuf::from),
                client_cert: cert.map(PathBuf::from),
                client_key: key.map(PathBuf::from),
                tls_server_name: None,
            }
        };
        assert_eq!(
            XdsTarget::parse("http://127.0.0.1:8502", &flags(None, None, None)),
            Ok(XdsTarget {
                addr: "127.0.0.1:8502".parse().expect("addr"),
                tls: None
            })
        );
        let target = XdsTarget::parse(
            "https://127.0.0.1:8503",
            &flags(Some("/ca.pem"), Some("/c.pem"), Some("/k.pem")),
        )
        .expect("valid");
        let tls = target.tls.clone().expect("tls");
        assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
        let socket = xds_tls(&tls, target.addr);
        let common = &socket["typed_config"]["common_tls_context"];
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "127.0.0.1"
        );
        assert_eq!(
            common["tls_certificates"][0]["private_key"]["filename"],
            "/k.pem"
        );
        assert_eq!(common["alpn_protocols"][0], "h2");
        for (text, flags, error) in [
            (
                "https://127.0.0.1:8503",
                flags(None, None, None),
                "needs --ca-file",
            ),
            (
                "ftp://127.0.0.1:8503",
                flags(None, None, None),
                "unknown scheme",
            ),
            ("127.0.0.1", flags(None, None, None), "not an ip:port"),
            (
                "https://127.0.0.1:8503",
                flags(Some("/ca.pem"), Some("/c.pem"), None),
                "go together",
            ),
        ] {
            let refused = XdsTarget::parse(text, &flags).expect_err(text);
            assert!(refused.contains(error), "{text}: {refused}");
        }
    }
}
