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
use plexus_agent::remote_catalog::HttpCatalog;
use plexus_agent::{Agent, AgentConfig};
use plexus_api::Node;
use plexus_api::acl::SecretId;
use plexus_api::client::Client;
use plexus_runtime::http::{ApiError, read_body};
use plexus_runtime::{ErrorChain, Shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::addresses::{self, AddressArgs};
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
    /// Servers to talk to, comma-separated (`host`, `host:port` or `https://host:port`; the
    /// port defaults to 8500); failover between them. Default: `retry_join` from the
    /// configuration file.
    #[arg(long = "server", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Agent API address; port 0 picks a free port (the bound address is logged).
    #[arg(long = "http-addr", default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub addresses: AddressArgs,
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
    /// The token for callers without one (`acl.tokens.default`): used to resolve their requests
    /// here and sent with the requests passed on to servers.
    #[command(flatten)]
    pub default_token: super::DefaultTokenArgs,
    #[command(flatten)]
    pub jobs: super::job::AgentJobArgs,
    #[command(flatten)]
    pub grpc: super::grpc::GrpcArgs,
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
                ..ClientOptions::default()
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
    let default_token = match args.default_token.resolve(config) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    args.datacenter = config_file::datacenter(config, &given, &args.datacenter);
    if args.node.is_none() {
        args.node.clone_from(&config.node_name);
    }
    config_file::apply_listeners(config, &given, &mut args.http_addr, &mut args.https);
    config_file::apply_grpc(config, &mut args.grpc);
    if args.servers.is_empty() {
        args.servers.clone_from(&config.retry_join);
    }
    args.servers = args
        .servers
        .iter()
        .map(|s| addresses::with_default_port(s))
        .collect();
    let address_settings = match addresses::settings(&args.addresses, config) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if args.addresses.client_addr.is_some()
        && !given.flag("http_addr")
        && let Some(ip) = address_settings.client
    {
        args.http_addr = addresses::with_ip(&args.http_addr, ip);
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
    let addresses = match address_settings.resolve(addresses::Role::Agent {
        servers: bootstrap_client.servers(),
    }) {
        Ok(addresses) => addresses,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let grpc = match args
        .grpc
        .listen(args.https.https_only, args.https.https_addr.is_some())
    {
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
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
    let grpc = super::grpc::bind(grpc).await?;
    args.jobs.xds_addr = grpc.plain_addr();
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let (client, slot) = if args.auto_encrypt {
        let request = AgentRequest {
            node: node_name.clone(),
            datacenter: args.datacenter.clone(),
            address: addresses.advertised.addr.to_string(),
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
        address: addresses.advertised.addr.to_string(),
        datacenter: args.datacenter.clone(),
        tagged_addresses: addresses.tagged(),
        meta: args.jobs.node_meta(),
        ..Node::default()
    };
    let resolver = plexus_runtime::acl::Resolver(Arc::new(plexus_agent::acl::RemoteResolver::new(
        client.clone(),
        args.acl_token_ttl,
    )))
    .with_default_token(default_token.clone());
    if default_token.is_some() {
        info!("a default token is configured: requests without a token are resolved as it");
    }
    let Some(agent) = start_agent(node, &catalog, resolver.clone(), &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    for (file, registration) in &definitions {
        loop {
            match agent.register(registration).await {
                Ok(_) => break,
                Err(_) if shutdown_pending(&shutdown) => return Ok(ExitCode::SUCCESS),
                Err(error) => {
                    warn!(error = %ErrorChain(&error), file = %file.display(), "cannot register; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        info!(service = %registration.name, file = %file.display(), "registered from definition");
    }
    let mut logs_router = None;
    if let Some(config) = args
        .jobs
        .runner(client.clone(), &node_name, http_addr, token.clone())?
    {
        logs_router = Some(plexus_agent::job::logs_router(
            &agent,
            config.data_dir.clone(),
        ));
        shutdown.spawn(plexus_agent::job::run(
            agent.clone(),
            config,
            shutdown.clone(),
        ));
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
    let mut router = agent.router();
    if let Some(logs) = logs_router {
        router = router.merge(logs);
    }
    let router = router
        .fallback(move |request: Request| forward(client.clone(), default_token.clone(), request))
        .method_not_allowed_fallback(plexus_runtime::http::method_not_allowed_fallback);
    let stop_serving = CancellationToken::new();
    let mut servers = Vec::new();
    let mut https_tls = None;
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
        https_tls = Some(tls.clone());
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
    super::grpc::start(
        grpc,
        https_tls,
        http_addr,
        &node_name,
        resolver,
        plexus_runtime::connections::ConnLimits::default(),
        &shutdown,
    )?;
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
    let mut backoff =
        plexus_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let config = AgentConfig {
            node: node.clone(),
            server: false,
            acl: acl.clone(),
            host_ports: Some(plexus_agent::host_ports_dir()),
        };
        let dyn_catalog: Arc<dyn plexus_api::Catalog> = catalog.clone();
        let delay = backoff.next_delay();
        match Agent::start(config, dyn_catalog, shutdown).await {
            Ok(agent) => return Ok(Some(agent)),
            Err(error) if forbidden(&error) => {
                return Err(anyhow::Error::new(error).context(
                    "the servers refused this agent's token: cannot register this node (give the agent a token with node:write on it: --token, --token-file or PLEXUS_HTTP_TOKEN)",
                ));
            }
            Err(error) => warn!(
                error = %ErrorChain(&error),
                retry_in = ?delay,
                "cannot reach a server to register this node; retrying"
            ),
        }
        let token = shutdown.token();
        tokio::select! {
            _ = token.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
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

/// Every header of a server's answer that is about the answer itself: index, known leader and
/// every server-side setting a client obeys (e.g. `X-Plexus-Default-Intention-Policy`), so a
/// sidecar behind an agent sees exactly what the server said. The agent has no policy of its own.
fn end_to_end_headers(from: &reqwest::header::HeaderMap) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if plexus_runtime::http::NOT_RELAYED.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// 503 "no server is reachable", said in a header too, so a sidecar behind this agent knows its
/// configuration is stale (static stability), not merely that one request failed.
fn no_server() -> Response {
    let mut response = ApiError::unavailable("no server is reachable").into_response();
    response.headers_mut().insert(
        plexus_api::client::SERVERS_UNREACHABLE_HEADER,
        http::HeaderValue::from_static("true"),
    );
    response
}

/// Passes a request the agent does not serve itself on to a server, answer and all.
async fn forward(client: Client, default_token: Option<SecretId>, request: Request) -> Response {
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
    // The caller's own token goes on to the server (a `?token=` stays in the path); a caller
    // without one is sent as the default token (none: anonymous); never the agent's own.
    let token = match plexus_runtime::acl::token_of(request.headers(), request.uri().query()) {
        Some(_) => plexus_runtime::acl::token_of(request.headers(), None),
        None => default_token,
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return ApiError::bad_request("unsupported method").into_response();
    };
    // The agent's own calls (its lease renewals every third of the TTL, on fresh connections)
    // notice first when the servers are gone; a request passed on meanwhile (a sidecar's
    // blocking query on a connection that died silently) is answered then, not minutes later.
    let mut stale = client.stale_watch();
    let forwarded = client.forward(
        method,
        &path,
        content_type.as_deref(),
        body.to_vec(),
        token.as_ref(),
    );
    let answer = tokio::select! {
        answer = forwarded => answer,
        _ = stale.wait_for(Option::is_some) => {
            debug!(path, "servers unreachable; answering a forwarded request");
            return no_server();
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            warn!(%error, path, "no server answered a forwarded request");
            return no_server();
        }
    };
    let status = http::StatusCode::from_u16(answer.status().as_u16())
        .unwrap_or(http::StatusCode::BAD_GATEWAY);
    let headers = end_to_end_headers(answer.headers());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_their_own_headers_and_drop_the_connections() {
        let mut from = reqwest::header::HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("x-consul-index", "42"),
            ("x-plexus-default-intention-policy", "allow"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
        ] {
            from.insert(
                reqwest::header::HeaderName::from_static(name),
                reqwest::header::HeaderValue::from_static(value),
            );
        }
        let kept = end_to_end_headers(&from);
        let mut names: Vec<&str> = kept.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-type",
                "x-consul-index",
                "x-plexus-default-intention-policy"
            ]
        );
    }
}
