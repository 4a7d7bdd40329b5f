//! `plexus events node`: an event node, the language connector by which apps in any language join
//! the event mesh (WebSocket `/ws/events`, protocol in docs/events.md), with its actuator, event
//! over HTTP (`POST /api/event`) and Prometheus metrics (`/metrics`) on one listener.
//!
//! Start-up: check config (exit 64 when invalid, before any socket) → bind → connect the cloud
//! connector → announce to the presence monitor → serve until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use plexus_events::node::{
    AppAuthority, AuthorityFuture, Node, NodeAuth, NodeConfig, Refusal, Secret,
};
use plexus_events::observe::{AccessLog, EventMetrics, Observer, Observers};
use plexus_events::{EventMesh, MeshConfig, Platform, actuator};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tracing::info;

use super::EXIT_CONFIG;

/// `plexus events`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run an event node: apps in any language connect to it over a WebSocket (`/ws/events`) to
    /// register routes and send, request and broadcast events through the mesh.
    Node(NodeArgs),
}

/// Event-mesh settings shared by `events node` and `events-app`: a properties file, then the
/// `PLEXUS_*` environment, then these flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Event mesh settings file (properties: `cloud.connector = nats`, `nats.url = ...`, see
    /// `plexus_events::mesh`); the `PLEXUS_*` environment overrides it, flags override both.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// `cloud.connector`: none, nats or kafka.
    #[arg(long = "cloud-connector")]
    pub connector: Option<String>,
    /// NATS server URL (with `--cloud-connector nats`).
    #[arg(long = "nats-url")]
    pub nats_url: Option<String>,
    /// Kafka bootstrap broker `host:port` (with `--cloud-connector kafka`).
    #[arg(long = "kafka-bootstrap")]
    pub kafka_bootstrap: Option<String>,
    /// Control plane (presence monitor) `host:port`, or several replicas comma-separated (tried in
    /// turn on reconnect); required with a connector.
    #[arg(long = "control")]
    pub control: Option<String>,
    /// Presence group.
    #[arg(long)]
    pub group: Option<String>,
}

impl MeshArgs {
    /// The mesh settings: file, then environment, then flags; every problem reported.
    pub fn mesh_config(&self) -> Result<MeshConfig, Vec<String>> {
        let config = match &self.config {
            Some(path) => MeshConfig::from_file(path).map_err(|e| e.0)?,
            None => MeshConfig::default(),
        };
        let mut config = config.with_env().map_err(|e| e.0)?;
        let mut problems = Vec::new();
        for (key, flag, value) in [
            ("cloud.connector", "--cloud-connector", &self.connector),
            ("nats.url", "--nats-url", &self.nats_url),
            (
                "kafka.bootstrap",
                "--kafka-bootstrap",
                &self.kafka_bootstrap,
            ),
            ("presence.control", "--control", &self.control),
            ("presence.group", "--group", &self.group),
        ] {
            if let Some(value) = value
                && let Err(e) = config.set(key, value, flag)
            {
                problems.push(e);
            }
        }
        if let Err(e) = config.validate() {
            problems.extend(e.0);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// What `/env` shows of the settings (no secrets).
    pub fn shown(config: &MeshConfig) -> BTreeMap<String, String> {
        let mut shown = BTreeMap::new();
        shown.insert(
            "cloud.connector".to_owned(),
            format!("{:?}", config.connector).to_lowercase(),
        );
        shown.insert("presence.group".to_owned(), config.group.clone());
        if let Some(control) = &config.control {
            shown.insert("presence.control".to_owned(), control.clone());
        }
        shown
    }
}

/// `plexus events node`
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's app name (in presence, the catalog and the actuator).
    #[arg(long, default_value = "events-node")]
    pub name: String,
    /// HTTP address: `/ws/events`, the actuator, `POST /api/event`, `/metrics`.
    #[arg(long = "http-addr", default_value = "127.0.0.1:8090")]
    pub http_addr: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// File holding the token apps must present (hello `token`, or `X-Plexus-Token` /
    /// `Authorization: Bearer` on `POST /api/event`). Default: `PLEXUS_EVENTS_TOKEN_FILE`, else an
    /// open node.
    #[arg(long = "token-file", env = "PLEXUS_EVENTS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Take the control plane's ACL tokens instead of one shared token: an app's `hello` token
    /// (and the token of `POST /api/event`, as the node's app `--name`) must grant
    /// `service:write` on the app's name, resolved through `--control` and cached for 30 s.
    #[arg(long = "acl", conflicts_with = "token_file")]
    pub acl: bool,
    /// Largest WebSocket frame read from an app; larger events travel as segments.
    #[arg(long = "max-frame-bytes", default_value_t = NodeConfig::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Largest event, after reassembly.
    #[arg(long = "max-event-bytes", default_value_t = NodeConfig::default().max_event_bytes)]
    pub max_event_bytes: usize,
    /// Most calls one connection may have waiting; more are refused with 429.
    #[arg(long = "max-in-flight", default_value_t = NodeConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Most connected apps.
    #[arg(long = "max-apps", default_value_t = NodeConfig::default().max_sessions)]
    pub max_apps: usize,
    /// How long an event waits for the app serving its route (e.g. `60s`); then 504.
    #[arg(long = "delivery-timeout", default_value = "60s", value_parser = super::parse_duration)]
    pub delivery_timeout: Duration,
    /// JSON access log of handled events and requests: a file path, or `-` for standard output.
    #[arg(long = "access-log")]
    pub access_log: Option<String>,
}

impl NodeArgs {
    fn check(&self) -> Result<(MeshConfig, NodeConfig), Vec<String>> {
        let mut problems = Vec::new();
        let mesh = self.mesh.mesh_config().unwrap_or_else(|more| {
            problems.extend(more);
            MeshConfig::default()
        });
        if self.max_frame_bytes < 4096 {
            problems.push("--max-frame-bytes: at least 4096".to_owned());
        }
        if self.max_event_bytes < self.max_frame_bytes.min(4096)
            || self.max_event_bytes > plexus_events::envelope::MAX_ENVELOPE_BYTES
        {
            problems.push(format!(
                "--max-event-bytes: from 4096 to {}",
                plexus_events::envelope::MAX_ENVELOPE_BYTES
            ));
        }
        for (flag, value) in [
            ("--max-in-flight", self.max_in_flight),
            ("--max-apps", self.max_apps),
        ] {
            if value == 0 {
                problems.push(format!("{flag}: at least 1"));
            }
        }
        if self.delivery_timeout.is_zero() {
            problems.push("--delivery-timeout: must be more than 0".to_owned());
        }
        let auth = match &self.token_file {
            None if self.acl => match acl_authority(mesh.control.as_deref()) {
                Ok(authority) => NodeAuth::Acl(authority),
                Err(problem) => {
                    problems.push(problem);
                    NodeAuth::Open
                }
            },
            None => NodeAuth::Open,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) if !Secret::new(&text).is_empty() => NodeAuth::Token(Secret::new(&text)),
                Ok(_) => {
                    problems.push(format!("--token-file: {} is empty", path.display()));
                    NodeAuth::Open
                }
                Err(e) => {
                    problems.push(format!("--token-file: cannot read {}: {e}", path.display()));
                    NodeAuth::Open
                }
            },
        };
        let node = NodeConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_event_bytes: self.max_event_bytes,
            max_in_flight: self.max_in_flight,
            max_sessions: self.max_apps,
            delivery_timeout: self.delivery_timeout,
            auth,
            ..NodeConfig::default()
        };
        if problems.is_empty() {
            Ok((mesh, node))
        } else {
            Err(problems)
        }
    }
}

/// Runs `plexus events ...`.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node(args) => node(args).await,
    }
}

async fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let (mesh_config, node_config) = match args.check() {
        Ok(configs) => configs,
        Err(problems) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let access_log = match args.access_log.as_deref() {
        None => None,
        Some("-") => Some(AccessLog::stdout()),
        Some(path) => Some(
            AccessLog::open(std::path::Path::new(path))
                .with_context(|| format!("cannot open the access log {path}"))?,
        ),
    };
    let listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot bind the events node on {}", args.http_addr))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let platform = Platform::new(args.name.clone());
    platform.set_advertise(listener.local_addr()?);
    let metrics = EventMetrics::new();
    let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::new(metrics.clone())];
    if let Some(log) = access_log {
        observers.push(Arc::new(log));
    }
    platform.set_observer(Arc::new(Observers(observers)));
    info!(app = %args.name, origin = %platform.origin(), "events node starting");
    let mesh = EventMesh::start(platform.clone(), &mesh_config)
        .await
        .context("joining the event mesh")?;
    let auth = node_config.auth.clone();
    let node = Node::new(platform.clone(), node_config);
    let router = actuator::router(actuator::Actuator::new(
        platform.clone(),
        mesh.presence.clone(),
        MeshArgs::shown(&mesh_config),
        env!("CARGO_PKG_VERSION"),
        auth,
    ))
    .merge(node.router())
    .route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        }),
    );
    let addr = listener.local_addr()?;
    plexus_runtime::telemetry::listening("events", addr);
    plexus_runtime::http::serve(listener, router, shutdown.token()).await?;
    mesh.stop();
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How long the node trusts what the control plane said about a token (as an agent's
/// `acl.token_ttl`): a deleted token may still be accepted for that long.
const ACL_TOKEN_TTL: Duration = Duration::from_secs(30);

/// `--acl`: tokens resolved through the control plane (`--control`), as a remote agent does.
fn acl_authority(control: Option<&str>) -> Result<Arc<dyn AppAuthority>, String> {
    let control = control.ok_or("--acl: needs --control (the control plane resolves tokens)")?;
    let servers: Vec<&str> = control.split(',').map(str::trim).collect();
    let client = plexus_api::client::Client::with_servers(&servers)
        .map_err(|e| format!("--acl: --control {control:?}: {e}"))?;
    let resolver = plexus_agent::acl::RemoteResolver::new(client, ACL_TOKEN_TTL);
    Ok(Arc::new(AclAuthority(plexus_runtime::acl::Resolver(
        Arc::new(resolver),
    ))))
}

/// A token may act as app `A` when it grants `service:write` on `A`.
struct AclAuthority(plexus_runtime::acl::Resolver);

impl AppAuthority for AclAuthority {
    fn may_act_as<'a>(&'a self, token: Option<&'a str>, app: &'a str) -> AuthorityFuture<'a> {
        Box::pin(async move {
            let secret = token.map(plexus_api::acl::SecretId::new);
            let authz = self.0.0.resolve(secret.as_ref()).await.map_err(|error| {
                let status = match error {
                    plexus_runtime::acl::ResolveError::NotFound => 401,
                    plexus_runtime::acl::ResolveError::Unavailable(_) => 503,
                };
                Refusal {
                    status,
                    message: error.to_string(),
                }
            })?;
            authz.require_service_write(app).map_err(|denied| Refusal {
                status: 403,
                message: denied.to_string(),
            })
        })
    }
}
