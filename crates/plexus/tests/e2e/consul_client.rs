//! A Consul client library nobody here wrote (py-consul, from PyPI) works against `plexus dev`.
//! The test set-up script installs it into `.tools/venv`; a missing venv fails the test.

use std::path::PathBuf;

use crate::dev;

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PLEXUS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join(".tools/venv/bin/python")
}

const SCRIPT: &str = r#"
import sys, consul
host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)
c.agent.service.register("pyweb", service_id="pyweb-1", address="127.0.0.1", port=8181,
                         tags=["py"], check=consul.Check.ttl("30s"))
c.agent.check.ttl_pass("service:pyweb-1", notes="from python")
index, nodes = c.health.service("pyweb", passing=True)
assert int(index) > 0, index
assert len(nodes) == 1, nodes
svc = nodes[0]["Service"]
assert svc["ID"] == "pyweb-1" and svc["Port"] == 8181 and svc["Tags"] == ["py"], svc
index2, services = c.catalog.services()
assert "pyweb" in services, services
print("py-consul OK", svc["ID"], nodes[0]["Checks"][0]["Status"])
"#;

#[tokio::test]
async fn py_consul_registers_and_reads_back_through_health() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let dev = dev(&[]).await;
    let out = tokio::process::Command::new(&python)
        .args(["-c", SCRIPT, "127.0.0.1", &dev.http.port().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("py-consul OK pyweb-1 passing"), "{stdout}");
}
