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
