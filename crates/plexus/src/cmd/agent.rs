//! `plexus agent --server a,b,c`: the node agent on a machine without a server.
//!
//! Serves the agent API (`/v1/agent/*`) for the local sidecars and tools and passes every other
//! request on to a server (with failover), so sidecars and the CLI point at their local agent.
//! Writes its node through the servers' `/v1/internal/node/*` endpoints ([`HttpCatalog`]), holds
//! the node's liveness lease (renewed every third of `--lease-ttl`), keeps running its checks while
//! no server answers, and re-registers what it owns when servers answer again or after its lease
//! expired.
//!
//! Start-up: check definitions and flags (exit 64) → bind → register the node (retried with
//! backoff while no server answers) → register the definitions → take the lease → serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use plexus_agent::{Agent, AgentConfig};
use plexus_api::Node;
use plexus_api::client::Client;
use plexus_api::remote_catalog::HttpCatalog;
use plexus_runtime::Shutdown;
use plexus_runtime::http::{ApiError, read_body};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::auto_encrypt::AgentRequest;
use super::config_file::{self, Given};
use super::dev::{DEFAULT_DATACENTER, default_node_name};
use super::tls::{
    CertSource, EXEMPT_FROM_CLIENT_CERT, HttpsArgs, SERVER_NAME_ENV, env_first, serve_https,
    server_tls,
};
use super::{EXIT_CONFIG, TokenArgs, parse_duration};
use plexus_api::agent_config::Role;
use plexus_api::client::ClientOptions;
use plexus_runtime::tls::{
    CertSlot, ClientAuth, ClientIdentity, Identity, Roots, TlsServer, client_config_with,
    server_config_with_slot,
};

/// `plexus agent`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Servers to talk to, comma-separated (`host:port` or `https://host:port`); failover
    /// between them. Default: `retry_join` from the configuration file.
    #[arg(long = "server", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Agent API address; port 0 picks a free port (the bound address is logged).
    #[arg(long = "http-addr", default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// This node's address as others dial it.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Datacenter name.
    #[arg(long, default_value = DEFAULT_DATACENTER)]
    pub datacenter: String,
    /// A configuration file in Consul's format (HCL or JSON): agent keys and/or service
    /// definitions; repeatable, later files win. Flags override it.
    #[arg(long = "config-file")]
    pub config_files: Vec<PathBuf>,
    /// A directory of `.hcl`/`.json` configuration files, read in name order; repeatable.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// Time to live of the node's liveness lease (1s to 5m).
    #[arg(long = "lease-ttl", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// The agent's own token, for its node's registration, checks and lease (it needs
    /// `node:write` on its node and `service:write` on the services it registers).
    #[command(flatten)]
    pub token: TokenArgs,
    /// How long the agent trusts what a server said about a caller's token (Consul's
    /// `acl.token_ttl`): a deleted token may still work here for that long.
    #[arg(long = "acl-token-ttl", default_value = "30s", value_parser = parse_duration)]
    pub acl_token_ttl: Duration,
    #[command(flatten)]
    pub https: HttpsArgs,
    /// Talk to servers over verified TLS: bare `host:port` server addresses mean `https://`
    /// (`tls { defaults { verify_outgoing = true } }`); needs --ca-file.
    #[arg(long = "verify-outgoing")]
    pub verify_outgoing: bool,
    /// Verify servers' certificates against this name (e.g. `server.dc1.consul`) instead of
    /// the address dialled [env: PLEXUS_TLS_SERVER_NAME, CONSUL_TLS_SERVER_NAME].
    #[arg(long = "tls-server-name", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Obtain this agent's TLS certificate from a server (`auto_encrypt { tls = true }`): only
    /// --ca-file and the agent's token are needed.
    #[arg(long = "auto-encrypt")]
    pub auto_encrypt: bool,
}

/// How the agent talks to servers, checked before anything is bound.
struct ServerTls {
    roots: Option<Roots>,
    identity: Option<Identity>,
    server_name: Option<String>,
    https: bool,
}

fn server_tls_plan(args: &Args) -> Result<ServerTls, String> {
    let server_name = args
        .tls_server_name
        .clone()
        .or_else(|| env_first(&SERVER_NAME_ENV));
    let roots = match &args.https.ca_file {
        Some(file) => {
            Some(Roots::from_file(file).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?)
        }
        None => None,
    };
    let identity = match (&args.https.cert_file, &args.https.key_file) {
        (Some(cert), Some(key)) => Some(
            Identity::from_files(cert, key).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?,
        ),
        _ => None,
    };
    let https = args.verify_outgoing || args.servers.iter().any(|s| s.starts_with("https://"));
    if roots.is_none() && (https || args.auto_encrypt) {
        let why = if args.auto_encrypt {
            "--auto-encrypt"
        } else {
            "TLS to the servers (https:// or --verify-outgoing)"
        };
        return Err(format!("{why} needs --ca-file to verify the servers"));
    }
    Ok(ServerTls {
        roots,
        identity,
        server_name,
        https,
    })
}

impl ServerTls {
    fn client(&self, servers: &[String], slot: Option<&Arc<CertSlot>>) -> anyhow::Result<Client> {
        let tls = match &self.roots {
            None => None,
            Some(roots) => {
                let identity = match (slot, &self.identity) {
                    (Some(slot), _) => ClientIdentity::Slot(slot),
                    (None, Some(identity)) => ClientIdentity::Fixed(identity),
                    (None, None) => ClientIdentity::None,
                };
                Some(client_config_with(
                    roots,
                    identity,
                    self.server_name.as_deref(),
                )?)
            }
        };
        Ok(Client::with_options(
            servers,
            ClientOptions {
                tls,
                https: self.https,
            },
        )?)
    }
}

/// Runs the agent until a signal arrives.
pub async fn run(mut args: Args, given: Given) -> anyhow::Result<ExitCode> {
    let files = match config_file::load(
        &args.config_files,
        &args.config_dirs,
        Role::Agent,
        &given,
        &args.datacenter,
        args.node.as_deref(),
    ) {
        Ok(files) => files,
        Err(code) => return Ok(code),
    };
    let token = match args.token.resolve() {
        Ok(token) => config_file::agent_token(&files.agent, token),
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let config = &files.agent;
    args.datacenter = config_file::datacenter(config, &given, &args.datacenter);
    if args.node.is_none() {
        args.node.clone_from(&config.node_name);
    }
    config_file::apply_listeners(config, &given, &mut args.http_addr, &mut args.https);
    if args.servers.is_empty() {
        args.servers.clone_from(&config.retry_join);
    }
    if !given.flag("address")
        && let Some(ip) = config_file::advertised(config)
    {
        args.address = ip.to_string();
    }
    if !given.flag("verify_outgoing") {
        args.verify_outgoing = config.tls.verify_outgoing.unwrap_or(false);
    }
    if !given.flag("auto_encrypt") {
        args.auto_encrypt = config.auto_encrypt.tls.unwrap_or(false);
    }
    if args.servers.is_empty() {
        eprintln!(
            "error: no servers to talk to: give --server a,b,c (or retry_join in the configuration file)"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    config_file::announce(config);
    let node_name = args.node.clone().unwrap_or_else(default_node_name);
    let (tls_plan, https_plan) = match (
        server_tls_plan(&args),
        args.https.plan(false, args.auto_encrypt),
    ) {
        (Ok(tls), Ok(https)) => (tls, https),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let bootstrap_client = match tls_plan.client(&args.servers, None) {
        Ok(client) => client.with_token(token.clone()),
        Err(error) => {
            eprintln!("error: --server: {error:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&args.lease_ttl) {
        eprintln!("error: --lease-ttl must be between 1s and 5m");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let definitions = files.services;
    let listener = if args.https.https_only {
        None
    } else {
        Some(
            TcpListener::bind(&args.http_addr)
                .await
                .with_context(|| format!("cannot bind the agent API on {}", args.http_addr))?,
        )
    };
    let https = match https_plan {
        Some(plan) => Some((
            TcpListener::bind(&plan.addr)
                .await
                .with_context(|| format!("cannot bind the agent's HTTPS API on {}", plan.addr))?,
            plan,
        )),
        None => None,
    };
    let http_addr = match (&listener, &https) {
        (Some(listener), _) => listener.local_addr()?,
        (None, Some((listener, _))) => listener.local_addr()?,
        (None, None) => anyhow::bail!("no API listener"),
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let (client, slot) = if args.auto_encrypt {
        let request = AgentRequest {
            node: node_name.clone(),
            datacenter: args.datacenter.clone(),
            address: args.address.clone(),
        };
        let cert = match request.obtain(&bootstrap_client, &shutdown.token()).await {
            Ok(Some(cert)) => cert,
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error:#}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let slot = CertSlot::new(&cert.identity)?;
        let client = tls_plan
            .client(&args.servers, Some(&slot))?
            .with_token(token.clone());
        shutdown.spawn(request.run_renewal(
            client.clone(),
            Arc::clone(&slot),
            cert.not_before,
            cert.not_after,
            shutdown.token(),
        ));
        (client, Some(slot))
    } else {
        (bootstrap_client, None)
    };
    // Fail fast on what retrying cannot fix: TLS that does not verify, a refused client
    // certificate. Unreachable servers are waited for below.
    match client.status_leader().await {
        Err(error @ plexus_api::client::ClientError::Tls { .. }) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::FAILURE);
        }
        Err(error @ plexus_api::client::ClientError::Status { status: 403, .. }) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::FAILURE);
        }
        _ => {}
    }
    let catalog = Arc::new(HttpCatalog::new(client.clone(), &node_name));
    let node = Node {
        id: format!("agent-{node_name}"),
        node: node_name.clone(),
        address: args.address.clone(),
        datacenter: args.datacenter.clone(),
        ..Node::default()
    };
    let resolver = plexus_runtime::acl::Resolver(Arc::new(plexus_agent::acl::RemoteResolver::new(
        client.clone(),
        args.acl_token_ttl,
    )));
    let Some(agent) = start_agent(node, &catalog, resolver, &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    for (file, registration) in &definitions {
        loop {
            match agent.register(registration).await {
                Ok(_) => break,
                Err(_) if shutdown_pending(&shutdown) => return Ok(ExitCode::SUCCESS),
                Err(error) => {
                    warn!(error = %format!("{:#}", anyhow::Error::new(error)), file = %file.display(), "cannot register; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        info!(service = %registration.name, file = %file.display(), "registered from definition");
    }
    let holder = Arc::clone(&catalog);
    let ttl = args.lease_ttl;
    let stop = shutdown.token();
    shutdown.spawn(async move {
        tokio::select! {
            _ = holder.hold_lease(ttl) => {}
            _ = stop.cancelled() => {}
        }
    });
    let router = agent
        .router()
        .fallback(move |request: Request| forward(client.clone(), request))
        .method_not_allowed_fallback(plexus_runtime::http::method_not_allowed_fallback);
    let stop_serving = CancellationToken::new();
    let mut servers = Vec::new();
    if let Some((https_listener, plan)) = https {
        let tls = match (&plan.cert, &slot) {
            (CertSource::AutoEncrypt, Some(slot)) => {
                let client_auth = match &plan.client_roots {
                    Some(roots) if plan.verify_incoming => ClientAuth::Optional(roots.clone()),
                    _ => ClientAuth::None,
                };
                let tls = TlsServer::new(server_config_with_slot(slot, &client_auth)?);
                if plan.verify_incoming {
                    tls.require_client_cert(&EXEMPT_FROM_CLIENT_CERT)
                } else {
                    tls
                }
            }
            _ => server_tls(&plan, None, |_, _| Default::default(), &shutdown).await?,
        };
        servers.push(serve_https(
            https_listener,
            tls,
            router.clone(),
            stop_serving.clone(),
        )?);
    }
    if let Some(listener) = listener {
        plexus_runtime::telemetry::listening("http", http_addr);
        servers.push(tokio::spawn(plexus_runtime::http::serve(
            listener,
            router,
            stop_serving.clone(),
        )));
    }
    serve(
        servers,
        stop_serving,
        http_addr,
        &agent,
        &shutdown,
        args.grace,
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

fn shutdown_pending(shutdown: &Shutdown) -> bool {
    shutdown.is_triggered()
}

/// Registers the node (starting the agent), retrying with backoff while no server answers.
async fn start_agent(
    node: Node,
    catalog: &Arc<HttpCatalog>,
    acl: plexus_runtime::acl::Resolver,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Agent>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let config = AgentConfig {
            node: node.clone(),
            server: false,
            acl: acl.clone(),
        };
        let dyn_catalog: Arc<dyn plexus_api::Catalog> = catalog.clone();
        match Agent::start(config, dyn_catalog, shutdown).await {
            Ok(agent) => return Ok(Some(agent)),
            Err(error) if forbidden(&error) => {
                return Err(anyhow::Error::new(error).context(
                    "the servers refused this agent's token: cannot register this node (give the agent a token with node:write on it: --token, --token-file or PLEXUS_HTTP_TOKEN)",
                ));
            }
            Err(error) => warn!(
                error = %format!("{:#}", anyhow::Error::new(error)),
                retry_in = ?backoff,
                "cannot reach a server to register this node; retrying"
            ),
        }
        let token = shutdown.token();
        tokio::select! {
            _ = token.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether a server answered 403 somewhere down `error`'s chain.
fn forbidden(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(client) = current.downcast_ref::<plexus_api::client::ClientError>()
            && client.status() == Some(403)
        {
            return true;
        }
        next = current.source();
    }
    false
}

async fn serve(
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop_serving: CancellationToken,
    http_addr: SocketAddr,
    agent: &Agent,
    shutdown: &Shutdown,
    grace: Duration,
) {
    info!(%http_addr, "agent serving");
    shutdown.token().cancelled().await;
    agent.deregister_all().await;
    stop_serving.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    for server in servers {
        if tokio::time::timeout_at(deadline, server).await.is_err() {
            warn!(?grace, "in-flight requests did not finish in time");
        }
    }
    if !shutdown.drain(grace).await {
        warn!("background tasks did not finish within the grace period");
    }
    info!("stopped");
}

/// Passes a request the agent does not serve itself on to a server, answer and all.
async fn forward(client: Client, request: Request) -> Response {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The caller's own token goes on to the server (none: anonymous), never the agent's.
    let token = plexus_runtime::acl::token_of(request.headers(), None);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return ApiError::bad_request("unsupported method").into_response();
    };
    let answer = match client
        .forward(
            method,
            &path,
            content_type.as_deref(),
            body.to_vec(),
            token.as_ref(),
        )
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            warn!(%error, path, "no server answered a forwarded request");
            return ApiError::unavailable("no server is reachable").into_response();
        }
    };
    let status = http::StatusCode::from_u16(answer.status().as_u16())
        .unwrap_or(http::StatusCode::BAD_GATEWAY);
    let mut headers = http::HeaderMap::new();
    for name in [
        "content-type",
        plexus_api::acl::FILTERED_HEADER,
        "x-consul-index",
        "x-consul-knownleader",
        "x-consul-lastcontact",
    ] {
        if let Some(value) = answer.headers().get(name)
            && let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes())
        {
            headers.insert(name, value);
        }
    }
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            warn!(%error, path, "forwarded answer broke off");
            return ApiError::unavailable("the server's answer broke off").into_response();
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
