//! Job instances whose sidecar is Envoy (`connect { sidecar_task { driver = "envoy" } }`): the
//! agent runs `plexus connect envoy` per instance against its own xDS listener, restarts it, and
//! refuses what it cannot run.

use plexus_test::eventually;

use crate::jobs::{
    MESH, alive, hundred_calls_split_evenly, instances, job, ok, path, served, server, status,
    wait_alive,
};
use crate::write_file;

/// The mesh job with Envoy sidecars for the two web instances (the client keeps the built-in
/// proxy).
fn envoy_mesh() -> String {
    let web = MESH.replacen(
        "sidecar_service {}",
        "sidecar_service {}\n        sidecar_task {\n          driver = \"envoy\"\n        }",
        1,
    );
    assert_ne!(web, MESH);
    web
}

/// The pid of the Envoy whose `--base-id` is `base_id` (the agent uses the admin port).
fn envoy_pid(base_id: u64) -> Option<u64> {
    let wanted = format!("\0--base-id\0{base_id}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u64 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (String::from_utf8_lossy(&cmdline).contains(&wanted) && alive(pid)).then_some(pid)
        })
}

/// Envoy's admin `/ready` answers `LIVE`.
async fn envoy_live(admin: u64) -> bool {
    match reqwest::get(format!("http://127.0.0.1:{admin}/ready")).await {
        Ok(response) => response.text().await.is_ok_and(|t| t.trim() == "LIVE"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn instances_with_envoy_sidecars_serve_split_calls_and_a_killed_envoy_is_restarted() {
    let envoy = plexus_test::envoy::envoy_bin().unwrap();
    let (_data, server) = server().await;
    let jobs_dir = tempfile::tempdir().unwrap();
    let dir = jobs_dir.path().to_str().unwrap().to_owned();
    let envoy = envoy.to_str().unwrap().to_owned();
    let (mut a, _) = crate::agent::agent(
        "envoy-node",
        &server.addr(),
        &[
            "--job-slots",
            "4",
            "--job-dir",
            &dir,
            "--grpc-addr",
            "127.0.0.1:0",
            "--envoy-binary",
            &envoy,
        ],
    )
    .await;
    wait_alive(&server, "envoy-node").await;
    let intention: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "mesh-client", "DestinationName": "mesh-web", "Action": "allow"
    }))
    .unwrap();
    server.client.create_intention(&intention).await.unwrap();

    // Bad input first: an unknown sidecar driver is refused with file:line:field, nothing stored.
    let (_b, bad) = write_file("bad.hcl", &envoy_mesh().replace("\"envoy\"", "\"docker\""));
    let (code, _, err) = job(&server, &["run", path(&bad)]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(
            "bad.hcl:19: job.group[0].service[0].connect.sidecar_task.driver: sidecar driver \"docker\" is not supported (expected \"plexus\", the built-in proxy, or \"envoy\")"
        ),
        "{err}"
    );
    let (code, _, err) = job(&server, &["status", "mesh"]);
    assert_ne!(code, 0, "nothing was stored: {err}");

    let (_d, file) = write_file("mesh.hcl", &envoy_mesh());
    let out = ok(&server, &["run", path(&file)]);
    assert!(out.contains("all 3 instance(s) healthy"), "{out}");
    // (A read may meet a pooled connection the server has closed: read until answered.)
    eventually!(instances(&status(&server, "mesh").await).len() == 3);
    let all = instances(&status(&server, "mesh").await);
    let admin_of = |alloc: &str| {
        all.iter()
            .find(|i| i["allocation"]["id"] == alloc)
            .and_then(|i| i["status"]["ports"]["envoy-admin:mesh-web"].as_u64())
    };
    let (admin0, admin1) = (
        admin_of("mesh-web-0").unwrap(),
        admin_of("mesh-web-1").unwrap(),
    );
    assert_ne!(admin0, admin1);
    // The client's sidecar is the built-in proxy: no Envoy admin port.
    let client = all
        .iter()
        .find(|i| i["allocation"]["group"] == "client")
        .unwrap();
    assert!(
        client["status"]["ports"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("envoy-admin")),
        "{client}"
    );
    // Both web sidecars are Envoys, each with its own base id, live, and passing.
    assert!(envoy_live(admin0).await && envoy_live(admin1).await);
    let envoy0 = envoy_pid(admin0).expect("the Envoy of mesh-web-0 runs");
    assert!(envoy_pid(admin1).is_some());
    let upstream = client["status"]["ports"]["upstream:mesh-web"]
        .as_u64()
        .unwrap();
    let url = format!("http://127.0.0.1:{upstream}/?via=mesh");
    let call = || async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    let reached_both = || async {
        let before = (
            served(jobs_dir.path(), "mesh-web-0"),
            served(jobs_dir.path(), "mesh-web-1"),
        );
        call().await && call().await && call().await && {
            let after = (
                served(jobs_dir.path(), "mesh-web-0"),
                served(jobs_dir.path(), "mesh-web-1"),
            );
            after.0 > before.0 && after.1 > before.1
        }
    };
    eventually!(reached_both().await);
    hundred_calls_split_evenly(jobs_dir.path(), call).await;

    // A killed Envoy is started again (a new process on the same admin port and base id),
    // and both instances serve again.
    std::process::Command::new("kill")
        .args(["-s", "KILL", &envoy0.to_string()])
        .status()
        .unwrap();
    eventually!(envoy_pid(admin0).is_some_and(|pid| pid != envoy0) && envoy_live(admin0).await);
    assert!(!alive(envoy0));
    eventually!(reached_both().await);
    let log = std::fs::read_to_string(
        jobs_dir
            .path()
            .join("mesh-web-0/mesh-web-0-mesh-web-sidecar.stderr.log"),
    )
    .unwrap_or_default();
    assert!(
        !log.is_empty(),
        "Envoy's output goes to the instance's log directory"
    );

    let envoys: Vec<u64> = [admin0, admin1].into_iter().filter_map(envoy_pid).collect();
    assert_eq!(envoys.len(), 2);
    ok(&server, &["stop", "mesh"]);
    // Stop order: the Envoys are stopped with their instances.
    eventually!(envoys.iter().all(|pid| !alive(*pid)));
    a.terminate().await.unwrap();
}

/// A job whose Envoy sidecars no agent can feed (every agent runs without xDS) is refused at
/// placement, with the reason, and nothing is stored.
#[tokio::test]
async fn envoy_sidecars_without_an_agent_serving_xds_are_refused_with_the_reason() {
    let (_data, server) = server().await;
    let (mut a, _) = crate::agent::agent(
        "no-xds",
        &server.addr(),
        &["--job-slots", "4", "--grpc-addr", "off"],
    )
    .await;
    wait_alive(&server, "no-xds").await;
    let (_d, file) = write_file("mesh.hcl", &envoy_mesh());
    let (code, out, err) = job(&server, &["run", path(&file)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(
            "job \"mesh\" group \"web\": 2 of 2 instance(s) cannot be placed: its Envoy sidecars need an agent serving xDS, and none of the 1 alive agent(s) running jobs does (start them with --grpc-addr IP:PORT)"
        ),
        "{err}"
    );
    let (code, _, err) = job(&server, &["status", "mesh"]);
    assert_ne!(code, 0, "nothing was stored: {err}");
    // The same job with the built-in proxy runs there.
    let (_d, builtin) = write_file("mesh.hcl", &envoy_mesh().replace("\"envoy\"", "\"plexus\""));
    let out = ok(&server, &["run", path(&builtin)]);
    assert!(out.contains("all 3 instance(s) healthy"), "{out}");
    ok(&server, &["stop", "mesh"]);
    a.terminate().await.unwrap();
}

/// `plexus dev --job-slots N --acl`: its own agent runs Envoy sidecars against the dev's xDS
/// listener, with the initial management token.
#[tokio::test]
async fn plexus_dev_with_job_slots_runs_envoy_sidecars_under_acls() {
    let envoy = plexus_test::envoy::envoy_bin().unwrap();
    let data = tempfile::tempdir().unwrap();
    let jobs_dir = tempfile::tempdir().unwrap();
    let mut dev = plexus_test::mesh::Dev::start_with_env(
        crate::bin(),
        data.path(),
        &[
            "--acl",
            "--job-slots",
            "3",
            "--job-dir",
            jobs_dir.path().to_str().unwrap(),
            "--envoy-binary",
            envoy.to_str().unwrap(),
        ],
        &plexus_test::server::server_env(),
    )
    .await
    .unwrap();
    let addr = dev.addr();
    let control = plexus_test::server::management_client(&addr).unwrap();
    let intention: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "mesh-client", "DestinationName": "mesh-web", "Action": "allow"
    }))
    .unwrap();
    control.create_intention(&intention).await.unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["job"];
        all.extend_from_slice(args);
        all.extend(["--http-addr", addr.as_str()]);
        plexus_test::mesh::run_cli(crate::bin(), &all, &plexus_test::Server::token_env()).unwrap()
    };
    let (_d, file) = write_file("mesh.hcl", &envoy_mesh());
    let (code, out, err) = cli(&["run", path(&file)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("all 3 instance(s) healthy"), "{out}");
    let (code, out, err) = cli(&["status", "mesh", "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ports = |group: &str| {
        instances(&s)
            .into_iter()
            .filter(|i| i["allocation"]["group"] == group)
            .map(|i| i["status"]["ports"].clone())
            .collect::<Vec<_>>()
    };
    let admins: Vec<u64> = ports("web")
        .iter()
        .filter_map(|p| p["envoy-admin:mesh-web"].as_u64())
        .collect();
    assert_eq!(admins.len(), 2, "{s}");
    for admin in &admins {
        assert!(envoy_live(*admin).await);
    }
    let upstream = ports("client")[0]["upstream:mesh-web"].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{upstream}/?via=mesh");
    let call = || async {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    // Both Envoys serve (through mTLS, with the intention) under ACLs.
    eventually!(
        call().await
            && call().await
            && served(jobs_dir.path(), "mesh-web-0") > 0
            && served(jobs_dir.path(), "mesh-web-1") > 0
    );
    let envoys: Vec<u64> = admins.iter().copied().filter_map(envoy_pid).collect();
    assert_eq!(envoys.len(), 2);
    let (code, _, err) = cli(&["stop", "mesh"]);
    assert_eq!(code, 0, "{err}");
    eventually!(envoys.iter().all(|pid| !alive(*pid)));
    dev.process.terminate().await.unwrap();
}
