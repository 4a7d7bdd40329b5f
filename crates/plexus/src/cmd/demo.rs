//! `plexus demo echo`: Consul Connect's TCP echo quick start, end to end, in one process.
//!
//! 1. A dev control plane, an echo service and the two definitions (client → echo via 9191).
//! 2. Both sidecars; lines sent through 127.0.0.1:9191 come back through two proxies.
//! 3. A second echo instance: connections spread across both.
//! 4. The first instance dies: its check goes critical and every new connection reaches the
//!    survivor.
//!
//! Sidecar to sidecar traffic is mTLS throughout. With `--deny`, step 3 instead creates a deny
//! intention `client => echo`, shows the client being refused, then deletes it and shows the
//! client getting through again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plexus_runtime::Shutdown;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::dev::DevServer;

/// How long each step may take before the demo gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// `plexus demo ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The TCP echo scenario: client → sidecar → sidecar → echo, then round robin and failover.
    Echo(EchoArgs),
    /// The event mesh scenario over NATS: two apps discover each other, call, share load, leave.
    Events(super::demo_events::EventsArgs),
    /// The HTTP scenario: two versions behind a 90/10 split, a header-routed canary, a flaky
    /// instance that retries hide and a slow one for the outlier detector.
    Http(super::demo_http::HttpArgs),
    /// The Consul Connect calculator run as a job: a Node.js frontend calling Python add and
    /// sub services (two instances each) through sidecars; clicks, a load report, a killed
    /// instance's failover and restart.
    Calculator(super::demo_calculator::CalculatorArgs),
}

/// `plexus demo echo`
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Leave everything running after the scenario (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
    /// The client's local port for the echo upstream.
    #[arg(long, default_value_t = 9191)]
    pub upstream_port: u16,
    /// HTTP API address of the demo's control plane (port 0 picks a free one).
    #[arg(long = "http-addr", default_value = "127.0.0.1:0")]
    pub http_addr: String,
    /// Show a deny intention stopping the client (instead of round robin and failover).
    #[arg(long)]
    pub deny: bool,
}

/// Runs a demo.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Echo(args) => echo(args).await,
        Command::Events(args) => super::demo_events::run(args).await,
        Command::Http(args) => super::demo_http::run(args).await,
        Command::Calculator(args) => super::demo_calculator::run(args).await,
    }
}

/// One echo instance run by the demo.
struct EchoInstance {
    id: String,
    port: u16,
    served: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl EchoInstance {
    async fn start(id: &str, shutdown: &Shutdown) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = shutdown.token().child_token();
        shutdown.spawn(super::echo_server::serve(
            listener,
            stop.clone(),
            served.clone(),
        ));
        Ok(Self {
            id: id.to_owned(),
            port,
            served,
            stop,
        })
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn definitions(echo_port: u16, upstream_port: u16) -> String {
    format!(
        r#"services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      proxy {{
        upstreams {{
          destination_name = "echo"
          local_bind_port  = {upstream_port}
        }}
      }}
    }}
  }}
}}
services {{
  name = "echo"
  port = {echo_port}
  check {{
    tcp      = "127.0.0.1:{echo_port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{}}
  }}
}}
"#
    )
}

fn second_echo(id: &str, port: u16) -> String {
    format!(
        r#"service {{
  id   = "{id}"
  name = "echo"
  port = {port}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{}}
  }}
}}
"#
    )
}

pub(super) fn parse(text: &str) -> anyhow::Result<Vec<plexus_api::ServiceRegistration>> {
    plexus_api::definition::parse_str(&PathBuf::from("demo.hcl"), text).map_err(|errors| {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("demo definitions are invalid: {}", all.join("; "))
    })
}

/// A sidecar run in-process by the demo.
pub(super) struct DemoSidecar {
    pub(super) admin: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Why the sidecar stopped, once it has.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl DemoSidecar {
    pub(super) async fn start(
        control: &str,
        service_id: &str,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
        let admin = admin_listener.local_addr()?;
        let config = plexus_proxy::ProxyConfig {
            control: plexus_api::client::Client::new(control)?,
            sidecar_for: service_id.to_owned(),
            proxy_id: None,
            admin_listener,
            drain_grace: Duration::from_secs(2),
            close_denied: false,
            access_log: None,
            state: None,
        };
        let failure = Arc::new(std::sync::Mutex::new(None));
        let reason = failure.clone();
        let token = shutdown.token();
        let task = tokio::spawn(async move {
            let why = match plexus_proxy::run(config, token).await {
                Ok(()) => "it stopped".to_owned(),
                Err(error) => plexus_runtime::ErrorChain(&error).to_string(),
            };
            *plexus_runtime::lock::lock(&reason) = Some(why);
        });
        Ok(Self {
            admin,
            task,
            failure,
        })
    }

    /// Checks `done` every 50 ms until it holds; fails when the sidecar stops or after
    /// [`STEP_DEADLINE`], saying `what` did not happen.
    async fn poll_until(
        &self,
        what: &str,
        mut done: impl AsyncFnMut() -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.task.is_finished() {
                let why = plexus_runtime::lock::lock(&self.failure).clone();
                bail!(
                    "the sidecar stopped: {}",
                    why.unwrap_or_else(|| "it panicked; see the log above".to_owned())
                );
            }
            if done().await {
                return Ok(());
            }
            if started.elapsed() > STEP_DEADLINE {
                bail!("{what} within {STEP_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the proxy's listeners are bound (`/ready`).
    pub(super) async fn wait_ready(&self) -> anyhow::Result<()> {
        self.poll_until("the sidecar was not ready", async || {
            let ready = reqwest::get(format!("http://{}/ready", self.admin)).await;
            ready.is_ok_and(|r| r.status().is_success())
        })
        .await
    }

    /// Waits until the proxy is ready and uses exactly `want` endpoints for `upstream`.
    pub(super) async fn wait_endpoints(&self, upstream: &str, want: usize) -> anyhow::Result<()> {
        let what = format!("upstream {upstream:?} did not reach {want} endpoint(s)");
        self.poll_until(
            &what,
            async || matches!(self.endpoints(upstream).await, Ok(n) if n == want),
        )
        .await
    }

    async fn endpoints(&self, upstream: &str) -> anyhow::Result<usize> {
        let ready = reqwest::get(format!("http://{}/ready", self.admin)).await?;
        if !ready.status().is_success() {
            return Ok(usize::MAX);
        }
        let config: serde_json::Value = reqwest::get(format!("http://{}/config", self.admin))
            .await?
            .json()
            .await?;
        let count = config["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["destination"] == upstream)
            .map(|u| u["endpoints"].as_array().map_or(0, Vec::len))
            .sum();
        Ok(count)
    }
}

/// Step 3 of `--deny`: a deny intention stops the client; deleting it lets the client back in.
async fn deny_scenario(
    api: &plexus_api::client::Client,
    upstream: SocketAddr,
) -> anyhow::Result<()> {
    use plexus_api::connect::{Intention, IntentionAction};
    println!("== 3. intention: client => echo (deny)");
    let intention: Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "client", "DestinationName": "echo", "Action": IntentionAction::Deny,
        "Description": "plexus demo echo --deny",
    }))?;
    let id = api.create_intention(&intention).await?;
    println!("created deny intention {id}");
    let started = Instant::now();
    loop {
        let reply = round_trip(upstream, "knock knock").await;
        match reply {
            Ok(reply) if reply == "knock knock" => {}
            Ok(_) | Err(_) => {
                println!(
                    "sent \"knock knock\" -> connection closed: the echo sidecar denied client => echo"
                );
                break;
            }
        }
        if started.elapsed() > STEP_DEADLINE {
            bail!("the deny intention did not stop the client");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("== 4. delete the intention: the default policy (allow) applies again");
    api.delete_intention(&id).await?;
    let started = Instant::now();
    loop {
        if let Ok(reply) = round_trip(upstream, "hello again").await
            && reply == "hello again"
        {
            println!("sent \"hello again\" -> got {reply:?}");
            return Ok(());
        }
        if started.elapsed() > STEP_DEADLINE {
            bail!("the client was still refused after the intention was deleted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one line through `addr` and returns what came back.
async fn round_trip(addr: SocketAddr, line: &str) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .context("no reply within 5s")??;
    Ok(reply.trim_end().to_owned())
}

async fn echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let upstream: SocketAddr = ([127, 0, 0, 1], args.upstream_port).into();
    port_is_free(upstream, "the client's upstream listener (--upstream-port)")?;

    println!("== 1. control plane, echo service, definitions");
    let echo1 = EchoInstance::start("echo", &shutdown).await?;
    let text = definitions(echo1.port, args.upstream_port);
    println!("{text}");
    let regs = parse(&text)?;
    let defs: Vec<(PathBuf, _)> = regs
        .into_iter()
        .map(|r| (PathBuf::from("demo.hcl"), r))
        .collect();
    let listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", args.http_addr))?;
    let dev = DevServer::start(
        listener,
        None,
        "plexus-demo",
        "dc1",
        &defs,
        super::dev::DevSettings::default(),
        &shutdown,
    )
    .await?;
    let control = dev.http_addr.to_string();
    println!("control plane: http://{control}  (try: curl http://{control}/v1/agent/services)");

    println!("== 2. sidecars; lines through {upstream}");
    let client_sidecar = DemoSidecar::start(&control, "client", &shutdown).await?;
    let echo_sidecar = DemoSidecar::start(&control, "echo", &shutdown).await?;
    echo_sidecar.wait_ready().await?;
    client_sidecar.wait_endpoints("echo", 1).await?;
    let api = plexus_api::client::Client::new(&control)?;
    let roots = api
        .connect_ca_roots(plexus_api::client::QueryOptions::default())
        .await?
        .value;
    println!(
        "sidecar to sidecar is mTLS (TLS 1.3): {} -> {}",
        plexus_api::connect::service_spiffe_id(&roots.trust_domain, "dc1", "client"),
        plexus_api::connect::service_spiffe_id(&roots.trust_domain, "dc1", "echo"),
    );
    for line in ["hello", "from", "plexus"] {
        let reply = round_trip(upstream, line).await?;
        println!("sent {line:?} -> got {reply:?}");
        if reply != line {
            bail!("echo mismatch: sent {line:?}, got {reply:?}");
        }
    }

    if args.deny {
        deny_scenario(&api, upstream).await?;
        println!("demo passed");
        return finish(args.keep_running, upstream, &control, shutdown, dev).await;
    }

    println!("== 3. a second echo instance: round robin");
    let echo2 = EchoInstance::start("echo-2", &shutdown).await?;
    for reg in parse(&second_echo(&echo2.id, echo2.port))? {
        dev.agent.register(&reg).await?;
    }
    let echo2_sidecar = DemoSidecar::start(&control, &echo2.id, &shutdown).await?;
    echo2_sidecar.wait_ready().await?;
    client_sidecar.wait_endpoints("echo", 2).await?;
    let (before1, before2) = (echo1.served(), echo2.served());
    for i in 0..6 {
        round_trip(upstream, &format!("spread {i}")).await?;
    }
    let (n1, n2) = (echo1.served() - before1, echo2.served() - before2);
    println!("6 connections: {} -> {n1}, {} -> {n2}", echo1.id, echo2.id);
    if n1 == 0 || n2 == 0 {
        bail!("connections were not spread across both instances");
    }

    println!("== 4. {} dies: failover", echo1.id);
    echo1.stop.cancel();
    client_sidecar.wait_endpoints("echo", 1).await?;
    let (before1, before2) = (echo1.served(), echo2.served());
    for i in 0..4 {
        round_trip(upstream, &format!("failover {i}")).await?;
    }
    let (n1, n2) = (echo1.served() - before1, echo2.served() - before2);
    println!("4 connections: {} -> {n1}, {} -> {n2}", echo1.id, echo2.id);
    if n1 != 0 || n2 != 4 {
        bail!("connections did not all reach the survivor");
    }
    println!("demo passed");
    finish(args.keep_running, upstream, &control, shutdown, dev).await
}

/// Fails naming the port when `addr` cannot be bound now (another program listens on it).
pub(super) fn port_is_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(error) => bail!(
            "port {} for {what} is taken on this host ({error}); choose another port",
            addr.port()
        ),
    }
}

/// Keeps running if asked, then stops everything.
async fn finish(
    keep_running: bool,
    upstream: SocketAddr,
    control: &str,
    shutdown: Shutdown,
    dev: DevServer,
) -> anyhow::Result<ExitCode> {
    if keep_running {
        println!("still running (Ctrl-C to stop): echo at {upstream}, API at http://{control}");
        shutdown.token().cancelled().await;
    }
    shutdown.trigger();
    dev.stop(Duration::from_secs(2)).await;
    shutdown.drain(Duration::from_secs(5)).await;
    Ok(ExitCode::SUCCESS)
}
