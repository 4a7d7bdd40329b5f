//! `plexus server`: one control-plane replica (HTTP API, catalog, health, KV) with the agent of its
//! own node, over the embedded store (default, one durable file) or an etcd cluster shared with
//! other replicas.
//!
//! Start-up order: check the configuration (exit 64 on an unknown `--store`, a missing or malformed
//! `--etcd-endpoints`, unreadable `--etcd-cacert`/`--etcd-cert`/`--etcd-key`/`--etcd-password-file`)
//! → bind the HTTP listener → open the store (etcd: retried with jittered backoff while no endpoint
//! answers, saying so in the log; a wrong CA, a refused password or a user without permission on
//! `--etcd-prefix` ends the process at once with a message saying which) → start the agent and
//! the liveness reaper (remote agents' leases, see `plexus_control::remote`) and the store-quorum
//! monitor (requests are refused with 503 `no_quorum` while the store cannot be reached, see
//! `plexus_control::quorum`) → serve.
//! Shutdown (SIGINT/SIGTERM): deregister what the agent registered → stop accepting → drain.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use plexus_agent::{Agent, AgentConfig};
use plexus_api::Node;
use plexus_control::store::EtcdStore;
use plexus_control::store::etcd::{
    Credentials, DEFAULT_PREFIX, EtcdError, EtcdOptions, Password, TlsFiles,
};
use plexus_control::{ControlPlane, EmbeddedStore, ServerInfo, Store};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::addresses::{self, AddressArgs};
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
    /// etcd client endpoints, comma-separated (`host:port`, `http://host:port` or
    /// `https://host:port`); requests fail over between them.
    #[arg(long = "etcd-endpoints", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's records in etcd: clusters (or other applications) with
    /// different prefixes share one etcd without seeing each other.
    #[arg(long = "etcd-prefix", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// CA bundle (PEM) that signed the etcd members' certificates: talk TLS to etcd.
    #[arg(long = "etcd-cacert")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication (with --etcd-key).
    #[arg(long = "etcd-cert")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "etcd-key")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (with --etcd-password-file or PLEXUS_ETCD_PASSWORD).
    #[arg(long = "etcd-username", env = "PLEXUS_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// File holding the etcd user's password (one line). Or set PLEXUS_ETCD_PASSWORD.
    #[arg(long = "etcd-password-file")]
    pub etcd_password_file: Option<PathBuf>,
    /// HTTP API address; port 0 picks a free port (the bound address is logged). Default:
    /// `client_addr`, else `bind_addr`, else `0.0.0.0`, port 8500: a server's API is also where
    /// agents on other hosts reach it.
    #[arg(long = "http-addr", default_value = "0.0.0.0:8500")]
    pub http_addr: String,
    #[command(flatten)]
    pub addresses: AddressArgs,
    /// This server's node name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = DEFAULT_DATACENTER)]
    pub datacenter: String,
    /// Other datacenters' servers to federate with (`retry_join_wan`): their HTTP API,
    /// `host:port`, `http://host:port` or `https://host:port` (verified with `--ca-file`, this
    /// server's `--cert-file` presented), comma-separated; retried with backoff until they
    /// answer. The server presents `acl.tokens.replication` there, else its initial management
    /// token.
    #[arg(long = "retry-join-wan", value_delimiter = ',')]
    pub retry_join_wan: Vec<String>,
    /// The datacenter whose CA the federation trusts (`primary_datacenter`). In any other
    /// datacenter the CA signs with an intermediate the primary's root signed (asked for over
    /// the WAN once the primary's servers are known). Default: this server's datacenter.
    #[arg(long = "primary-datacenter")]
    pub primary_datacenter: Option<String>,
    /// Federate through mesh gateways (`connect.enable_mesh_gateway_wan_federation`): another
    /// datacenter whose mesh gateways are known is reached only through them, over HTTPS to
    /// `server.<dc>.consul` verified end to end (the gateway passes it to a server there, see
    /// `plexus gateway --servers`), and this datacenter's gateways are told to the others.
    /// Needs the HTTPS API and `--ca-file`; every server's certificate names
    /// `server.<its dc>.consul`.
    #[arg(long = "mesh-gateway-wan-federation")]
    pub mesh_gateway_wan_federation: bool,
    /// The primary datacenter's mesh gateways (`primary_gateways`, `ip:port`, comma-separated):
    /// this server joins the primary through them (`--primary-datacenter` names it). Implies
    /// `--mesh-gateway-wan-federation`.
    #[arg(long = "primary-gateways", value_delimiter = ',')]
    pub primary_gateways: Vec<SocketAddr>,
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
    pub grpc: super::grpc::GrpcArgs,
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

/// The environment variable holding the etcd password (when no file is named).
pub const ETCD_PASSWORD_ENV: &str = "PLEXUS_ETCD_PASSWORD";

/// The validated store choice.
#[derive(Debug, Clone)]
enum StoreChoice {
    Embedded(PathBuf),
    Etcd(EtcdOptions),
}

/// The etcd user and password from the flags, the password file or the environment.
fn credentials(args: &Args) -> Result<Option<Credentials>, String> {
    let password = match &args.etcd_password_file {
        Some(path) => Some(Password::new(std::fs::read_to_string(path).map_err(
            |e| format!("--etcd-password-file: cannot read {}: {e}", path.display()),
        )?)),
        None => std::env::var(ETCD_PASSWORD_ENV).ok().map(Password::new),
    };
    match (&args.etcd_username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials {
            username: username.clone(),
            password,
        })),
        (Some(_), None) => Err(format!(
            "--etcd-username needs a password: --etcd-password-file FILE or {ETCD_PASSWORD_ENV}"
        )),
        (None, Some(_)) if args.etcd_password_file.is_some() => {
            Err("--etcd-password-file needs --etcd-username".to_owned())
        }
        (None, _) => Ok(None),
    }
}

fn store_choice(args: &Args) -> Result<StoreChoice, String> {
    match args.store.as_str() {
        "embedded" => Ok(StoreChoice::Embedded(args.data_dir.clone())),
        "etcd" => {
            let tls = match &args.etcd_cacert {
                Some(ca) => Some(
                    TlsFiles::read(ca, args.etcd_cert.as_deref(), args.etcd_key.as_deref())
                        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?,
                ),
                None if args.etcd_cert.is_some() || args.etcd_key.is_some() => {
                    return Err("--etcd-cert and --etcd-key need --etcd-cacert".to_owned());
                }
                None => None,
            };
            let options = EtcdOptions::build(
                &args.etcd_endpoints,
                &args.etcd_prefix,
                tls,
                credentials(args)?,
            )
            .map_err(|e| e.to_string())?;
            Ok(StoreChoice::Etcd(options))
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
    let address_settings = match addresses::settings(&args.addresses, config) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // The API listens on client_addr, else bind_addr, else every interface.
    let mut listeners = config.clone();
    listeners.client_addr = Some(
        address_settings
            .client
            .or(address_settings.bind)
            .unwrap_or(IpAddr::from([0, 0, 0, 0])),
    );
    config_file::apply_listeners(&listeners, &given, &mut args.http_addr, &mut args.tls.https);
    config_file::apply_grpc(config, &mut args.grpc);
    if !given.flag("data_dir")
        && let Some(dir) = &config.data_dir
    {
        args.data_dir.clone_from(dir);
    }
    let api_ip = if args.tls.https.https_only {
        args.tls.https.https_addr.as_deref()
    } else {
        Some(args.http_addr.as_str())
    }
    .and_then(|addr| addr.parse::<SocketAddr>().ok())
    .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
    let addresses = match address_settings.resolve(addresses::Role::Server { listener: api_ip }) {
        Ok(addresses) => addresses,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let advertised = addresses.advertised.addr;
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
    match args.acl.default_token.resolve(config) {
        Ok(token) => acl.default_token = token,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    }
    let dns_config = match args.dns.config(&args.datacenter) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let grpc = match args.grpc.listen(
        args.tls.https.https_only,
        args.tls.https.https_addr.is_some(),
    ) {
        Ok(listen) => listen,
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
    if let Some(primary) = &args.primary_datacenter
        && !plexus_control::wan::valid_name(primary)
    {
        eprintln!(
            "error: --primary-datacenter {primary:?}: expected 1 to 128 letters, digits, '-' and '_'"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let wan_tls = match wan_tls(&args) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let via_gateways = args.mesh_gateway_wan_federation || !args.primary_gateways.is_empty();
    if via_gateways && (wan_tls.is_none() || args.tls.https.https_addr.is_none()) {
        eprintln!(
            "error: --mesh-gateway-wan-federation/--primary-gateways: servers are reached through mesh gateways over HTTPS verified end to end: give --https-addr and --ca-file"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let gateway_primary = args
        .primary_datacenter
        .clone()
        .or_else(|| config.primary_datacenter.clone())
        .filter(|primary| *primary != args.datacenter);
    if !args.primary_gateways.is_empty() && gateway_primary.is_none() {
        eprintln!(
            "error: --primary-gateways: name the primary datacenter (another than this one) with --primary-datacenter"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let mut wan_joins = match wan_joins(&args, config, wan_tls.as_ref()) {
        Ok(joins) => joins,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Some(primary) = gateway_primary.as_deref()
        && !args.primary_gateways.is_empty()
    {
        let (bases, options) = plexus_control::wan::gateway_client_options(
            primary,
            &args.primary_gateways,
            wan_tls.clone(),
        );
        wan_joins.push(plexus_control::wan::join::Join {
            address: bases.join(","),
            token: None,
            tls: options.tls,
            resolve: options.resolve,
        });
    }
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
    let grpc = super::grpc::bind(grpc).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Some(store) = open_store(&choice, args.limits.embedded(), &shutdown.token()).await? else {
        info!("stopped before the store was reachable");
        return Ok(ExitCode::SUCCESS);
    };
    // Where others reach this server: the advertised address, the API's port.
    let reach = SocketAddr::new(advertised, http_addr.port());
    let info = ServerInfo {
        datacenter: args.datacenter.clone(),
        node_name: node_name.clone(),
        leader_addr: reach.to_string(),
    };
    let backend = store.status().await.backend;
    let federation = plexus_control::wan::Federation::new(&args.datacenter)
        .with_tls(wan_tls.clone())
        .via_gateways(via_gateways);
    // Other datacenters reach this server at its WAN address (`advertise_addr_wan`), else the
    // advertised one: over HTTPS when it serves HTTPS and has a CA file (it talks HTTPS to
    // other datacenters then too), else over its HTTP listener.
    let (scheme, port) = match https_addr {
        Some(https) if listener.is_none() || wan_tls.is_some() => ("https", https.port()),
        _ => ("http", http_addr.port()),
    };
    let wan_reach = SocketAddr::new(addresses.wan.unwrap_or(advertised), port);
    federation.add_own_server(format!("{scheme}://{wan_reach}"));
    if let Some(primary) = gateway_primary.as_deref() {
        // Until the primary tells its gateways, the ones named here reach it.
        federation.learn_gateways(primary, args.primary_gateways.clone());
    }
    let mut control = ControlPlane::with_store(store, info)
        .with_auto_encrypt(args.tls.auto_encrypt())
        .with_federation(federation);
    if let Some(kek) = kek {
        control = control.with_ca_key_encryption(kek);
    }
    let wan_token = config
        .acl
        .replication_token
        .as_ref()
        .map(|secret| plexus_api::acl::SecretId::new(secret.expose()))
        .or_else(|| acl.initial_management.clone());
    start_acl(&mut control, acl).await?;
    let primary = args
        .primary_datacenter
        .clone()
        .or_else(|| config.primary_datacenter.clone())
        .filter(|primary| *primary != args.datacenter);
    if let Some(primary) = primary {
        info!(%primary, "secondary datacenter: the CA will sign with an intermediate of the primary's root");
        control.ca().expect_primary(&primary);
        shutdown.spawn(plexus_control::ca::federation::run_secondary(
            control.ca(),
            control.federation(),
            primary,
            wan_token.clone(),
            shutdown.token(),
        ));
    }
    if via_gateways {
        shutdown.spawn(plexus_control::wan::gateways::follow_own(
            control.federation(),
            control.catalog(),
            shutdown.token(),
        ));
    }
    for join in wan_joins {
        shutdown.spawn(plexus_control::wan::join::run(
            control.federation(),
            plexus_control::wan::join::Join {
                token: wan_token.clone(),
                ..join
            },
            shutdown.token(),
        ));
    }
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
            http_addr: reach.to_string(),
            store: backend,
        },
        shutdown.token(),
    ));
    shutdown.spawn({
        let (control, stop) = (control.clone(), shutdown.token());
        async move { control.run_liveness(stop).await }
    });
    shutdown.spawn({
        let (control, stop) = (control.clone(), shutdown.token());
        async move { control.run_sessions(stop).await }
    });
    shutdown.spawn({
        let (control, stop) = (control.clone(), shutdown.token());
        async move { control.run_jobs(stop).await }
    });
    let node = Node {
        id: format!("server-{node_name}"),
        node: node_name.clone(),
        address: advertised.to_string(),
        datacenter: args.datacenter.clone(),
        tagged_addresses: addresses.tagged(),
        ..Node::default()
    };
    let catalog: Arc<dyn plexus_api::Catalog> = control.catalog();
    let agent = Agent::start(
        AgentConfig {
            node,
            server: true,
            acl: control.resolver(),
            host_ports: Some(plexus_agent::host_ports_dir()),
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
    // While the store has no quorum (an etcd minority), every request is refused at once.
    let (quorum_tx, quorum) =
        tokio::sync::watch::channel(plexus_control::quorum::Quorum::default());
    shutdown.spawn(plexus_control::quorum::monitor(
        control.store(),
        quorum_tx,
        shutdown.token(),
    ));
    let router = control
        .router()
        .merge(agent.router())
        .fallback(plexus_runtime::http::not_found_fallback)
        .method_not_allowed_fallback(plexus_runtime::http::method_not_allowed_fallback)
        .layer(axum::middleware::from_fn_with_state(
            quorum,
            plexus_control::quorum::refuse_without_quorum,
        ));
    super::dns::serve(
        control.catalog(),
        control.queries(),
        control.federation(),
        control.resolver(),
        dns_config,
        dns_sockets,
        &shutdown,
    )?;
    let stop_serving = CancellationToken::new();
    let mut servers = Vec::new();
    let mut https_tls = None;
    if let Some((https_listener, plan)) = https {
        let names = server_names(&args.datacenter, &args.tls.domain, https_addr);
        let tls = server_tls(&plan, Some(control.ca()), names, &shutdown).await?;
        https_tls = Some(tls.clone());
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
    super::grpc::start(
        grpc,
        https_tls,
        http_addr,
        &node_name,
        control.resolver(),
        args.limits.http(),
        &shutdown,
    )?;
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

/// The datacenters' servers to join: `--retry-join-wan`, else the file's `retry_join_wan`;
/// `Err` names the bad one.
fn wan_joins(
    args: &Args,
    config: &plexus_api::agent_config::AgentConfig,
    tls: Option<&plexus_control::wan::ClientTls>,
) -> Result<Vec<plexus_control::wan::join::Join>, String> {
    let (key, addresses) = if args.retry_join_wan.is_empty() {
        ("retry_join_wan", &config.retry_join_wan)
    } else {
        ("--retry-join-wan", &args.retry_join_wan)
    };
    addresses
        .iter()
        .map(|address| {
            let join = plexus_control::wan::join::Join {
                address: address.trim().to_owned(),
                token: None,
                tls: tls.cloned(),
                resolve: Vec::new(),
            };
            join.client()
                .map(|_| join)
                .map_err(|e| format!("{key}: {address:?}: {e}"))
        })
        .collect()
}

/// TLS towards other datacenters' `https://` servers: `--ca-file` (`tls.ca_file`) as the roots,
/// `--cert-file`/`--key-file` presented when given; `None` without a CA file.
fn wan_tls(args: &Args) -> Result<Option<plexus_control::wan::ClientTls>, String> {
    let https = &args.tls.https;
    let Some(ca_file) = &https.ca_file else {
        return Ok(None);
    };
    let roots = plexus_runtime::tls::Roots::from_file(ca_file)
        .map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
    let identity = match (&https.cert_file, &https.key_file) {
        (Some(cert), Some(key)) => Some(
            plexus_runtime::tls::Identity::from_files(cert, key)
                .map_err(|e| format!("--cert-file/--key-file: {e}"))?,
        ),
        _ => None,
    };
    plexus_runtime::tls::client_config(&roots, identity.as_ref(), None)
        .map(Some)
        .map_err(|e| format!("TLS for other datacenters: {e}"))
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
        StoreChoice::Etcd(options) => {
            let endpoints = options.endpoints.join(",");
            let mut backoff =
                plexus_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                let delay = backoff.next_delay();
                match EtcdStore::open(options.clone()).await {
                    Ok(store) => {
                        info!(%endpoints, prefix = %options.prefix, "using etcd store");
                        return Ok(Some(Arc::new(store)));
                    }
                    Err(error) if !is_transient(&error) => {
                        return Err(anyhow::Error::new(error).context("cannot use the etcd store"));
                    }
                    Err(error) => {
                        warn!(
                            error = %plexus_runtime::ErrorChain(&error),
                            %endpoints,
                            retry_in = ?delay,
                            "cannot reach etcd; retrying"
                        );
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// True when an etcd start-up failure may go away by itself (nothing reachable yet, an election);
/// a wrong CA, password or permission will not.
fn is_transient(error: &plexus_control::StoreError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(etcd) = cause.downcast_ref::<EtcdError>() {
            return etcd.is_transient();
        }
        source = cause.source();
    }
    true
}
