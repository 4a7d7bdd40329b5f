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

#[test]
fn demo_events_runs_end_to_end() {
    let nats = plexus_test::brokers::tools_bin().join("nats-server");
    assert!(
        nats.exists(),
        "{} missing: run scripts/setup-test-env.sh",
        nats.display()
    );
    let nats = nats.display().to_string();
    let (code, out, err) =
        run_cli(bin(), &["demo", "events", "--nats-server", &nats], &[]).unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
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
