//! `plexus dev`: control plane + local agent in one process, on the embedded durable store.
//!
//! Start-up order: load and validate every definition (exit 64 on any error, before binding) →
//! bind the HTTP listener → open the store → start the agent → register the definitions → serve.
//! Shutdown (SIGINT/SIGTERM): deregister what the agent registered → stop accepting → let
//! in-flight requests finish within the grace period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use plexus_agent::{Agent, AgentConfig};
use plexus_api::{Node, ServiceRegistration};
use plexus_control::{ControlPlane, ServerInfo};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config_file::{self, Given};
use super::tls::{HttpsPlan, ServerTlsArgs, serve_https_with, server_names, server_tls};
use super::{EXIT_CONFIG, parse_duration};
use plexus_api::agent_config::Role;

/// The datacenter name when none is given (Consul's).
pub const DEFAULT_DATACENTER: &str = "dc1";

/// The environment variable holding the initial management token's secret.
pub const INITIAL_MANAGEMENT_ENV: &str = "PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN";

/// ACL settings of `plexus server` and `plexus dev` (Consul's `acl { ... }` keys).
#[derive(Debug, Clone, clap::Args)]
pub struct AclArgs {
    /// What happens when no ACL rule matches: `deny` (default) or `allow` (`acl.default_policy`).
    #[arg(long = "acl-default-policy", default_value = "deny")]
    pub default_policy: plexus_api::acl::DefaultPolicy,
    /// A file holding the secret of a management token created at start when missing
    /// (`acl.tokens.initial_management`); also PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN.
    #[arg(long = "acl-initial-management-token-file", value_name = "PATH")]
    pub initial_management_file: Option<PathBuf>,
    /// Shortest ExpirationTTL a token may be given (Consul's `token_min_expiration_ttl`).
    #[arg(long = "acl-token-min-expiration-ttl", default_value = "1m", value_parser = parse_duration)]
    pub min_expiration_ttl: Duration,
    /// The token for requests without one (`acl.tokens.default`).
    #[command(flatten)]
    pub default_token: super::DefaultTokenArgs,
}

impl AclArgs {
    /// The control plane's ACL configuration; `Err` names a bad setting (exit 64).
    pub fn settings(
        &self,
        enabled: bool,
        data_dir: Option<&std::path::Path>,
    ) -> Result<AclSettings, String> {
        let initial = match &self.initial_management_file {
            Some(path) => Some(
                plexus_api::client::read_token_file(path)
                    .map_err(|e| format!("--acl-initial-management-token-file: {e}"))?,
            ),
            None => std::env::var(INITIAL_MANAGEMENT_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| plexus_api::acl::SecretId::new(v.trim())),
        };
        if self.min_expiration_ttl > Duration::from_secs(24 * 3600) {
            return Err("--acl-token-min-expiration-ttl must be at most 24h".to_owned());
        }
        Ok(AclSettings {
            config: plexus_control::acl::AclConfig {
                enabled,
                default_policy: self.default_policy,
                reset_file: data_dir.map(|d| d.join(plexus_control::acl::RESET_FILE)),
                min_expiration_ttl: self.min_expiration_ttl,
                ..plexus_control::acl::AclConfig::default()
            },
            initial_management: initial,
            default_token: None,
        })
    }
}

/// What a dev control plane is configured with besides its address, store and definitions.
#[derive(Debug, Clone, Default)]
pub struct DevSettings {
    /// Identity (leaf TTL, default intention policy).
    pub connect: ConnectSettings,
    /// Access control.
    pub acl: AclSettings,
    /// Job instances the local agent runs (`None`: none).
    pub jobs: Option<super::job::AgentJobArgs>,
}

/// Validated ACL settings.
#[derive(Debug, Clone, Default)]
pub struct AclSettings {
    /// The control plane's configuration.
    pub config: plexus_control::acl::AclConfig,
    /// The initial management token, if any.
    pub initial_management: Option<plexus_api::acl::SecretId>,
    /// The token requests without one (HTTP API and DNS) are resolved as
    /// (`acl.tokens.default`); none: the anonymous token.
    pub default_token: Option<plexus_api::acl::SecretId>,
}

/// Applies ACL settings to a control plane and says which mode it runs in.
pub async fn start_acl(
    control: &mut plexus_control::ControlPlane,
    settings: AclSettings,
) -> anyhow::Result<()> {
    let enabled = settings.config.enabled;
    let default_policy = settings.config.default_policy;
    control.configure_acl(settings.config);
    control
        .acl()
        .start(settings.initial_management.as_ref())
        .await
        .context("starting the ACL system")?;
    if settings.default_token.is_some() {
        info!(
            "a default token is configured: HTTP requests and DNS queries without a token are resolved as it"
        );
    }
    control.set_resolver(
        control
            .resolver()
            .with_default_token(settings.default_token),
    );
    if enabled {
        info!(%default_policy, "ACLs enabled: every request needs a token with the right policy (PUT /v1/acl/bootstrap for the first management token)");
    } else {
        warn!("ACLs disabled: the API is open to anyone who can reach it");
    }
    Ok(())
}

/// `plexus dev`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// HTTP API address; port 0 picks a free port (the bound address is logged).
    #[arg(long = "http-addr", default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// Where the embedded store keeps its file (default: a fresh temporary directory).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// A configuration file in Consul's format (HCL or JSON): agent keys and/or service
    /// definitions; repeatable, later files win. Flags override it.
    #[arg(long = "config-file")]
    pub config_files: Vec<PathBuf>,
    /// A directory of `.hcl`/`.json` configuration files, read in name order; repeatable.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// This node's name (default: the host name).
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
    /// What happens when no intention matches (`connect.default_intention_policy`): `allow`
    /// (the dev default) or `deny` (a production server's default).
    #[arg(long = "default-intention-policy", default_value = "allow")]
    pub default_intention_policy: plexus_api::connect::DefaultPolicy,
    /// Enforce ACL tokens (off by default in dev mode: the API is open).
    #[arg(long)]
    pub acl: bool,
    #[command(flatten)]
    pub acl_args: AclArgs,
    #[command(flatten)]
    pub grpc: super::grpc::GrpcArgs,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// DNS interface.
    #[command(flatten)]
    pub dns: super::dns::DnsArgs,
    /// Memory and connection bounds.
    #[command(flatten)]
    pub limits: super::limits::LimitsArgs,
    /// Job instances the local agent runs (`--job-slots N`).
    #[command(flatten)]
    pub jobs: super::job::AgentJobArgs,
}

/// Creates (or loads) the CA with `connect`'s leaf TTL, sets the default intention policy and
/// starts root retirement. Creation is a compare-and-set, so replicas starting together agree on
/// one root; the root exists before anything can ask for a certificate.
pub async fn start_identity(
    control: &plexus_control::ControlPlane,
    connect: ConnectSettings,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let ca = control.ca();
    match connect.leaf_ttl {
        Some(ttl) => ca.bootstrap_with_leaf_ttl(ttl).await,
        None => ca.bootstrap().await,
    }
    .context("creating the CA")?;
    control
        .intentions()
        .set_default_policy(connect.default_policy);
    info!(
        trust_domain = %ca.trust_domain().await.context("reading the CA")?,
        default_intention_policy = %connect.default_policy,
        "connect CA ready"
    );
    shutdown.spawn(ca.run_retirement(shutdown.token().cancelled_owned()));
    Ok(())
}

/// `Err(message)` when a `--connect-leaf-ttl` is outside what the CA accepts.
pub fn check_leaf_ttl(ttl: Option<Duration>) -> Result<(), String> {
    let bounds =
        plexus_control::ca::policy::MIN_LEAF_TTL..=plexus_control::ca::policy::MAX_LEAF_TTL;
    match ttl {
        Some(ttl) if !bounds.contains(&ttl) => Err(format!(
            "--connect-leaf-ttl must be between 1m and 8760h, not {ttl:?}"
        )),
        _ => Ok(()),
    }
}

/// The identity settings of a dev server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectSettings {
    /// Leaf TTL to configure at start (`None`: keep the stored one).
    pub leaf_ttl: Option<Duration>,
    /// Default intention policy.
    pub default_policy: plexus_api::connect::DefaultPolicy,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            leaf_ttl: None,
            default_policy: plexus_api::connect::DefaultPolicy::Allow,
        }
    }
}

/// The host name, or `plexus-dev` when it cannot be read.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "plexus-dev".to_owned())
}

/// Expands `--config-file`/`--config-dir` arguments (and plain paths, files or directories)
/// into a sorted list of definition files.
pub fn collect_definition_files(
    paths: &[PathBuf],
    dirs: &[PathBuf],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths.iter().chain(dirs) {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading config directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("hcl" | "json")))
                .collect();
            found.sort();
            files.extend(found);
        } else if dirs.contains(path) {
            anyhow::bail!("config directory {} is not a directory", path.display());
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Runs the dev control plane until a signal arrives.
pub async fn run(mut args: Args, given: Given) -> anyhow::Result<ExitCode> {
    // Configuration first: nothing is bound when it is invalid.
    let files = match config_file::load(
        &args.config_files,
        &args.config_dirs,
        Role::Dev,
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
    config_file::apply_grpc(config, &mut args.grpc);
    if args.data_dir.is_none() {
        args.data_dir.clone_from(&config.data_dir);
    }
    config_file::announce(config);
    let node_name = args.node.clone().unwrap_or_else(default_node_name);
    let definitions = files.services;
    if let Err(message) = check_leaf_ttl(args.connect_leaf_ttl) {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let dns_config = match args.dns.config(&args.datacenter) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let connect = ConnectSettings {
        leaf_ttl: args.connect_leaf_ttl,
        default_policy: args.default_intention_policy,
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
    config_file::apply_acl(config, &given, "acl", &mut args.acl, &mut args.acl_args);
    let mut acl = match args.acl_args.settings(args.acl, args.data_dir.as_deref()) {
        Ok(acl) => acl,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    config_file::apply_initial_management(config, &mut acl);
    match args.acl_args.default_token.resolve(config) {
        Ok(token) => acl.default_token = token,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    }
    let (https, kek) = match (args.tls.https.plan(true, false), args.tls.kek()) {
        (Ok(https), Ok(kek)) => (https, kek),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let http = if args.tls.https.https_only {
        None
    } else {
        Some(
            TcpListener::bind(&args.http_addr)
                .await
                .with_context(|| format!("cannot bind the HTTP API on {}", args.http_addr))?,
        )
    };
    let https = match https {
        Some(plan) => Some((
            TcpListener::bind(&plan.addr)
                .await
                .with_context(|| format!("cannot bind the HTTPS API on {}", plan.addr))?,
            plan,
        )),
        None => None,
    };
    let dns_sockets = args.dns.bind().await?;
    let grpc = super::grpc::bind(grpc).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let security = DevSecurity {
        kek,
        auto_encrypt: args.tls.auto_encrypt(),
        limits: args.limits.clone(),
    };
    let dev = DevServer::start_secured(
        DevListeners { http, https },
        security,
        args.data_dir.clone(),
        &node_name,
        &args.datacenter,
        &definitions,
        DevSettings {
            connect,
            acl,
            jobs: Some(super::job::AgentJobArgs {
                xds_addr: grpc.plain_addr(),
                ..args.jobs.clone()
            }),
        },
        &shutdown,
    )
    .await?;
    super::grpc::start(
        grpc,
        dev.https_tls.clone(),
        dev.http_addr,
        &node_name,
        dev.control.resolver(),
        args.limits.http(),
        &shutdown,
    )?;
    super::dns::serve(
        dev.control.catalog(),
        dev.control.queries(),
        dev.control.federation(),
        dev.control.resolver(),
        dns_config,
        dns_sockets,
        &shutdown,
    )?;
    shutdown.token().cancelled().await;
    dev.stop(args.grace).await;
    if !shutdown.drain(args.grace).await {
        warn!("background tasks did not finish within the grace period");
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A running control plane + agent, as `plexus dev` and `plexus demo` use it.
pub struct DevServer {
    /// The bound API address: the HTTP listener's, or the HTTPS one's with `--https-only`.
    pub http_addr: SocketAddr,
    /// The local agent.
    pub agent: Agent,
    /// The control plane.
    pub control: ControlPlane,
    /// The HTTPS listener's TLS (certificate renewed in place), shared with `--grpc-tls-addr`.
    pub https_tls: Option<plexus_runtime::tls::TlsServer>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop_serving: CancellationToken,
    _temp_dir: Option<tempfile::TempDir>,
}

/// The API listeners of a dev server (at least one).
pub struct DevListeners {
    /// Plain HTTP (`None` with `--https-only`).
    pub http: Option<TcpListener>,
    /// HTTPS, with its plan.
    pub https: Option<(TcpListener, HttpsPlan)>,
}

/// Secrets and TLS settings of a dev server.
#[derive(Default)]
pub struct DevSecurity {
    /// Wraps the CA's keys in the store.
    pub kek: Option<plexus_control::ca::wrap::KeyEncryptionKey>,
    /// Whether agents may have their certificates signed.
    pub auto_encrypt: plexus_control::ca::auto_encrypt::AutoEncrypt,
    /// Memory and connection bounds.
    pub limits: super::limits::LimitsArgs,
}

impl DevServer {
    /// Opens the store (a fresh temporary one without `data_dir`), starts the agent, registers
    /// `definitions` and serves the HTTP API on `listener`.
    pub async fn start(
        listener: TcpListener,
        data_dir: Option<PathBuf>,
        node_name: &str,
        datacenter: &str,
        definitions: &[(PathBuf, ServiceRegistration)],
        settings: DevSettings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let listeners = DevListeners {
            http: Some(listener),
            https: None,
        };
        Self::start_secured(
            listeners,
            DevSecurity::default(),
            data_dir,
            node_name,
            datacenter,
            definitions,
            settings,
            shutdown,
        )
        .await
    }

    /// [`DevServer::start`] with an HTTPS listener (and possibly no HTTP one), a key-encryption
    /// key for the CA and auto-encrypt settings.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_secured(
        listeners: DevListeners,
        security: DevSecurity,
        data_dir: Option<PathBuf>,
        node_name: &str,
        datacenter: &str,
        definitions: &[(PathBuf, ServiceRegistration)],
        settings: DevSettings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let DevSettings { connect, acl, jobs } = settings;
        let https_addr = match &listeners.https {
            Some((listener, _)) => Some(listener.local_addr()?),
            None => None,
        };
        let http_addr = match (&listeners.http, https_addr) {
            (Some(listener), _) => listener.local_addr()?,
            (None, Some(addr)) => addr,
            (None, None) => anyhow::bail!("no API listener"),
        };
        let temporary = data_dir.is_none();
        let (data_dir, temp_dir) = match data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new().prefix("plexus-dev-").tempdir()?;
                // Private: the store in it holds the CA's keys.
                std::fs::set_permissions(
                    temp.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(
                        plexus_runtime::private_fs::DIR_MODE,
                    ),
                )?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        info!(data_dir = %data_dir.display(), temporary, "using embedded store");
        let info = ServerInfo {
            datacenter: datacenter.to_owned(),
            node_name: node_name.to_owned(),
            leader_addr: http_addr.to_string(),
        };
        let mut control =
            ControlPlane::open_embedded_with(&data_dir, info, security.limits.embedded())
                .with_context(|| format!("opening the store in {}", data_dir.display()))?
                .with_auto_encrypt(security.auto_encrypt.clone());
        if let Some(kek) = security.kek {
            control = control.with_ca_key_encryption(kek);
        }
        let mut acl = acl;
        // The job runner talks to this control plane as its agent would, with the initial
        // management token when ACLs are on.
        let runner_token = acl.initial_management.clone();
        if acl.config.reset_file.is_none() {
            acl.config.reset_file = Some(data_dir.join(plexus_control::acl::RESET_FILE));
        }
        start_acl(&mut control, acl).await?;
        start_identity(&control, connect, shutdown).await?;
        shutdown.spawn({
            let (control, stop) = (control.clone(), shutdown.token());
            async move { control.run_sessions(stop).await }
        });
        shutdown.spawn({
            let (control, stop) = (control.clone(), shutdown.token());
            async move { control.run_jobs(stop).await }
        });
        let catalog: Arc<dyn plexus_api::Catalog> = control.catalog();
        let node = Node {
            id: node_id(node_name),
            node: node_name.to_owned(),
            address: "127.0.0.1".to_owned(),
            datacenter: datacenter.to_owned(),
            meta: jobs.as_ref().map(|j| j.node_meta()).unwrap_or_default(),
            ..Node::default()
        };
        let agent = Agent::start(
            AgentConfig {
                node,
                server: true,
                acl: control.resolver(),
                host_ports: Some(plexus_agent::host_ports_dir()),
            },
            catalog,
            shutdown,
        )
        .await
        .context("starting the agent")?;
        for (file, registration) in definitions {
            agent.register(registration).await.with_context(|| {
                format!(
                    "registering {:?} from {}",
                    registration.name,
                    file.display()
                )
            })?;
            info!(service = %registration.name, file = %file.display(), "registered from definition");
        }
        let runner = match &jobs {
            Some(jobs) => jobs.runner(
                plexus_api::client::Client::new(&http_addr.to_string())?
                    .with_token(runner_token.clone()),
                node_name,
                http_addr,
                runner_token,
            )?,
            None => None,
        };
        let mut router = control.router().merge(agent.router());
        if let Some(config) = &runner {
            router = router.merge(plexus_agent::job::logs_router(
                &agent,
                config.data_dir.clone(),
            ));
        }
        let router = router
            .fallback(plexus_runtime::http::not_found_fallback)
            .method_not_allowed_fallback(plexus_runtime::http::method_not_allowed_fallback);
        let stop_serving = CancellationToken::new();
        let mut servers = Vec::new();
        let mut https_tls = None;
        if let Some((listener, plan)) = listeners.https {
            let names = server_names(datacenter, &security.auto_encrypt.domain, https_addr);
            let tls = server_tls(&plan, Some(control.ca()), names, shutdown).await?;
            https_tls = Some(tls.clone());
            servers.push(serve_https_with(
                listener,
                tls,
                router.clone(),
                stop_serving.clone(),
                security.limits.http(),
            )?);
        } else {
            info!("no HTTPS listener: API traffic is plaintext (see --https-addr)");
        }
        if let Some(listener) = listeners.http {
            plexus_runtime::telemetry::listening("http", http_addr);
            servers.push(tokio::spawn(plexus_runtime::http::serve_with(
                listener,
                router,
                stop_serving.clone(),
                security.limits.http(),
            )));
        }
        if let Some(config) = runner {
            shutdown.spawn(plexus_agent::job::run(
                agent.clone(),
                config,
                shutdown.clone(),
            ));
        }
        Ok(Self {
            http_addr,
            agent,
            control,
            https_tls,
            servers,
            stop_serving,
            _temp_dir: temp_dir,
        })
    }

    /// Deregisters what the agent registered, stops accepting, and lets in-flight requests
    /// finish within `grace`.
    pub async fn stop(self, grace: Duration) {
        self.agent.deregister_all().await;
        self.stop_serving.cancel();
        let all = futures_join_all(self.servers);
        match tokio::time::timeout(grace, all).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => warn!(%error, "HTTP server failed"),
                        Err(error) => warn!(%error, "HTTP server task failed"),
                    }
                }
            }
            Err(_) => warn!(
                ?grace,
                "in-flight requests did not finish within the grace period"
            ),
        }
    }
}

/// Waits for every task, in order.
async fn futures_join_all<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await);
    }
    results
}

/// A stable node id derived from the node name (UUID-shaped, as Consul shows node ids).
fn node_id(name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut a);
    let x = a.finish();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (name, 1u8).hash(&mut b);
    let y = b.finish();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xffff,
        y >> 48,
        y & 0xffff_ffff_ffff
    )
}
