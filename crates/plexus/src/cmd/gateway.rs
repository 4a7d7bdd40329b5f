//! `plexus gateway --kind ingress|terminating|mesh --service NAME`: registers the gateway
//! service on the agent (Consul's `consul connect envoy -gateway=… -register`) and runs it on
//! the built-in proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use plexus_proxy::gateway::{GatewayConfig, GatewayKind};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;

use super::{ControlArgs, EXIT_CONFIG, parse_duration};

/// `--kind`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// `ingress-gateway`: clients outside the mesh in, by host.
    Ingress,
    /// `terminating-gateway`: mesh clients out to linked external services.
    Terminating,
    /// `mesh-gateway`: between datacenters (other datacenters' mTLS in, by SNI).
    Mesh,
}

/// `plexus gateway`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's role.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The gateway's service name (and id); its config entry has this name.
    #[arg(long)]
    pub service: String,
    /// The gateway's address: a terminating gateway's mTLS port (port 0 picks one); the IP an
    /// ingress gateway's listeners bind. Registered (a wildcard IP as the agent's address).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub address: SocketAddr,
    /// The address other datacenters reach it on (registered as the `wan` tagged address).
    #[arg(long = "wan-address")]
    pub wan_address: Option<SocketAddr>,
    /// A mesh gateway's servers: this datacenter's servers' HTTPS API (`host:port`,
    /// comma-separated). TLS whose SNI is `server.<this datacenter>.<domain>` (what servers
    /// federating through mesh gateways send) is passed to one of them, never terminated.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<SocketAddr>,
    /// Admin listener (`/ready`, `/metrics`, `/stats`, `/config`); port 0 picks a free port.
    #[arg(long = "admin-addr", default_value = "127.0.0.1:19000")]
    pub admin_addr: String,
    /// How long in-flight connections may take to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Write a JSON line per HTTP request to this file (appended), or to standard output
    /// with `-`.
    #[arg(long = "access-log", value_name = "PATH|-")]
    pub access_log: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs the gateway until a signal arrives.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let control = match args.control.client() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let access_log = match args.access_log.as_deref() {
        None => None,
        Some(path) if path.as_os_str() == "-" => Some(plexus_proxy::AccessLog::stdout()),
        Some(path) => match plexus_proxy::AccessLog::open(path) {
            Ok(log) => Some(log),
            Err(error) => {
                eprintln!("error: --access-log {}: {error}", path.display());
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    let kind = match args.kind {
        Kind::Ingress => GatewayKind::Ingress,
        Kind::Terminating => GatewayKind::Terminating,
        Kind::Mesh => GatewayKind::Mesh,
    };
    if !args.servers.is_empty() && kind != GatewayKind::Mesh {
        eprintln!("error: --servers: only a mesh gateway passes server traffic (--kind mesh)");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let admin_listener = TcpListener::bind(&args.admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin listener on {}", args.admin_addr))?;
    let listener = TcpListener::bind(args.address)
        .await
        .with_context(|| format!("cannot bind the gateway listener on {}", args.address))?;
    let bound = listener
        .local_addr()
        .context("cannot read the gateway listener's address")?;
    plexus_runtime::telemetry::listening("gateway", bound);
    // A mesh gateway also listens on its WAN address (unless it is the same socket).
    let wan_listener = match (args.kind, args.wan_address) {
        (Kind::Mesh, Some(wan)) if wan != bound && wan != args.address => {
            let wan_listener = TcpListener::bind(wan)
                .await
                .with_context(|| format!("cannot bind the gateway's WAN listener on {wan}"))?;
            let wan_bound = wan_listener
                .local_addr()
                .context("cannot read the WAN listener's address")?;
            plexus_runtime::telemetry::listening("gateway-wan", wan_bound);
            Some(wan_listener)
        }
        _ => None,
    };
    // A wildcard IP is no address to dial: register the agent's (its advertised) address.
    let address = if bound.ip().is_unspecified() {
        let advertised = control
            .agent_self()
            .await
            .ok()
            .and_then(|me| {
                me.member
                    .get("Addr")
                    .and_then(|addr| addr.as_str())
                    .and_then(|addr| addr.parse::<IpAddr>().ok())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        SocketAddr::new(advertised, bound.port())
    } else {
        bound
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let config = GatewayConfig {
        control,
        kind,
        service: args.service,
        listener,
        address,
        wan_address: args.wan_address,
        wan_listener,
        admin_listener,
        servers: args.servers,
        drain_grace: args.grace,
        access_log,
    };
    match plexus_proxy::gateway::run(config, shutdown.token()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ plexus_proxy::ProxyError::KindMismatch { .. }) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}
