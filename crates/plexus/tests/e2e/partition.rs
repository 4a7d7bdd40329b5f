//! Hosts failing (network namespaces, `plexus_test::hosts`): `kill -9` of one host's agent, a
//! 20 s partition of one host under traffic. Instances turn critical within the lease TTL,
//! traffic moves to the other host without a failed request, the partitioned host serves its
//! local clients from its last configuration, everything recovers by itself, and a node is never
//! shown passing while its agent has no lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use plexus_api::client::QueryOptions;
use plexus_test::{Host, Server, eventually};
use tokio_util::sync::CancellationToken;

use crate::hosts::{Spec, cluster_with, echo_through, passing_echo_nodes};

/// The agents' lease TTL in these tests.
const TTL: Duration = Duration::from_secs(3);
/// How late after the TTL a lapse may be noticed (the reaper's watch, a loaded machine).
const SLACK: Duration = Duration::from_secs(1);

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it started.
    pub started: SystemTime,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// Lines sent one after another through a host's client sidecar, each on a new connection.
pub struct Traffic {
    stop: CancellationToken,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Starts sending from inside `host`.
    pub fn start(host: &Host) -> Self {
        let stop = CancellationToken::new();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (host, stop, outcomes) = (host.clone(), stop.clone(), outcomes.clone());
            async move {
                let mut i = 0u64;
                while !stop.is_cancelled() {
                    let started = SystemTime::now();
                    let line = format!("{} #{i}", host.name());
                    let error = echo_through(&host, &line)
                        .await
                        .err()
                        .map(|e| format!("{e:#}"));
                    outcomes.lock().unwrap().push(Outcome { started, error });
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            outcomes,
            task,
        }
    }

    /// Requests completed so far.
    pub fn done(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Stops after the request in flight; returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.cancel();
        self.task.await.unwrap();
        self.outcomes.lock().unwrap().clone()
    }
}

/// Asserts that no request failed.
fn assert_no_failure(outcomes: &[Outcome], what: &str) {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}

/// Asserts that no request failed except, at most, the one in flight across the link when it was
/// cut (an opaque TCP stream whose bytes are on their way cannot be retried elsewhere).
fn assert_only_cut_requests_failed(outcomes: &[Outcome], cut: SystemTime, what: &str) {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    assert!(
        failed.len() <= 1 && failed.iter().all(|o| o.started < cut),
        "{what}: requests failed other than the one in flight at the cut ({cut:?}): {failed:?}"
    );
}

/// Waits until `traffic` has completed `n` more requests.
async fn more_requests(traffic: &Traffic, n: usize) {
    let target = traffic.done() + n;
    eventually!(traffic.done() >= target);
}

/// The time a log line was written (the tracing timestamp it starts with).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hh, mm) = (
        time.next()?.parse::<u64>().ok()?,
        time.next()?.parse::<u64>().ok()?,
    );
    let secs: f64 = time.next()?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let whole = days * 86_400 + hh * 3600 + mm * 60;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(secs))
}

/// Every time the server logged `message` about node `node`.
fn server_log_times(server: &Server, message: &str, node: &str) -> Vec<SystemTime> {
    let Some(process) = &server.process else {
        return Vec::new();
    };
    let field = format!("node=\"{node}\"");
    process
        .output()
        .lines()
        .filter(|l| l.contains(message) && l.contains(&field))
        .filter_map(log_time)
        .collect()
}

/// The instances of `echo` on a node, as the server shows them: (when seen, passing).
struct Sampler {
    stop: CancellationToken,
    samples: Arc<Mutex<Vec<(SystemTime, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(server: &Server, node: &'static str) -> Self {
        let stop = CancellationToken::new();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (client, stop, samples) = (server.client.clone(), stop.clone(), samples.clone());
            async move {
                while !stop.is_cancelled() {
                    if let Ok(entries) = client
                        .health_connect("echo", false, QueryOptions::default())
                        .await
                    {
                        let passing = entries.value.iter().any(|e| {
                            e.node.node == node
                                && e.aggregated_status() == plexus_api::CheckStatus::Passing
                        });
                        samples.lock().unwrap().push((SystemTime::now(), passing));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self {
            stop,
            samples,
            task,
        }
    }

    async fn stop(self) -> Vec<(SystemTime, bool)> {
        self.stop.cancel();
        self.task.await.unwrap();
        self.samples.lock().unwrap().clone()
    }
}

/// Echo on hosts a and b, the client on a; `kill -9` of b's agent. b's instance turns critical
/// within the lease TTL, a's client sidecar drops it and no request fails (b's sidecar and app
/// still run, so nothing could fail before either); after the change is seen no connection goes
/// to b. `deregister_critical_service_after` then removes b's echo *and* its sidecar.
#[tokio::test]
async fn kill_9_of_an_agent_moves_traffic_and_its_service_leaves_with_its_sidecar() {
    let cluster = cluster_with(Spec {
        server_args: &["--default-intention-policy", "allow"],
        agent_args: &["--lease-ttl", "3s"],
        a: (true, true),
        b: (true, false),
        deregister_after: Some("4s"),
    })
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let client = a.client_sidecar.as_ref().unwrap();
    let traffic = Traffic::start(&a.host);
    let (a_echo, b_echo) = (a.echo.as_ref().unwrap(), b.echo.as_ref().unwrap());
    eventually!(a_echo.connections() > 2 && b_echo.connections() > 2);

    let killed = Instant::now();
    b.agent.process.signal("KILL").unwrap();
    eventually!(
        passing_echo_nodes(&cluster.server).await == ["a"],
        TTL + Duration::from_secs(10)
    );
    let critical_after = killed.elapsed();
    assert!(
        critical_after <= TTL + SLACK,
        "b turned critical {critical_after:?} after the kill (TTL {TTL:?})"
    );
    eventually!(
        client
            .endpoints("echo")
            .await
            .is_ok_and(|e| e == [a.host.addr(21000).to_string()])
    );
    // The request in flight when the change was seen may still have gone to b.
    more_requests(&traffic, 2).await;
    let at_b = b_echo.connections();
    more_requests(&traffic, 20).await;
    assert_eq!(
        b_echo.connections(),
        at_b,
        "a connection went to b after the change"
    );

    // deregister_critical_service_after (4 s): b's echo leaves, with its sidecar.
    let on_b = |rows: Vec<plexus_api::CatalogService>| rows.iter().any(|r| r.node == "b");
    eventually!(
        !on_b(
            cluster
                .server
                .client
                .catalog_service("echo", QueryOptions::default())
                .await
                .unwrap()
                .value
        ) && !on_b(
            cluster
                .server
                .client
                .catalog_service("echo-sidecar-proxy", QueryOptions::default())
                .await
                .unwrap()
                .value
        )
    );
    let outcomes = traffic.stop().await;
    assert_no_failure(&outcomes, "client on a");
    eprintln!(
        "kill -9: critical after {critical_after:?}; {} requests, none failed",
        outcomes.len()
    );
}

/// Echo and a client on both a and b; b is cut off for 20 s under traffic from both.
#[tokio::test]
async fn a_20s_partition_under_traffic() {
    let cluster = cluster_with(Spec {
        server_args: &["--default-intention-policy", "allow"],
        agent_args: &["--lease-ttl", "3s"],
        a: (true, true),
        b: (true, true),
        deregister_after: None,
    })
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (a_client, b_client) = (
        a.client_sidecar.as_ref().unwrap(),
        b.client_sidecar.as_ref().unwrap(),
    );
    let b_echo = b.echo.as_ref().unwrap();
    let sampler = Sampler::start(&cluster.server, "b");
    let traffic_a = Traffic::start(&a.host);
    let traffic_b = Traffic::start(&b.host);
    more_requests(&traffic_a, 5).await;
    more_requests(&traffic_b, 5).await;

    let cut = SystemTime::now();
    let cut_instant = Instant::now();
    b.host.partition().unwrap();
    // b's instance turns critical within the lease TTL; a's traffic goes to a only.
    eventually!(
        passing_echo_nodes(&cluster.server).await == ["a"],
        TTL + Duration::from_secs(10)
    );
    let critical_after = cut_instant.elapsed();
    assert!(
        critical_after <= TTL + SLACK,
        "critical {critical_after:?} after the cut"
    );
    eventually!(
        a_client
            .endpoints("echo")
            .await
            .is_ok_and(|e| e == [a.host.addr(21000).to_string()])
    );
    // Static stability on b: its sidecars keep their last configuration (both endpoints) and
    // say since when it is stale; its local clients keep being served.
    eventually!(
        b_client
            .admin_get("/ready")
            .await
            .is_ok_and(|(status, body)| status == 200 && body.contains("stale since"))
    );
    let both = [
        a.host.addr(21000).to_string(),
        b.host.addr(21000).to_string(),
    ];
    assert_eq!(b_client.endpoints("echo").await.unwrap(), both);
    let served_in_partition = traffic_b.done();

    // The partition lasts 20 s (the scenario's length, not a wait for a condition).
    tokio::time::sleep_until((cut_instant + Duration::from_secs(20)).into()).await;
    assert!(
        traffic_b.done() > served_in_partition + 5,
        "b's local clients were not served during the partition: {:?}",
        traffic_b.outcomes.lock().unwrap()[served_in_partition.saturating_sub(3)..].to_vec()
    );
    assert_eq!(b_client.endpoints("echo").await.unwrap(), both);
    let healed = SystemTime::now();
    let healed_instant = Instant::now();
    b.host.heal().unwrap();

    // Everything recovers by itself.
    eventually!(passing_echo_nodes(&cluster.server).await == ["a", "b"]);
    let recovered_after = healed_instant.elapsed();
    eventually!(a_client.endpoints("echo").await.is_ok_and(|e| e == both));
    eventually!(
        b_client
            .admin_get("/ready")
            .await
            .is_ok_and(|(status, body)| status == 200 && !body.contains("stale"))
    );
    let outcomes_b = traffic_b.stop().await;
    let at_b = b_echo.connections();
    eventually!(b_echo.connections() > at_b); // only a's traffic reaches b's app now
    let outcomes_a = traffic_a.stop().await;
    let samples = sampler.stop().await;
    assert_only_cut_requests_failed(&outcomes_a, cut, "client on a");
    assert_only_cut_requests_failed(&outcomes_b, cut, "client on b (partitioned)");

    // Never passing without a lease: critical from (cut + TTL + slack) until the heal, and after
    // the heal passing only once the server granted b's agent a new lease.
    let in_partition = samples
        .iter()
        .filter(|(t, _)| *t > cut + TTL + SLACK && *t < healed)
        .collect::<Vec<_>>();
    assert!(!in_partition.is_empty());
    assert!(
        in_partition.iter().all(|(_, passing)| !passing),
        "b shown passing during the partition"
    );
    let granted = server_log_times(&cluster.server, "agent lease granted", "b");
    let regranted = granted
        .iter()
        .copied()
        .filter(|t| *t > healed)
        .min()
        .expect("b's agent took a new lease after the heal");
    let first_passing = samples
        .iter()
        .filter(|(t, passing)| *t > healed && *passing)
        .map(|(t, _)| *t)
        .min()
        .expect("b passing after the heal");
    assert!(
        first_passing + Duration::from_millis(100) >= regranted,
        "b passing at {first_passing:?}, before its new lease at {regranted:?}"
    );
    let failed = |o: &[Outcome]| o.iter().filter(|o| o.error.is_some()).count();
    eprintln!(
        "partition: critical {critical_after:?} after the cut, passing {recovered_after:?} after \
         the heal; a: {} requests ({} failed, in flight at the cut), b: {} requests ({} failed)",
        outcomes_a.len(),
        failed(&outcomes_a),
        outcomes_b.len(),
        failed(&outcomes_b),
    );
}

#[test]
fn log_times_are_read() {
    let t = log_time("2026-12-04T20:22:57.063773Z  INFO agent lease granted").unwrap();
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((secs - 1_796_415_777.063_773).abs() < 1e-3, "{secs}");
    assert!(log_time("no time here").is_none());
}
