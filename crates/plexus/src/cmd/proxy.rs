//! `plexus proxy --sidecar-for SERVICE_ID`: the sidecar data plane for one service instance;
//! `plexus proxy --proxy-id ID`: the same for an explicitly registered `connect-proxy` service.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;

use super::{ControlArgs, EXIT_CONFIG, parse_duration};

/// `plexus proxy`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The id of the service instance this sidecar fronts.
    #[arg(
        long = "sidecar-for",
        required_unless_present = "proxy_id",
        conflicts_with = "proxy_id"
    )]
    pub sidecar_for: Option<String>,
    /// The id of an explicitly registered `connect-proxy` service (Consul's `-proxy-id`).
    #[arg(long = "proxy-id")]
    pub proxy_id: Option<String>,
    /// Admin listener (`/ready`, `/metrics`, `/stats`, `/config`); port 0 picks a free port.
    #[arg(long = "admin-addr", default_value = "127.0.0.1:19000")]
    pub admin_addr: String,
    /// How long in-flight connections may take to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Control-plane servers to fail over between, comma-separated (instead of --http-addr).
    #[arg(long = "server", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Close open inbound connections as soon as an intention change denies them (by default
    /// a change applies to new connections only).
    #[arg(long = "close-denied")]
    pub close_denied: bool,
    /// Write a JSON line per HTTP request to this file (appended; created if missing), or to
    /// standard output with `-`.
    #[arg(long = "access-log", value_name = "PATH|-")]
    pub access_log: Option<std::path::PathBuf>,
    /// Keep the last good configuration here (created, mode 0700), and serve from it, marked
    /// stale, when restarted while no control-plane server answers. The leaf's private key is
    /// kept only sealed under the sidecar's ACL token.
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs the proxy until a signal arrives.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let control = if args.servers.is_empty() {
        args.control.client()
    } else {
        args.control.client_for(&args.servers)
    };
    let control = match control {
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
    let state = match args.state_dir.as_deref() {
        None => None,
        Some(dir) => match plexus_proxy::StateDir::open(dir, control.token()) {
            Ok(state) => Some(std::sync::Arc::new(state)),
            Err(error) => {
                eprintln!("error: --state-dir: {error}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    let admin_listener = TcpListener::bind(&args.admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin listener on {}", args.admin_addr))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let config = plexus_proxy::ProxyConfig {
        control,
        sidecar_for: args.sidecar_for.unwrap_or_default(),
        proxy_id: args.proxy_id,
        admin_listener,
        drain_grace: args.grace,
        close_denied: args.close_denied,
        access_log,
        state,
    };
    plexus_proxy::run(config, shutdown.token()).await?;
    Ok(ExitCode::SUCCESS)
}
