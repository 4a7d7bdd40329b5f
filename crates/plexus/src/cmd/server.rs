//! `plexus server`: one control-plane replica (HTTP API, catalog, health, KV) with the agent of its
//! own node, over the embedded store (default, one durable file) or an etcd cluster shared with
//! other replicas.
//!
//! Start-up order: check the configuration (exit 64 on an unknown `--store`, a missing or malformed
//! `--etcd-endpoints`) → bind the HTTP listener → open the store (etcd: retried with jittered
//! backoff while no endpoint answers, saying so in the log) → start the agent and the liveness
//! reaper (remote agents' leases, see `plexus_control::remote`) → serve.
//! Shutdown (SIGINT/SIGTERM): deregister what the agent registered → stop accepting → drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use plexus_agent::{Agent, AgentConfig};
use plexus_api::Node;
use plexus_control::store::EtcdStore;
use plexus_control::store::etcd::{DEFAULT_PREFIX, endpoint_url};
use plexus_control::{ControlPlane, EmbeddedStore, ServerInfo, Store};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config_file::{self, Given};
use super::dev::{
    AclArgs, ConnectSettings, DEFAULT_DATACENTER, check_leaf_ttl, default_node_name, start_acl,
    start_identity,
};
use super::tls::{ServerTlsArgs, serve_https_with, server_names, server_tls};
use super::{EXIT_CONFIG, parse_duration};
use plexus_api::agent_config::Role;

/// `plexus server`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: `embedded` (one durable file in --data-dir) or `etcd` (--etcd-endpoints).
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// Where the embedded store keeps its file.
    #[arg(long = "data-dir", default_value = "plexus-data")]
    pub data_dir: PathBuf,
    /// etcd client endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(long = "etcd-endpoints", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's records in etcd.
    #[arg(long = "etcd-prefix", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// HTTP API address; port 0 picks a free port (the bound address is logged).
    #[arg(long = "http-addr", default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// This server's node name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = DEFAULT_DATACENTER)]
    pub datacenter: String,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Lifetime of the leaf certificates the CA signs (`connect.ca_config.leaf_cert_ttl`), from
    /// 1m to 8760h. Default: the stored setting (72h on a new store).
    #[arg(long = "connect-leaf-ttl", value_parser = parse_duration)]
    pub connect_leaf_ttl: Option<Duration>,
    /// What happens when no intention matches (`connect.default_intention_policy`): `deny`
    /// (a production server's default) or `allow`.
    #[arg(long = "default-intention-policy", default_value = "deny")]
    pub default_intention_policy: plexus_api::connect::DefaultPolicy,
    /// Enforce ACL tokens (`acl.enabled`; on by default for a server).
    #[arg(long = "acl-enabled", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub acl_enabled: bool,
    #[command(flatten)]
    pub acl: AclArgs,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// A configuration file in Consul's format (HCL or JSON): agent keys and/or service
    /// definitions; repeatable, later files win. Flags override it.
    #[arg(long = "config-file")]
    pub config_files: Vec<PathBuf>,
    /// A directory of `.hcl`/`.json` configuration files, read in name order; repeatable.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// DNS interface.
    #[command(flatten)]
    pub dns: super::dns::DnsArgs,
    /// Memory and connection bounds.
    #[command(flatten)]
    pub limits: super::limits::LimitsArgs,
}

/// The validated store choice.
#[derive(Debug, Clone)]
enum StoreChoice {
    Embedded(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

fn store_choice(args: &Args) -> Result<StoreChoice, String> {
    match args.store.as_str() {
        "embedded" => Ok(StoreChoice::Embedded(args.data_dir.clone())),
        "etcd" => {
            if args.etcd_endpoints.is_empty() {
                return Err(
                    "--store etcd needs --etcd-endpoints host:port[,host:port...]".to_owned(),
                );
            }
            for endpoint in &args.etcd_endpoints {
                endpoint_url(endpoint).map_err(|e| format!("--etcd-endpoints: {e}"))?;
            }
            if args.etcd_prefix.is_empty() {
                return Err("--etcd-prefix must not be empty".to_owned());
            }
            Ok(StoreChoice::Etcd {
                endpoints: args.etcd_endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
            })
        }
        other => Err(format!(
            "--store {other:?} is not a store: expected \"embedded\" or \"etcd\""
        )),
    }
}

/// Runs one server replica until a signal arrives.
pub async fn run(mut args: Args, given: Given) -> anyhow::Result<ExitCode> {
    let files = match config_file::load(
        &args.config_files,
        &args.config_dirs,
        Role::Server,
        &given,
        &args.datacenter,
        args.node.as_deref(),
    ) {
        Ok(files) => files,
        Err(code) => return Ok(code),
    };
    let config = &files.agent;
    config_file::apply_server(
        config,
        &given,
        &mut args.datacenter,
        &mut args.node,
        &mut args.tls,
    );
    config_file::apply_listeners(config, &given, &mut args.http_addr, &mut args.tls.https);
    if !given.flag("data_dir")
        && let Some(dir) = &config.data_dir
    {
        args.data_dir.clone_from(dir);
    }
    let advertised = config_file::advertised(config);
    config_file::announce(config);
    let definitions = files.services;
    let choice = match store_choice(&args) {
        Ok(choice) => choice,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Err(message) = check_leaf_ttl(args.connect_leaf_ttl) {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    config_file::apply_acl(
        config,
        &given,
        "acl_enabled",
        &mut args.acl_enabled,
        &mut args.acl,
    );
    let mut acl = match args.acl.settings(args.acl_enabled, Some(&args.data_dir)) {
        Ok(acl) => acl,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    config_file::apply_initial_management(config, &mut acl);
    let dns_config = match args.dns.config(&args.datacenter) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let (https, kek) = match (args.tls.https.plan(true, false), args.tls.kek()) {
        (Ok(https), Ok(kek)) => (https, kek),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let node_name = args.node.clone().unwrap_or_else(default_node_name);
    let listener = if args.tls.https.https_only {
        None
    } else {
        Some(
            TcpListener::bind(&args.http_addr)
                .await
                .with_context(|| format!("cannot bind the HTTP API on {}", args.http_addr))?,
        )
    };
    let https = match https {
        Some(plan) => {
            let listener = TcpListener::bind(&plan.addr)
                .await
                .with_context(|| format!("cannot bind the HTTPS API on {}", plan.addr))?;
            Some((listener, plan))
        }
        None => None,
    };
    let https_addr = match &https {
        Some((listener, _)) => Some(listener.local_addr()?),
        None => None,
    };
    let http_addr = match (&listener, https_addr) {
        (Some(listener), _) => listener.local_addr()?,
        (None, Some(addr)) => addr,
        (None, None) => anyhow::bail!("no API listener"),
    };
    let dns_sockets = args.dns.bind().await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Some(store) = open_store(&choice, args.limits.embedded(), &shutdown.token()).await? else {
        info!("stopped before the store was reachable");
        return Ok(ExitCode::SUCCESS);
    };
    let info = ServerInfo {
        datacenter: args.datacenter.clone(),
        node_name: node_name.clone(),
        leader_addr: http_addr.to_string(),
    };
    let backend = store.status().await.backend;
    let mut control =
        ControlPlane::with_store(store, info).with_auto_encrypt(args.tls.auto_encrypt());
    if let Some(kek) = kek {
        control = control.with_ca_key_encryption(kek);
    }
    start_acl(&mut control, acl).await?;
    start_identity(
        &control,
        ConnectSettings {
            leaf_ttl: args.connect_leaf_ttl,
            default_policy: args.default_intention_policy,
        },
        &shutdown,
    )
    .await?;
    shutdown.spawn(plexus_control::operator::announce(
        control.store(),
        plexus_api::operator::ServerRecord {
            node: node_name.clone(),
            http_addr: http_addr.to_string(),
            store: backend,
        },
        shutdown.token(),
    ));
    shutdown.spawn({
        let (control, stop) = (control.clone(), shutdown.token());
        async move { control.run_liveness(stop).await }
    });
    let node = Node {
        id: format!("server-{node_name}"),
        node: node_name.clone(),
        address: advertised.unwrap_or(http_addr.ip()).to_string(),
        datacenter: args.datacenter.clone(),
        ..Node::default()
    };
    let catalog: Arc<dyn plexus_api::Catalog> = control.catalog();
    let agent = Agent::start(
        AgentConfig {
            node,
            server: true,
            acl: control.resolver(),
        },
        catalog,
        &shutdown,
    )
    .await
    .context("starting the server's agent")?;
    for (file, registration) in &definitions {
        agent.register(registration).await.with_context(|| {
            format!(
                "registering {:?} from {}",
                registration.name,
                file.display()
            )
        })?;
        info!(service = %registration.name, file = %file.display(), "registered from definition");
    }
    let router = control
        .router()
        .merge(agent.router())
        .fallback(plexus_runtime::http::not_found_fallback)
        .method_not_allowed_fallback(plexus_runtime::http::method_not_allowed_fallback);
    super::dns::serve(control.catalog(), dns_config, dns_sockets, &shutdown)?;
    let stop_serving = CancellationToken::new();
    let mut servers = Vec::new();
    if let Some((https_listener, plan)) = https {
        let names = server_names(&args.datacenter, &args.tls.domain, https_addr);
        let tls = server_tls(&plan, Some(control.ca()), names, &shutdown).await?;
        servers.push(serve_https_with(
            https_listener,
            tls,
            router.clone(),
            stop_serving.clone(),
            args.limits.http(),
        )?);
    }
    if let Some(listener) = listener {
        plexus_runtime::telemetry::listening("http", http_addr);
        servers.push(tokio::spawn(plexus_runtime::http::serve_with(
            listener,
            router,
            stop_serving.clone(),
            args.limits.http(),
        )));
    }
    shutdown.token().cancelled().await;
    agent.deregister_all().await;
    stop_serving.cancel();
    let deadline = tokio::time::Instant::now() + args.grace;
    for server in servers {
        match tokio::time::timeout_at(deadline, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "HTTP server failed"),
            Ok(Err(error)) => warn!(%error, "HTTP server task failed"),
            Err(_) => warn!(grace = ?args.grace, "in-flight requests did not finish in time"),
        }
    }
    if !shutdown.drain(args.grace).await {
        warn!("background tasks did not finish within the grace period");
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Opens the store; for etcd, retries with jittered exponential backoff while no endpoint
/// answers. `None` when shutdown came first.
async fn open_store(
    choice: &StoreChoice,
    limits: plexus_control::store::embedded::EmbeddedLimits,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    match choice {
        StoreChoice::Embedded(dir) => {
            let dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, limits))
                .await
                .context("opening the embedded store")?
                .context("opening the embedded store")?;
            info!(path = %store.path().display(), "using embedded store");
            Ok(Some(Arc::new(store)))
        }
        StoreChoice::Etcd { endpoints, prefix } => {
            let mut backoff = Duration::from_millis(200);
            loop {
                match EtcdStore::connect(endpoints, prefix).await {
                    Ok(store) => {
                        info!(endpoints = %endpoints.join(","), %prefix, "using etcd store");
                        return Ok(Some(Arc::new(store)));
                    }
                    Err(error) => {
                        warn!(
                            error = %format!("{:#}", anyhow::Error::new(error)),
                            endpoints = %endpoints.join(","),
                            retry_in = ?backoff,
                            "cannot reach etcd; retrying"
                        );
                    }
                }
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
