//! `plexus demo calculator`: the Consul Connect calculator (`examples/calculator/`) run as a
//! job, clicked, loaded, and with one instance killed.
//!
//! 1. A dev control plane whose agent runs jobs (ephemeral API port, dynamic instance ports),
//!    `service-defaults` with `protocol = "http"` for add, sub and frontend, and the job: add ×2,
//!    sub ×2 (Python), frontend ×2 (Node.js), each instance with its own sidecar.
//! 2. N clicks (`GET /calc?a=&b=`) through one local address, the upstream listener to
//!    `frontend` of the demo's own `calculator-client` sidecar (run in-process), as a browser
//!    behind the mesh would: the sidecar spreads them per request over both frontends, each
//!    calling add and sub through its own sidecar. Which instance served each call (frontend,
//!    add, sub), tallied, then a load report.
//! 3. One `add` instance's process is killed (SIGKILL) while the clicks go on: the failed calls
//!    meanwhile, and its restart (new pid, passing again).
//!
//! The scripts are built into the binary and written to a temporary directory; `--json` prints
//! one report (instances, tallies, load, failover) on stdout and the narration on stderr.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plexus_api::client::{Client, QueryOptions};
use plexus_api::job::api::{DeploymentState, InstanceView, JobStatus};
use plexus_runtime::Shutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use super::demo::DemoSidecar;
use super::dev::{DevServer, DevSettings};

const JOB: &str = include_str!("../../../../examples/calculator/calculator.hcl");
const SCRIPTS: [(&str, &str); 4] = [
    (
        "calc_service.py",
        include_str!("../../../../examples/calculator/calc_service.py"),
    ),
    (
        "add.py",
        include_str!("../../../../examples/calculator/add.py"),
    ),
    (
        "sub.py",
        include_str!("../../../../examples/calculator/sub.py"),
    ),
    (
        "frontend.js",
        include_str!("../../../../examples/calculator/frontend.js"),
    ),
];
/// How long the job may take to come up, and an instance to come back.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Clicks in flight at once.
const CONCURRENCY: usize = 4;
/// The services of the job, each with two instances.
const SERVICES: [&str; 3] = ["frontend", "add", "sub"];
/// The demo's own service: its sidecar's upstream to `frontend` is where the clicks go.
const CLIENT: &str = "calculator-client";

/// `plexus demo calculator`
#[derive(Debug, clap::Args)]
pub struct CalculatorArgs {
    /// How many times to click the frontend (and at least as many again after the kill).
    #[arg(long, default_value_t = 1000)]
    pub clicks: usize,
    /// Print the report as JSON on stdout (the narration goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// HTTP API address of the demo's control plane (port 0 picks a free one).
    #[arg(long = "http-addr", default_value = "127.0.0.1:0")]
    pub http_addr: String,
    /// The local port clicked: the demo client's sidecar upstream to `frontend`, which spreads
    /// the clicks over both frontend instances (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub upstream_port: u16,
    /// Leave everything running after the scenario (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
}

/// One instance in the report.
#[derive(Debug, Clone, Serialize)]
struct Instance {
    id: String,
    group: String,
    port: u16,
    pid: Option<u32>,
    passing: bool,
}

/// A series of clicks.
#[derive(Debug, Clone, Default, Serialize)]
struct Load {
    calls: usize,
    failed: usize,
    seconds: f64,
    req_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Calls served, by service then instance.
    served: BTreeMap<String, BTreeMap<String, usize>>,
    /// The first failures' messages.
    errors: Vec<String>,
}

/// What happened to the killed instance.
#[derive(Debug, Clone, Serialize)]
struct Failover {
    killed: String,
    old_pid: u32,
    new_pid: u32,
    restart_seconds: f64,
    load: Load,
}

#[derive(Debug, Serialize)]
struct Report {
    control: String,
    /// Where the clicks went: the client sidecar's upstream listener to `frontend`.
    url: String,
    instances: Vec<Instance>,
    clicks: Load,
    failover: Failover,
}

/// Narration: stdout, or stderr with `--json`.
///
/// Written without `println!`: a closed output (`plexus demo calculator | head`) must not end
/// the demo (the CLI exits quietly on a broken pipe) before it has stopped the job, or its
/// instances and sidecars would outlive it.
#[derive(Clone, Copy)]
struct Say(bool);

impl Say {
    fn line(self, text: impl AsRef<str>) {
        use std::io::Write;
        let written = if self.0 {
            writeln!(std::io::stderr().lock(), "{}", text.as_ref())
        } else {
            writeln!(std::io::stdout().lock(), "{}", text.as_ref())
        };
        if let Err(error) = written {
            tracing::debug!(%error, "the demo's output is closed; going on");
        }
    }
}

/// Runs the demo.
pub async fn run(args: CalculatorArgs) -> anyhow::Result<ExitCode> {
    let upstream_port = match args.upstream_port {
        0 => super::demo_http::free_port()
            .context("no free local port for the client's upstream listener")?,
        port => {
            super::demo::port_is_free(
                ([127, 0, 0, 1], port).into(),
                "the client's upstream listener (--upstream-port)",
            )?;
            port
        }
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let say = Say(args.json);
    let scripts = tempfile::Builder::new()
        .prefix("plexus-calculator-")
        .tempdir()?;
    for (name, text) in SCRIPTS {
        std::fs::write(scripts.path().join(name), text)
            .with_context(|| format!("writing {name} to {}", scripts.path().display()))?;
    }
    let defs: Vec<(std::path::PathBuf, _)> = super::demo::parse(&client_definition(upstream_port))?
        .into_iter()
        .map(|r| (std::path::PathBuf::from("demo.hcl"), r))
        .collect();
    let listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", args.http_addr))?;
    let jobs = super::job::AgentJobArgs {
        slots: 8,
        ports: plexus_agent::job::DYNAMIC_PORTS,
        dir: Some(scripts.path().join("jobs")),
        envoy_binary: "envoy".into(),
        xds_addr: None,
    };
    let dev = DevServer::start(
        listener,
        None,
        "plexus-demo",
        "dc1",
        &defs,
        DevSettings {
            jobs: Some(jobs),
            ..DevSettings::default()
        },
        &shutdown,
    )
    .await?;
    let control = dev.http_addr.to_string();
    let api = Client::new(&control)?;
    let interrupted = shutdown.token();
    let outcome = tokio::select! {
        outcome = scenario(&api, &control, scripts.path(), upstream_port, &args, say, &shutdown) => Some(outcome),
        () = interrupted.cancelled() => None,
    };
    let code = match outcome {
        Some(Ok(report)) => {
            if args.json {
                use std::io::Write;
                let text = serde_json::to_string_pretty(&report)?;
                if let Err(error) = writeln!(std::io::stdout().lock(), "{text}") {
                    tracing::debug!(%error, "the report could not be written; going on");
                }
            }
            say.line("demo passed");
            if args.keep_running {
                say.line(format!(
                    "still running (Ctrl-C to stop): the calculator at {}?a=7&b=3 (both frontends, through the mesh), API at http://{control}",
                    report.url
                ));
                shutdown.token().cancelled().await;
            }
            ExitCode::SUCCESS
        }
        Some(Err(error)) => {
            Say(true).line(format!("error: {error:#}"));
            ExitCode::FAILURE
        }
        None => {
            say.line("interrupted");
            ExitCode::FAILURE
        }
    };
    say.line("== stopping: the job's instances and sidecars, then the control plane");
    if let Err(error) = api.job_stop("calculator").await {
        tracing::debug!(error = %plexus_runtime::ErrorChain(&error), "stopping the job failed");
    }
    let stopped = Instant::now();
    while !api
        .job_status("calculator", QueryOptions::default())
        .await
        .is_ok_and(|s| s.value.instances.is_empty())
        && stopped.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.trigger();
    dev.stop(Duration::from_secs(2)).await;
    shutdown.drain(Duration::from_secs(15)).await;
    Ok(code)
}

/// The demo's client: a service (nothing listens on its port) whose sidecar has an upstream
/// listener to `frontend` on `upstream_port`.
fn client_definition(upstream_port: u16) -> String {
    format!(
        r#"services {{
  name = "{CLIENT}"
  port = 8080
  connect {{
    sidecar_service {{
      proxy {{
        upstreams {{
          destination_name = "frontend"
          local_bind_port  = {upstream_port}
        }}
      }}
    }}
  }}
}}
"#
    )
}

fn entry(name: &str) -> anyhow::Result<plexus_api::config_entry::ConfigEntry> {
    plexus_api::config_entry::ConfigEntry::from_json(serde_json::json!({
        "Kind": "service-defaults", "Name": name, "Protocol": "http",
    }))
    .map_err(|error| anyhow::anyhow!("demo entry for {name} is invalid: {error}"))
}

async fn scenario(
    api: &Client,
    control: &str,
    dir: &std::path::Path,
    upstream_port: u16,
    args: &CalculatorArgs,
    say: Say,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    say.line(format!(
        "== 1. control plane http://{control}, the calculator job"
    ));
    for name in SERVICES {
        if !api.config_write(&entry(name)?, None).await? {
            bail!("the control plane did not store service-defaults {name}");
        }
    }
    say.line("service-defaults protocol=http for add, sub, frontend (HTTP routing)");
    // The client's sidecar binds its upstream listener now, before the job takes its time.
    let client = DemoSidecar::start(control, CLIENT, shutdown).await?;
    client.wait_ready().await?;
    say.line(format!(
        "{CLIENT} sidecar ready: upstream frontend on 127.0.0.1:{upstream_port}"
    ));
    let text = JOB.replace("@CALC_DIR@", &dir.display().to_string());
    let job =
        plexus_api::job::file::parse_job(&dir.join("calculator.hcl"), &text).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the calculator job is invalid: {}", all.join("; "))
        })?;
    let written = api.job_run(&job).await?;
    say.line(format!(
        "job \"calculator\" version {}: add ×2, sub ×2 (python3), frontend ×2 (node)",
        written.version
    ));
    let status = wait_all_passing(api, written.version, say).await?;
    let instances = instances(api, &status).await?;
    for i in &instances {
        say.line(format!(
            "  {:<22} port {:<5} pid {:<7} {}",
            i.id,
            i.port,
            i.pid.map_or("-".to_owned(), |p| p.to_string()),
            if i.passing { "passing" } else { "not passing" }
        ));
    }
    let frontends = instances.iter().filter(|i| i.group == "frontend").count();
    client.wait_endpoints("frontend", frontends).await?;
    let url = format!("http://127.0.0.1:{upstream_port}/calc");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    say.line(format!(
        "== 2. {} clicks on the calculator at {url}?a=&b= ({CONCURRENCY} at a time)",
        args.clicks
    ));
    say.line(format!(
        "   the upstream listener of the demo's own sidecar ({CLIENT}), which spreads them over the {frontends} frontends (round robin per request)"
    ));
    let clicks = click(&http, &url, args.clicks, say, 5).await;
    print_load(say, &clicks);
    if clicks.failed > 0 {
        bail!(
            "{} of {} clicks failed before anything was killed: {}",
            clicks.failed,
            clicks.calls,
            clicks.errors.join("; ")
        );
    }

    let victim = instances
        .iter()
        .find(|i| i.group == "add")
        .context("no add instance")?
        .clone();
    let old_pid = victim.pid.context("the add instance has no pid")?;
    say.line(format!(
        "== 3. kill {} (pid {old_pid}) while clicking on",
        victim.id
    ));
    kill(old_pid)?;
    let killed = Instant::now();
    // Clicks go on in the background until the instance is back and enough calls were made.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clicking = {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        let at_least = args.clicks;
        tokio::spawn(async move { click_until(&http, &url, at_least, &stop).await })
    };
    let new_pid = loop {
        let status = api
            .job_status("calculator", QueryOptions::default())
            .await?
            .value;
        let back = status
            .instances
            .iter()
            .find(|i| i.allocation.id == victim.id)
            .and_then(|i| i.status.as_ref())
            .filter(|s| s.state == "running" && s.healthy && s.pid.is_some_and(|p| p != old_pid))
            .and_then(|s| s.pid);
        if let Some(pid) = back
            && passing_ids(api, "add")
                .await?
                .contains(&format!("{}-add", victim.id))
        {
            break pid;
        }
        if killed.elapsed() > STEP_DEADLINE {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            bail!(
                "{} was not restarted and passing within {STEP_DEADLINE:?}",
                victim.id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let restart_seconds = killed.elapsed().as_secs_f64();
    say.line(format!(
        "{} restarted: pid {old_pid} -> {new_pid}, passing again after {restart_seconds:.1}s",
        victim.id
    ));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let load = clicking.await.context("the clicking task failed")?;
    print_load(say, &load);
    let percent = 100.0 * load.failed as f64 / load.calls.max(1) as f64;
    say.line(format!(
        "failover: {} of {} calls failed ({percent:.2} %) while {} was down and restarting",
        load.failed, load.calls, victim.id
    ));
    for e in load.errors.iter().take(3) {
        say.line(format!("  failed: {e}"));
    }
    Ok(Report {
        control: control.to_owned(),
        url,
        instances,
        clicks,
        failover: Failover {
            killed: victim.id,
            old_pid,
            new_pid,
            restart_seconds,
            load,
        },
    })
}

/// Waits until the rollout of `version` succeeded (every instance healthy), printing progress.
async fn wait_all_passing(api: &Client, version: u64, say: Say) -> anyhow::Result<JobStatus> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let status = api
            .job_status("calculator", QueryOptions::default())
            .await?
            .value;
        let healthy = status
            .instances
            .iter()
            .filter(|i| i.status.as_ref().is_some_and(|s| s.healthy))
            .count();
        let line = format!(
            "placed {}, healthy {healthy} (every check passing for min_healthy_time)",
            status.instances.len()
        );
        if line != last {
            say.line(&line);
            last = line;
        }
        match status.deployment.as_ref().map(|d| (d.version, d.state)) {
            Some((v, DeploymentState::Successful)) if v == version => return Ok(status),
            Some((v, DeploymentState::Failed | DeploymentState::Reverted)) if v == version => {
                let reason = status
                    .deployment
                    .as_ref()
                    .map(|d| d.reason.clone())
                    .unwrap_or_default();
                bail!("the calculator job failed to start: {reason}");
            }
            _ => {}
        }
        if started.elapsed() > STEP_DEADLINE {
            let why: Vec<String> = status
                .instances
                .iter()
                .filter_map(|i| {
                    let s = i.status.as_ref()?;
                    (!s.healthy).then(|| format!("{}: {} {}", i.allocation.id, s.state, s.message))
                })
                .collect();
            bail!(
                "the calculator job was not healthy within {STEP_DEADLINE:?}: {}",
                why.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn passing_ids(api: &Client, service: &str) -> anyhow::Result<Vec<String>> {
    Ok(api
        .health_service(service, true, QueryOptions::default())
        .await?
        .value
        .into_iter()
        .map(|e| e.service.id)
        .collect())
}

async fn instances(api: &Client, status: &JobStatus) -> anyhow::Result<Vec<Instance>> {
    let mut passing = Vec::new();
    for service in SERVICES {
        passing.extend(passing_ids(api, service).await?);
    }
    let view = |i: &InstanceView| Instance {
        id: i.allocation.id.clone(),
        group: i.allocation.group.clone(),
        port: i
            .status
            .as_ref()
            .and_then(|s| s.ports.get("http").copied())
            .unwrap_or(0),
        pid: i.status.as_ref().and_then(|s| s.pid),
        passing: passing.contains(&format!("{}-{}", i.allocation.id, i.allocation.group)),
    };
    Ok(status.instances.iter().map(view).collect())
}

/// SIGKILL to one process (a positive pid: never a group).
fn kill(pid: u32) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    let pid = rustix::process::Pid::from_raw(raw).context("pid 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("cannot kill pid {raw}"))
}

/// One click: which instances served, or why it failed.
async fn one(http: &reqwest::Client, url: &str, n: usize) -> Result<serde_json::Value, String> {
    let (a, b) = (n % 97, n % 13);
    let answer = http
        .get(url)
        .query(&[("a", a), ("b", b)])
        .send()
        .await
        .map_err(|e| plexus_runtime::ErrorChain(&e).to_string())?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", body["error"]));
    }
    Ok(body)
}

#[derive(Default)]
struct Tally {
    load: Load,
    latencies: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, result: &Result<serde_json::Value, String>, took: Duration) {
        self.load.calls += 1;
        self.latencies.push(took);
        match result {
            Ok(body) => {
                for service in SERVICES {
                    let by = body[service].as_str().unwrap_or("?").to_owned();
                    *self
                        .load
                        .served
                        .entry(service.to_owned())
                        .or_default()
                        .entry(by)
                        .or_insert(0) += 1;
                }
            }
            Err(e) => {
                self.load.failed += 1;
                if self.load.errors.len() < 10 {
                    self.load.errors.push(e.clone());
                }
            }
        }
    }

    fn finish(mut self, took: Duration) -> Load {
        self.latencies.sort_unstable();
        let pick = |q: f64| {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies.len() as f64 * q).ceil() as usize)
                .clamp(1, self.latencies.len())
                - 1;
            self.latencies[i].as_secs_f64() * 1000.0
        };
        self.load.p50_ms = pick(0.50);
        self.load.p99_ms = pick(0.99);
        self.load.seconds = took.as_secs_f64();
        self.load.req_per_s = self.load.calls as f64 / took.as_secs_f64().max(1e-9);
        self.load
    }
}

/// `count` clicks: the first `show` one by one, printed; the rest [`CONCURRENCY`] at a time.
async fn click(http: &reqwest::Client, url: &str, count: usize, say: Say, show: usize) -> Load {
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let started = Instant::now();
    for n in 0..show.min(count) {
        let t = Instant::now();
        let result = one(http, url, n).await;
        let took = t.elapsed();
        say.line(match &result {
            Ok(b) => format!(
                "click {}: {} + {} = {} ({}), {} - {} = {} ({})  via {}",
                n + 1,
                b["a"],
                b["b"],
                b["sum"],
                b["add"].as_str().unwrap_or("?"),
                b["a"],
                b["b"],
                b["difference"],
                b["sub"].as_str().unwrap_or("?"),
                b["frontend"].as_str().unwrap_or("?"),
            ),
            Err(e) => format!("click {}: failed: {e}", n + 1),
        });
        plexus_runtime::lock::lock(&tally).record(&result, took);
    }
    if count > show {
        say.line(format!("... {} more", count - show));
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(show));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, tally, next) = (http.clone(), url.to_owned(), tally.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let t = Instant::now();
                let result = one(&http, &url, n).await;
                plexus_runtime::lock::lock(&tally).record(&result, t.elapsed());
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let took = started.elapsed();
    let tally = std::mem::take(&mut *plexus_runtime::lock::lock(&tally));
    tally.finish(took)
}

/// Clicks until `stop` is set and at least `at_least` clicks were made.
async fn click_until(
    http: &reqwest::Client,
    url: &str,
    at_least: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Load {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut n = 0;
    while n < at_least || !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let t = Instant::now();
        let result = one(http, url, n).await;
        tally.record(&result, t.elapsed());
        n += 1;
    }
    tally.finish(started.elapsed())
}

fn print_load(say: Say, load: &Load) {
    for (service, by) in &load.served {
        let parts: Vec<String> = by.iter().map(|(i, n)| format!("{i} {n}")).collect();
        say.line(format!("  {service}: {}", parts.join(", ")));
    }
    say.line(format!(
        "load: {} calls in {:.1}s = {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, failed {}",
        load.calls, load.seconds, load.req_per_s, load.p50_ms, load.p99_ms, load.failed
    ));
}
