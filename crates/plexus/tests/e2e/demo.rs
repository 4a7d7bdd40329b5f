//! `plexus demo echo` runs the whole quick start by itself and exits 0.

use plexus_test::free_port;
use plexus_test::mesh::run_cli;

use crate::bin;

#[test]
fn demo_echo_runs_end_to_end() {
    let port = free_port().to_string();
    let (code, out, err) =
        run_cli(bin(), &["demo", "echo", "--upstream-port", &port], &[]).unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(r#"sent "hello" -> got "hello""#), "{out}");
    assert!(
        out.contains("6 connections: echo -> 3, echo-2 -> 3"),
        "{out}"
    );
    assert!(
        out.contains("4 connections: echo -> 0, echo-2 -> 4"),
        "{out}"
    );
    assert!(out.contains("demo passed"), "{out}");
}

/// A taken upstream port is named, before anything starts.
#[test]
fn demo_echo_names_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out, err) =
        run_cli(bin(), &["demo", "echo", "--upstream-port", &port], &[]).unwrap();
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!("port {port} for the client's upstream listener")),
        "{err}"
    );
    assert!(err.contains("is taken on this host"), "{err}");
}

/// The calculator's `--upstream-port`, taken, is named too, before anything starts.
#[test]
fn demo_calculator_names_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out, err) = run_cli(
        bin(),
        &["demo", "calculator", "--upstream-port", &port],
        &[],
    )
    .unwrap();
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!(
            "port {port} for the client's upstream listener (--upstream-port) is taken on this host"
        )),
        "{err}"
    );
    assert!(!out.contains("== 1."), "nothing started: {out}");
}

/// `plexus demo calculator | head`: the demo's output closes early, yet it goes on and stops
/// what it started; none of the job's instances and sidecars outlives it.
#[tokio::test]
async fn demo_calculator_with_its_output_closed_stops_every_instance() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args(["demo", "calculator", "--clicks", "20"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its log, read all along (a full pipe would stall it), to say why if it fails. Shared, not
    // joined: what it started may hold the pipe open after it exits.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (log_ended, log_end) = std::sync::mpsc::channel::<()>();
    {
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            drop(log_ended);
        });
    }
    // The control plane (`== 1. control plane http://ADDR, ...`) and the instance lines
    // (`  calculator-add-0  port 20008 pid 19540  passing`), up to the clicks.
    let mut left = Leftovers::default();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("== 2.") {
            break;
        }
        if let Some(rest) = line.strip_prefix("== 1. control plane http://") {
            left.control = rest.split(',').next().unwrap().to_owned();
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [id, "port", _, "pid", pid, ..] = words[..]
            && id.starts_with("calculator-")
        {
            left.pids.push(pid.parse::<u32>().unwrap());
        }
    }
    if left.pids.len() != 6 {
        let _ = child.wait();
        // Its last words (the error) once the pipe closes, or what came by then.
        let _ = log_end.recv_timeout(std::time::Duration::from_secs(5));
        panic!(
            "six instances with their pids, found {:?}; the demo's log:\n{}",
            left.pids,
            log.lock().unwrap()
        );
    }
    assert!(!left.control.is_empty());
    drop(lines);
    plexus_test::eventually!(
        child.try_wait().unwrap().is_some(),
        std::time::Duration::from_secs(120)
    );
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}; its log:\n{}",
        log.lock().unwrap()
    );
    plexus_test::eventually!(left.running().is_empty());
}

/// The processes a calculator demo started: its instances, and its sidecars (found by the
/// control plane they talk to). Those still running when dropped (a failed test) are killed.
#[derive(Default)]
struct Leftovers {
    control: String,
    pids: Vec<u32>,
}

impl Leftovers {
    /// Running (not gone, not a zombie nobody reaped yet).
    fn running(&self) -> Vec<u32> {
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(") ")
                    .next()
                    .is_some_and(|s| !s.starts_with('Z'))
            })
        };
        let needle = format!("--http-addr\0{}\0", self.control);
        let sidecars = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&needle)
                        && String::from_utf8_lossy(&c).contains("--sidecar-for")
                })
            });
        self.pids
            .iter()
            .copied()
            .chain(sidecars)
            .filter(|pid| alive(*pid))
            .collect()
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in self.running() {
            // A positive pid: one process, never a group.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn demo_events(broker: &str) -> String {
    let tool = if broker == "kafka" {
        "tansu"
    } else {
        "nats-server"
    };
    let path = plexus_test::brokers::tools_bin().join(tool);
    assert!(
        path.exists(),
        "{} missing: run scripts/setup-test-env.sh",
        path.display()
    );
    let path = path.display().to_string();
    let flag = if broker == "kafka" {
        "--tansu"
    } else {
        "--nats-server"
    };
    // The demo finds .tools/venv/bin/python and clients/python from the repository root.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let python = format!("{root}/.tools/venv/bin/python");
    let (code, out, err) = run_cli(
        bin(),
        &[
            "demo", "events", "--broker", broker, flag, &path, "--python", &python,
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for needle in [
        "10 requests to hello.pojo, by app: {\"hello-b\": 5, \"py-app\": 5}",
        "\"ok\":10",
        "hello-a saw: hello.pojo (",
        "demo passed",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    out
}

#[test]
fn demo_events_over_kafka_with_a_python_app() {
    demo_events("kafka");
}

#[test]
fn demo_events_runs_end_to_end() {
    let out = demo_events("nats");
    for needle in [
        " joins (hello-b)",
        "hello.pojo (",
        ") registered",
        "hello.pojo served by hello-b",
        "peer ",
        " left (hello-b)",
        ") unregistered",
        "demo passed",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let shares = out
        .lines()
        .find(|l| l.starts_with("10 requests:"))
        .expect("load line");
    assert!(
        shares.contains("-> 5,") && shares.ends_with("-> 5"),
        "{shares}"
    );
}

/// `plexus demo calculator`: the calculator job (Python add ×2 and sub ×2, Node.js frontend ×2)
/// comes up with its 6 instances on dynamic ports, all passing; 1,000 clicks through the demo
/// client's sidecar upstream to `frontend` split evenly (±10 %) over the two instances of each
/// service; a killed add instance is restarted with at most 1 % failed calls meanwhile.
#[test]
fn demo_calculator_splits_clicks_evenly_and_survives_a_killed_instance() {
    let (code, out, err) = run_cli(
        bin(),
        &["demo", "calculator", "--clicks", "1000", "--json"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("demo passed"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let instances = report["instances"].as_array().unwrap();
    let groups: Vec<&str> = instances
        .iter()
        .map(|i| i["group"].as_str().unwrap())
        .collect();
    for group in ["frontend", "add", "sub"] {
        assert_eq!(
            groups.iter().filter(|g| **g == group).count(),
            2,
            "two instances of {group}: {report}"
        );
    }
    assert_eq!(instances.len(), 6, "{report}");
    let mut ports: Vec<u64> = instances
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    assert!(instances.iter().all(|i| i["passing"] == true), "{report}");
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "dynamic ports, one each: {report}");
    assert!(!ports.contains(&0));
    // The clicks went through one address, the demo client's sidecar upstream to `frontend`,
    // none of the frontends' own ports.
    let url = report["url"].as_str().unwrap();
    let clicked: u64 = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/calc")
        .parse()
        .unwrap();
    assert!(!ports.contains(&clicked), "{url} is not an instance's port");

    let clicks = &report["clicks"];
    assert_eq!(clicks["calls"], 1000);
    assert_eq!(clicks["failed"], 0, "{clicks}");
    for service in ["frontend", "add", "sub"] {
        let by = clicks["served"][service].as_object().unwrap();
        assert_eq!(by.len(), 2, "{service}: {by:?}");
        for n in by.values() {
            let n = n.as_u64().unwrap();
            assert!((450..=550).contains(&n), "{service} split ±10 %: {by:?}");
        }
    }
    let failover = &report["failover"];
    assert_ne!(failover["old_pid"], failover["new_pid"], "{failover}");
    let calls = failover["load"]["calls"].as_u64().unwrap();
    let failed = failover["load"]["failed"].as_u64().unwrap();
    assert!(calls >= 1000, "{failover}");
    assert!(failed * 100 <= calls, "at most 1 % failed: {failover}");
    eprintln!(
        "split {} / {} / {}; {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms; failover: {failed} of {calls} failed, restarted in {:.1}s",
        clicks["served"]["frontend"],
        clicks["served"]["add"],
        clicks["served"]["sub"],
        clicks["req_per_s"].as_f64().unwrap(),
        clicks["p50_ms"].as_f64().unwrap(),
        clicks["p99_ms"].as_f64().unwrap(),
        failover["restart_seconds"].as_f64().unwrap(),
    );
}
