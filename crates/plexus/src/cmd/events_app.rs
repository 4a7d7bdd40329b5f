//! `plexus events-app` (hidden): one example event-mode app, as the events demo and the tests run
//! it. Each `--routes` entry is served by an example function that answers with the route, the app
//! name and the origin that served it, echoing the request body; `--private-routes` are the same
//! but private. A body of `"panic"` makes the function panic (to show the 500 path); `"sleep"`
//! makes it take 5 s (to show in-flight failures).
//!
//! Start-up: check config (exit 64 when invalid, before any socket) → bind the actuator → connect
//! the cloud connector → announce to the presence monitor → serve until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use plexus_events::{EventEnvelope, EventMesh, Fault, Platform, Value, Visibility, actuator};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tracing::info;

use super::EXIT_CONFIG;

/// `plexus events-app`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Application name.
    #[arg(long)]
    pub name: String,
    /// Public routes to serve (comma-separated), e.g. `hello.world,hello.pojo`.
    #[arg(long, value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Private routes to serve (comma-separated).
    #[arg(long = "private-routes", value_delimiter = ',')]
    pub private_routes: Vec<String>,
    /// Workers per route (the route's bulkhead).
    #[arg(long, default_value_t = 10)]
    pub workers: usize,
    #[command(flatten)]
    pub mesh: super::events::MeshArgs,
    /// Actuator HTTP address.
    #[arg(long = "http-addr", default_value = "127.0.0.1:0")]
    pub http_addr: String,
}

fn check(args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    for route in args.routes.iter().chain(&args.private_routes) {
        if let Err(error) = plexus_events::route::validate_route(route) {
            problems.push(format!("--routes: {error}"));
        }
    }
    if args.workers == 0 {
        problems.push("--workers: must be at least 1".to_owned());
    }
    if let Err(more) = args.mesh.mesh_config() {
        problems.extend(more);
    }
    problems
}

/// Registers the example function under `route`.
fn serve_route(
    platform: &Platform,
    route: &str,
    workers: usize,
    visibility: Visibility,
) -> Result<(), Fault> {
    let me = platform.clone();
    let name = route.to_owned();
    platform.register(route, workers, visibility, move |event: EventEnvelope| {
        let (me, name) = (me.clone(), name.clone());
        async move {
            if event.body == Value::from("panic") {
                panic!("example function asked to panic");
            }
            if event.body == Value::from("sleep") {
                info!(route = %name, "example function sleeping");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(Value::Map(vec![
                (Value::from("route"), Value::from(name)),
                (Value::from("app"), Value::from(me.app())),
                (Value::from("origin"), Value::from(me.origin())),
                (Value::from("body"), event.body),
            ]))
        }
    })
}

/// Runs the example app until a signal arrives.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let problems = check(&args);
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("error: {problem}");
        }
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot bind the actuator on {}", args.http_addr))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let platform = Platform::new(args.name.clone());
    platform.set_advertise(listener.local_addr()?);
    info!(app = %args.name, origin = %platform.origin(), "event app starting");
    for route in &args.routes {
        serve_route(&platform, route, args.workers, Visibility::Public)?;
    }
    for route in &args.private_routes {
        serve_route(&platform, route, args.workers, Visibility::Private)?;
    }
    let mesh_config = match args.mesh.mesh_config() {
        Ok(config) => config,
        Err(_) => return Ok(ExitCode::from(EXIT_CONFIG)),
    };
    let mesh = EventMesh::start(platform.clone(), &mesh_config)
        .await
        .context("joining the event mesh")?;
    let presence = mesh.presence.clone();
    let config = super::events::MeshArgs::shown(&mesh_config);
    let router = actuator::router(actuator::Actuator::new(
        platform.clone(),
        presence,
        config,
        env!("CARGO_PKG_VERSION"),
        plexus_events::node::NodeAuth::Open,
    ));
    let addr = listener.local_addr()?;
    plexus_runtime::telemetry::listening("actuator", addr);
    plexus_runtime::http::serve(listener, router, shutdown.token()).await?;
    mesh.stop();
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
