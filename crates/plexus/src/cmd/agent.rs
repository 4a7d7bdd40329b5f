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

use super::dev::{DEFAULT_DATACENTER, collect_definition_files, default_node_name};
use super::{EXIT_CONFIG, parse_duration};

/// `plexus agent`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Servers to talk to, comma-separated (`host:port`); failover between them.
    #[arg(long = "server", value_delimiter = ',', required = true)]
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
    /// A service definition file to load at start (HCL or JSON); repeatable.
    #[arg(long = "config-file")]
    pub config_files: Vec<PathBuf>,
    /// A directory of `.hcl`/`.json` definition files to load at start; repeatable.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// Time to live of the node's liveness lease (1s to 5m).
    #[arg(long = "lease-ttl", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    #[command(flatten)]
    pub grpc: super::grpc::GrpcArgs,
}

/// Runs the agent until a signal arrives.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let node_name = args.node.clone().unwrap_or_else(default_node_name);
    let defaults = plexus_api::validate::Defaults {
        datacenter: args.datacenter.clone(),
        node: node_name.clone(),
    };
    let client = match Client::with_servers(&args.servers) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: --server: {error}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&args.lease_ttl) {
        eprintln!("error: --lease-ttl must be between 1s and 5m");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let grpc = match args.grpc.listen() {
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let definitions = {
        let files = match collect_definition_files(&args.config_files, &args.config_dirs) {
            Ok(files) => files,
            Err(error) => {
                eprintln!("error: {error:#}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        };
        if files.is_empty() {
            Vec::new()
        } else {
            match plexus_api::definition::check_files(&files, &defaults) {
                Ok(definitions) => definitions,
                Err(errors) => {
                    for error in &errors {
                        eprintln!("error: {error}");
                    }
                    eprintln!("{} configuration error(s); not starting.", errors.len());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
    };
    let listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot bind the agent API on {}", args.http_addr))?;
    let http_addr = listener.local_addr()?;
    let grpc = super::grpc::bind(grpc).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let catalog = Arc::new(HttpCatalog::new(client.clone(), &node_name));
    let node = Node {
        id: format!("agent-{node_name}"),
        node: node_name.clone(),
        address: args.address.clone(),
        datacenter: args.datacenter.clone(),
        ..Node::default()
    };
    let Some(agent) = start_agent(node, &catalog, &shutdown).await else {
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
    plexus_runtime::telemetry::listening("http", http_addr);
    if let Some(grpc) = grpc {
        super::grpc::start(grpc, http_addr, &node_name, &shutdown)?;
    }
    serve(listener, router, http_addr, &agent, &shutdown, args.grace).await;
    Ok(ExitCode::SUCCESS)
}

fn shutdown_pending(shutdown: &Shutdown) -> bool {
    shutdown.is_triggered()
}

/// Registers the node (starting the agent), retrying with backoff while no server answers.
async fn start_agent(node: Node, catalog: &Arc<HttpCatalog>, shutdown: &Shutdown) -> Option<Agent> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let config = AgentConfig {
            node: node.clone(),
            server: false,
        };
        let dyn_catalog: Arc<dyn plexus_api::Catalog> = catalog.clone();
        match Agent::start(config, dyn_catalog, shutdown).await {
            Ok(agent) => return Some(agent),
            Err(error) => warn!(
                error = %format!("{:#}", anyhow::Error::new(error)),
                retry_in = ?backoff,
                "cannot reach a server to register this node; retrying"
            ),
        }
        let token = shutdown.token();
        tokio::select! {
            _ = token.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    http_addr: SocketAddr,
    agent: &Agent,
    shutdown: &Shutdown,
    grace: Duration,
) {
    let stop_serving = CancellationToken::new();
    let server = tokio::spawn(plexus_runtime::http::serve(
        listener,
        router,
        stop_serving.clone(),
    ));
    info!(%http_addr, "agent serving");
    shutdown.token().cancelled().await;
    agent.deregister_all().await;
    stop_serving.cancel();
    if tokio::time::timeout(grace, server).await.is_err() {
        warn!(?grace, "in-flight requests did not finish in time");
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
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return ApiError::bad_request("unsupported method").into_response();
    };
    let answer = match client
        .forward(method, &path, content_type.as_deref(), body.to_vec())
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
        "x-plexus-default-intention-policy",
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
