//! `plexus demo http`: the L7 mesh in one process, printed as a readable report.
//!
//! 1. A dev control plane; a web service in two versions (`web-1`…`web-3` are v1, `web-4` is
//!    v2, told apart by `meta.version`), each with its sidecar, and a client sidecar.
//! 2. Config entries through the API: a resolver with v1/v2 subsets and outlier detection in
//!    `service-defaults`, a 90/10 splitter, a router sending `x-canary: 1` to v2 and retrying
//!    5xx within a route timeout.
//! 3. Split and canary: the share of each version, and where canary requests went.
//! 4. `web-2` turns flaky (fails 1 in 3): retries hide it, the client sees every request succeed.
//! 5. `web-3` turns slow (longer than the route timeout): its requests time out (504) until the
//!    outlier detector ejects it.
//!
//! Figures come from the demo's own web instances and the client sidecar's `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plexus_api::config_entry::ConfigEntry;
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::demo::{DemoSidecar, parse};
use super::dev::DevServer;

/// The route timeout; the slow instance answers after [`SLOW`].
const ROUTE_TIMEOUT: &str = "2s";
/// How long the slow instance takes to answer.
const SLOW: Duration = Duration::from_secs(5);
/// How long the demo waits for the chain to reach the client sidecar.
const APPLY_DEADLINE: Duration = Duration::from_secs(30);

/// `plexus demo http`
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// The client's local port for the `web` upstream.
    #[arg(long, default_value_t = 9292)]
    pub upstream_port: u16,
    /// HTTP API address of the demo's control plane (port 0 picks a free one).
    #[arg(long = "http-addr", default_value = "127.0.0.1:0")]
    pub http_addr: String,
    /// Requests sent for the split share.
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
}

/// One web instance: answers `200 <version>` with an `x-version` header; can be made flaky
/// (every third request answers 503) or slow.
struct WebInstance {
    id: &'static str,
    version: &'static str,
    port: u16,
    state: Arc<WebState>,
}

#[derive(Default)]
struct WebState {
    served: AtomicUsize,
    fail_every: AtomicUsize,
    delay_ms: AtomicU64,
}

impl WebInstance {
    async fn start(
        id: &'static str,
        version: &'static str,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(WebState::default());
        let served = Arc::clone(&state);
        let app = axum::Router::new().fallback(move || {
            let state = Arc::clone(&served);
            async move { answer(&state, version).await }
        });
        let stop = shutdown.token();
        shutdown.spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(error) = serving.await {
                tracing::warn!(%error, "demo web instance stopped");
            }
        });
        Ok(Self {
            id,
            version,
            port,
            state,
        })
    }

    fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }
}

async fn answer(state: &WebState, version: &'static str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = state.served.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let every = state.fail_every.load(Ordering::SeqCst);
    let status = if every > 0 && n.is_multiple_of(every) {
        http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        http::StatusCode::OK
    };
    (status, [("x-version", version)], version).into_response()
}

/// A free port on 127.0.0.1 for a sidecar or an upstream listener (so the demo never collides
/// with another agent's 21000-range assignments or a program listening on a fixed port).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn definitions(web: &[WebInstance], upstream_port: u16) -> anyhow::Result<String> {
    let mut text = format!(
        r#"services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      port = {client_sidecar}
      proxy {{
        upstreams {{
          destination_name = "web"
          local_bind_port  = {upstream_port}
          config = {{ protocol = "http" }}
        }}
      }}
    }}
  }}
}}
"#,
        client_sidecar = free_port()?
    );
    for instance in web {
        text.push_str(&format!(
            r#"services {{
  id   = "{id}"
  name = "web"
  port = {port}
  meta = {{ version = "{version}" }}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{
      port = {sidecar}
      proxy {{
        config = {{ protocol = "http" }}
      }}
    }}
  }}
}}
"#,
            id = instance.id,
            port = instance.port,
            version = instance.version,
            sidecar = free_port()?
        ));
    }
    Ok(text)
}

/// The entries of the scenario, in the order they can be written.
fn entries() -> Vec<serde_json::Value> {
    let retries = serde_json::json!({"NumRetries": 2, "RetryOn": ["5xx"],
        "RequestTimeout": ROUTE_TIMEOUT});
    let mut canary = retries.clone();
    canary["ServiceSubset"] = "v2".into();
    vec![
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "PassiveHealthCheck": {"Interval": "1s", "MaxFailures": 3,
                "EnforcingConsecutive5xx": 100, "MaxEjectionPercent": 50,
                "BaseEjectionTime": "30s"}}),
        serde_json::json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                        "v2": {"Filter": "Service.Meta.version == v2"}}}),
        serde_json::json!({"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                       {"Weight": 10, "ServiceSubset": "v2"}]}),
        serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
             "Destination": canary},
            {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": retries}]}),
    ]
}

/// What one request came back with: the status and the version that answered.
async fn call(http: &reqwest::Client, url: &str, canary: bool) -> (u16, String) {
    let mut request = http.get(url);
    if canary {
        request = request.header("x-canary", "1");
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let version = response
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            (status, version)
        }
        Err(error) => {
            tracing::debug!(%error, "demo request failed");
            (0, "-".to_owned())
        }
    }
}

/// Sends `n` requests, `parallel` at a time; returns each outcome.
async fn send(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    parallel: usize,
    canary: bool,
) -> Vec<(u16, String)> {
    let mut outcomes = Vec::with_capacity(n);
    let mut running = JoinSet::new();
    for _ in 0..n {
        if running.len() >= parallel
            && let Some(Ok(outcome)) = running.join_next().await
        {
            outcomes.push(outcome);
        }
        let (http, url) = (http.clone(), url.to_owned());
        running.spawn(async move { call(&http, &url, canary).await });
    }
    while let Some(outcome) = running.join_next().await {
        if let Ok(outcome) = outcome {
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// The sum of the samples of `family` whose labels include `upstream="web"`, from `/metrics`.
async fn metric(admin: SocketAddr, family: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?;
    let prefix = format!("{family}{{");
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&prefix) && line.contains("upstream=\"web\""))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value))
}

fn count(outcomes: &[(u16, String)], status: u16) -> usize {
    outcomes.iter().filter(|(s, _)| *s == status).count()
}

/// `503 x2, 504 x1` for the outcomes that were not 200 (`none` when all were).
fn failures(outcomes: &[(u16, String)]) -> String {
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for (status, _) in outcomes.iter().filter(|(s, _)| *s != 200) {
        *by_status.entry(*status).or_default() += 1;
    }
    if by_status.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = by_status
        .iter()
        .map(|(status, n)| match status {
            0 => format!("no answer x{n}"),
            _ => format!("{status} x{n}"),
        })
        .collect();
    parts.join(", ")
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Runs the scenario.
pub async fn run(args: HttpArgs) -> anyhow::Result<ExitCode> {
    super::demo::port_is_free(
        ([127, 0, 0, 1], args.upstream_port).into(),
        "the client's upstream listener (--upstream-port)",
    )?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();

    println!("== 1. control plane, web v1 (web-1, web-2, web-3) and v2 (web-4), sidecars");
    let mut web = Vec::new();
    for (id, version) in [
        ("web-1", "v1"),
        ("web-2", "v1"),
        ("web-3", "v1"),
        ("web-4", "v2"),
    ] {
        web.push(WebInstance::start(id, version, &shutdown).await?);
    }
    let text = definitions(&web, args.upstream_port)?;
    let defs: Vec<(PathBuf, _)> = parse(&text)?
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
    println!("control plane: http://{control}");
    let client = DemoSidecar::start(&control, "client", &shutdown).await?;
    for instance in &web {
        DemoSidecar::start(&control, instance.id, &shutdown)
            .await?
            .wait_ready()
            .await?;
    }
    client.wait_endpoints("web", web.len()).await?;
    println!("client sidecar sees {} web endpoints", web.len());

    println!("== 2. config entries through the API");
    let api = plexus_api::client::Client::new(&control)?;
    for entry in entries() {
        let kind = entry["Kind"].as_str().unwrap_or_default().to_owned();
        let parsed = ConfigEntry::from_json(entry)
            .map_err(|error| anyhow::anyhow!("demo entry {kind} is invalid: {error}"))?;
        if !api.config_write(&parsed, None).await? {
            bail!("the control plane did not store the {kind} entry");
        }
        println!("wrote {kind} web");
    }
    let url = format!("http://127.0.0.1:{}/", args.upstream_port);
    let http = reqwest::Client::new();
    // The router is written last: once canary requests reach v2, the whole chain is applied.
    let started = Instant::now();
    while call(&http, &url, true).await.1 != "v2" {
        if started.elapsed() > APPLY_DEADLINE {
            bail!("the client sidecar did not apply the chain within {APPLY_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the client sidecar applied the chain");

    println!("== 3. 90/10 split and the x-canary header route");
    let outcomes = send(&http, &url, args.requests, 8, false).await;
    let v1 = outcomes.iter().filter(|(_, v)| v == "v1").count();
    let v2 = outcomes.iter().filter(|(_, v)| v == "v2").count();
    let n = outcomes.len();
    println!(
        "split: {n} requests: v1 {v1} ({:.1}%), v2 {v2} ({:.1}%)",
        percent(v1, n),
        percent(v2, n)
    );
    let canary = send(&http, &url, 20, 4, true).await;
    let canary_v2 = canary.iter().filter(|(_, v)| v == "v2").count();
    println!(
        "canary: {} requests with x-canary: 1: v2 {canary_v2}",
        canary.len()
    );

    println!("== 4. web-2 turns flaky (every third request fails with 503): retries hide it");
    web[1].state.fail_every.store(3, Ordering::SeqCst);
    let retries_before = metric(client.admin, "plexus_proxy_http_retries_total").await?;
    let served_before = web[1].served();
    // Three at a time: a retry goes to an instance the request has not tried yet, so it never
    // lands on web-2 again; and the retry budget (20 % of live requests, at least 3 retries in
    // flight) never has to refuse one, so every request can be saved. With more in flight the
    // budget would refuse some retries on purpose: that is what it is for.
    let outcomes = send(&http, &url, 300, 3, false).await;
    let ok = count(&outcomes, 200);
    let retries = metric(client.admin, "plexus_proxy_http_retries_total").await? - retries_before;
    let refused = metric(
        client.admin,
        "plexus_proxy_http_retry_budget_exhausted_total",
    )
    .await?;
    println!(
        "flaky: {} requests: success {ok} ({:.1}%); failed: {}; web-2 served {}; retries {retries}; retries refused by the budget {refused}",
        outcomes.len(),
        percent(ok, outcomes.len()),
        failures(&outcomes),
        web[1].served() - served_before
    );
    web[1].state.fail_every.store(0, Ordering::SeqCst);

    println!("== 5. web-3 turns slow ({SLOW:?}, route timeout {ROUTE_TIMEOUT}): outlier detection");
    web[2].state.delay_ms.store(
        u64::try_from(SLOW.as_millis()).unwrap_or(u64::MAX),
        Ordering::SeqCst,
    );
    let outcomes = send(&http, &url, 100, 10, false).await;
    println!(
        "slow: {} requests: success {}, timed out (504) {}",
        outcomes.len(),
        count(&outcomes, 200),
        count(&outcomes, 504)
    );
    let ejections = metric(client.admin, "plexus_proxy_http_outlier_ejections_total").await?;
    println!(
        "ejections: {ejections} (plexus_proxy_http_outlier_ejections_total{{upstream=\"web\"}})"
    );
    let outcomes = send(&http, &url, 50, 10, false).await;
    println!(
        "after: {} requests: success {}, timed out (504) {}",
        outcomes.len(),
        count(&outcomes, 200),
        count(&outcomes, 504)
    );
    web[2].state.delay_ms.store(0, Ordering::SeqCst);

    println!("demo finished");
    shutdown.trigger();
    dev.stop(Duration::from_secs(2)).await;
    shutdown.drain(Duration::from_secs(5)).await;
    Ok(ExitCode::SUCCESS)
}
