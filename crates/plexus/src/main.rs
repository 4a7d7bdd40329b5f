//! `plexus`: the one binary. Parses arguments, initialises tracing, runs one subcommand, maps its
//! result to an exit code. Each subcommand lives in its own file under `cmd/`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error (from clap), 64 invalid configuration.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod output;

/// Plexus: a service mesh in one binary.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control plane and a local agent in one process (embedded store).
    Dev(cmd::dev::Args),
    /// Run a control-plane replica (embedded store, or etcd shared with other replicas).
    Server(Box<cmd::server::Args>),
    /// Run a node agent that talks to servers over HTTP (`--server a,b,c`).
    Agent(cmd::agent::Args),
    /// Run a sidecar proxy for one service instance.
    Proxy(cmd::proxy::Args),
    /// Register and run an ingress, terminating or mesh gateway.
    Gateway(cmd::gateway::Args),
    /// Register, deregister and list services on the local agent.
    #[command(subcommand)]
    Services(cmd::services::Command),
    /// Read the service catalog.
    #[command(subcommand)]
    Catalog(cmd::catalog::Command),
    /// Show the health of a service's instances.
    Health(cmd::health::Args),
    /// Read and write the KV store.
    #[command(subcommand)]
    Kv(cmd::kv::Command),
    /// Fire a user event (`consul event`); `GET /v1/event/list` lists them.
    Event(cmd::user_event::Args),
    /// Run a command while holding a lock (`consul lock`): leader election over KV sessions.
    Lock(cmd::lock::Args),
    /// Write, read, list and delete L7 config entries (service-defaults/resolver/splitter/router).
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Show servers, the store and its members, and proxies' acknowledged revisions.
    Operator(cmd::operator::Args),
    /// Check service definition files (HCL/JSON) without registering anything.
    Validate(cmd::validate::Args),
    /// Run a self-contained demo scenario.
    #[command(subcommand)]
    Demo(cmd::demo::Command),
    /// A tiny TCP echo server (used by the demo and the docs).
    EchoServer(cmd::echo_server::Args),
    /// The event mesh: `events node` runs the language connector for apps in any language.
    #[command(subcommand)]
    Events(cmd::events::Command),
    /// Run one example event-mode app (used by `demo events` and the tests).
    #[command(hide = true)]
    EventsApp(cmd::events_app::Args),
    /// Manage intentions (who may connect to whom).
    #[command(subcommand)]
    Intention(cmd::intention::Command),
    /// Jobs: services run as supervised processes on dynamic ports (run, plan, status, ...).
    #[command(subcommand)]
    Job(cmd::job::Command),
    /// Service mesh identity: the certificate authority; Envoy sidecars.
    #[command(subcommand)]
    Connect(cmd::connect::Command),
    /// The xDS scale benchmark's load client (simulated Envoys).
    #[command(hide = true)]
    XdsLoad(cmd::xds_load::Args),
    /// ACL tokens, policies and roles (`bootstrap` creates the first management token).
    #[command(subcommand)]
    Acl(cmd::acl::Command),
}

/// A closed stdout (`plexus kv get … | head`) ends the command quietly with exit 0, as Unix
/// tools do: Rust ignores SIGPIPE, so `println!` panics on the broken pipe; this hook turns that
/// one panic into a quiet exit and leaves every other panic to the default report.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The environment variable that sets how many threads run the process's tasks.
const THREADS_ENV: &str = "PLEXUS_THREADS";
/// The most threads `PLEXUS_THREADS` may ask for (a typo like 10000 must not start that many).
const MAX_THREADS: usize = 1024;

/// How many threads run tasks: `PLEXUS_THREADS`, else one per core this process may use (its
/// CPU affinity, as `taskset` or a container's cpuset sets it).
fn threads() -> Result<usize, String> {
    match std::env::var(THREADS_ENV) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(threads) if (1..=MAX_THREADS).contains(&threads) => Ok(threads),
            _ => Err(format!(
                "{THREADS_ENV}={text:?}: expected a whole number of threads, at least 1 and at most {MAX_THREADS}"
            )),
        },
        Err(std::env::VarError::NotPresent) => {
            Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{THREADS_ENV}: not valid UTF-8; expected a whole number of threads, at least 1 and at most {MAX_THREADS}"
        )),
    }
}

/// The async runtime. With one thread, tokio's single-threaded scheduler (as linkerd2-proxy
/// picks for one core): the threaded one would add a second thread for `main`, atomic run
/// queues and cross-thread wake-ups for no parallelism, about 5 % of a sidecar's CPU per
/// request (docs/benchmarks.md, fix 9). Nothing Plexus runs needs `block_in_place`, the one
/// thing the single-threaded scheduler does not offer.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let matches = <Cli as clap::CommandFactory>::command()
        .get_matches_from(cmd::envoy::consul_style_args(std::env::args_os()));
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // Which flags were given (a configuration file fills in the others).
    let given = cmd::config_file::Given::new(matches.subcommand().map(|(_, m)| m.clone()));
    plexus_runtime::telemetry::init("info");
    plexus_runtime::tls::install_default_provider();
    let threads = match threads() {
        Ok(threads) => threads,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(64);
        }
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => cmd::dev::run(args, given).await,
            Command::Server(args) => cmd::server::run(*args, given).await,
            Command::Agent(args) => cmd::agent::run(args, given).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
            Command::Gateway(args) => cmd::gateway::run(args).await,
            Command::Services(command) => cmd::services::run(command).await,
            Command::Catalog(command) => cmd::catalog::run(command).await,
            Command::Health(args) => cmd::health::run(args).await,
            Command::Validate(args) => cmd::validate::run(args),
            Command::Kv(command) => cmd::kv::run(command).await,
            Command::Lock(args) => cmd::lock::run(args).await,
            Command::Event(args) => cmd::user_event::run(args).await,
            Command::Config(command) => cmd::config::run(command).await,
            Command::Operator(args) => cmd::operator::run(args).await,
            Command::Demo(command) => cmd::demo::run(command).await,
            Command::EchoServer(args) => cmd::echo_server::run(args).await,
            Command::Events(command) => cmd::events::run(command).await,
            Command::EventsApp(args) => cmd::events_app::run(args).await,
            Command::Intention(command) => cmd::intention::run(command).await,
            Command::Job(command) => cmd::job::run(command).await,
            Command::Connect(command) => cmd::connect::run(command).await,
            Command::XdsLoad(args) => cmd::xds_load::run(args).await,
            Command::Acl(command) => cmd::acl::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        // Writing to a closed stdout (`| head`): the reader has what it wanted. Only a bare I/O
        // error (a `write_all(..)?` on stdout), never a request's error with a socket cause.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
