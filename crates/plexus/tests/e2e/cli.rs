//! The CLI against a running `plexus dev`: register, list, catalog, health, validate, deregister.

use plexus_test::eventually;
use plexus_test::mesh::run_cli;

use crate::{bin, client_echo_hcl, dev, write_file};

#[tokio::test]
async fn services_catalog_and_health_commands() {
    let dev = dev(&[]).await;
    let (_dir, file) = write_file("mesh.hcl", &client_echo_hcl(9090, plexus_test::free_port()));
    let path = file.to_str().unwrap();

    let (code, out, err) = dev.cli(&["services", "register", path]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Registered service: client") && out.contains("Registered service: echo"),
        "{out}"
    );

    let (code, out, _) = dev.cli(&["services", "list"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(
        out.contains("echo-sidecar-proxy") && out.contains("connect-proxy"),
        "{out}"
    );

    let (code, out, _) = dev.cli(&["services", "list", "--json"]).unwrap();
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["client-sidecar-proxy"]["Kind"], "connect-proxy");

    // Flags beat the environment; http:// is accepted.
    let url = format!("http://{}", dev.addr());
    let (code, out, err) = run_cli(
        bin(),
        &["catalog", "services", "--json", "--http-addr", &url],
        &[("PLEXUS_HTTP_ADDR", "127.0.0.1:1")],
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        json.get("echo").is_some() && json.get("client-sidecar-proxy").is_some(),
        "{json}"
    );

    let (code, out, _) = dev.cli(&["catalog", "nodes"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("test-node"), "{out}");

    // echo's TCP check targets 9090, where nothing listens here: critical.
    eventually!(dev.cli(&["health", "echo"]).unwrap().1.contains("critical"));
    let (code, out, _) = dev.cli(&["health", "echo", "--passing", "--json"]).unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );

    let (code, out, _) = dev.cli(&["services", "deregister", "echo"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("Deregistered service: echo"));
    let services = dev.client.agent_services().await.unwrap();
    assert!(
        !services.contains_key("echo") && !services.contains_key("echo-sidecar-proxy"),
        "{services:?}"
    );

    let (code, _, err) = dev.cli(&["services", "deregister", "echo"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("404") || err.contains("not found"), "{err}");
}

#[test]
fn validate_reports_every_error_with_file_and_field() {
    let (_dir, good) = write_file("good.hcl", &client_echo_hcl(9090, 9191));
    let (code, out, err) = run_cli(bin(), &["validate", good.to_str().unwrap()], &[]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("4 service(s)") || out.contains("2 service(s)"),
        "{out}"
    );

    let bad = "services {\n  name = \"a\"\n  port = 0\n}\nservices {\n  name = \"b\"\n  port = 99999\n  check {\n    tcp = \"x\"\n  }\n}\n";
    let (_dir2, bad) = write_file("bad.hcl", bad);
    let (code, _, err) = run_cli(bin(), &["validate", bad.to_str().unwrap()], &[]).unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad.hcl"), "{err}");
    assert!(err.contains("services[1].port"), "{err}");
    assert!(
        err.contains("services[1].check"),
        "all errors at once: {err}"
    );
}

#[test]
fn version_help_and_unreachable_control_plane() {
    let (code, out, _) = run_cli(bin(), &["--version"], &[]).unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("plexus "), "{out}");
    for cmd in [
        &["dev", "--help"][..],
        &["proxy", "--help"],
        &["services", "register", "--help"],
        &["health", "--help"],
    ] {
        let (code, out, _) = run_cli(bin(), cmd, &[]).unwrap();
        assert_eq!(code, 0, "{cmd:?}");
        assert!(out.contains("Usage"), "{cmd:?}: {out}");
    }
    let port = plexus_test::free_port();
    let (code, _, err) = run_cli(
        bin(),
        &["catalog", "services"],
        &[("PLEXUS_HTTP_ADDR", &format!("127.0.0.1:{port}"))],
    )
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains(&port.to_string()),
        "names the address it tried: {err}"
    );
}

/// `PLEXUS_THREADS` that is not a whole number of threads from 1 to 1024 is a configuration
/// error (64) naming the variable and the value, before anything starts.
#[test]
fn a_bad_thread_count_is_refused_by_name() {
    for bad in ["0", "-1", "two", "", "1025"] {
        let (code, _, err) =
            run_cli(bin(), &["catalog", "services"], &[("PLEXUS_THREADS", bad)]).unwrap();
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(
            err.contains(&format!("PLEXUS_THREADS=\"{bad}\"")) && err.contains("at least 1"),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn services_register_with_a_bad_file_registers_nothing() {
    let dev = dev(&[]).await;
    let (_d1, good) = write_file("good.hcl", "service {\n  name = \"fine\"\n  port = 1\n}\n");
    let (_d2, bad) = write_file(
        "bad.json",
        "{\"service\": {\"name\": \"broken\", \"port\": \"x\"}}",
    );
    let (code, out, err) = dev
        .cli(&[
            "services",
            "register",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("bad.json") && err.contains("port"), "{err}");
    assert!(
        dev.client.agent_services().await.unwrap().is_empty(),
        "all or nothing"
    );

    let (code, _, err) = dev
        .cli(&["services", "register", "/nonexistent/x.hcl"])
        .unwrap();
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/x.hcl"), "{err}");
}
