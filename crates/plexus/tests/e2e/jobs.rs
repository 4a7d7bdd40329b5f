//! `plexus job`: job files through the CLI into the servers' job store, with versions, and the
//! bad input around them.

use std::path::Path;

use plexus_test::Server;
use plexus_test::mesh::run_cli;

use crate::{bin, write_file};

pub const CALC: &str = r#"job "calc" {
  group "add" {
    count = 2
    network { port "http" {} }
    service {
      name = "add"
      port = "http"
      check { type = "tcp"  interval = "1s"  timeout = "500ms" }
    }
    task "app" {
      driver = "exec"
      config { command = "sleep"  args = ["30"] }
    }
  }
}
"#;

/// Runs `plexus job ARGS --http-addr SERVER` with the management token.
pub fn job(server: &Server, args: &[&str]) -> (i32, String, String) {
    let addr = server.addr();
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    all.extend(["--http-addr", addr.as_str()]);
    run_cli(bin(), &all, &Server::token_env()).unwrap()
}

pub fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = job(server, args);
    assert_eq!(
        code, 0,
        "plexus job {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub async fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let server = Server::start(
        bin(),
        "server-1",
        &["--store", "embedded", "--data-dir", &data],
    )
    .await
    .unwrap();
    (dir, server)
}

/// Waits until `node`'s agent holds its lease (placement only uses live agents).
pub async fn wait_alive(server: &Server, node: &str) {
    plexus_test::eventually!(
        server
            .client
            .health_state("passing", plexus_api::client::QueryOptions::default())
            .await
            .is_ok_and(|c| c
                .value
                .iter()
                .any(|c| c.node == node && c.check_id == plexus_api::remote::LEASE_CHECK_ID))
    );
}

/// A server and one agent that runs up to 8 instances.
async fn server_and_agent(node: &str) -> (tempfile::TempDir, Server, plexus_test::Process) {
    let (dir, server) = server().await;
    let (agent, _) = crate::agent::agent(node, &server.addr(), &["--job-slots", "8"]).await;
    wait_alive(&server, node).await;
    (dir, server, agent)
}

#[tokio::test]
async fn run_plan_scale_stop_history_and_revert_keep_every_version() {
    let (_data, server, mut agent) = server_and_agent("versions").await;
    let (_dir, file) = write_file("calc.hcl", CALC);
    let f = path(&file);

    let out = ok(&server, &["plan", f]);
    assert!(out.contains("Job \"calc\" (new):"), "{out}");
    assert!(out.contains("group \"add\": create 2 instance(s)"), "{out}");
    let out = ok(&server, &["run", "--detach", f]);
    assert!(out.contains("Job \"calc\" submitted: version 1"), "{out}");
    let out = ok(&server, &["run", "--detach", f]);
    assert!(out.contains("Job \"calc\" unchanged: version 1"), "{out}");

    let out = ok(&server, &["scale", "calc", "add", "3", "--json"]);
    let w: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["version"], 2);
    let out = ok(&server, &["status", "calc", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["current"]["job"]["group"][0]["count"], 3);
    let out = ok(&server, &["plan", f]);
    assert!(out.contains("group \"add\": scale 3 -> 2"), "{out}");

    ok(&server, &["stop", "calc"]);
    let out = ok(&server, &["status"]);
    assert!(out.contains("calc") && out.contains("stopped"), "{out}");
    let out = ok(&server, &["revert", "calc", "1"]);
    assert!(out.contains("reverted to version 1: version 4"), "{out}");
    let out = ok(&server, &["history", "calc", "--json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let causes: Vec<&str> = history
        .iter()
        .map(|v| v["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["revert to 1", "stop", "scale add to 3", "run"]);
    assert_eq!(history[0]["job"]["group"][0]["count"], 2);
    ok(&server, &["stop", "calc"]);
    // SIGTERM: the agent stops its instances (and their sidecars) before it exits.
    agent.terminate().await.unwrap();
}

#[tokio::test]
async fn bad_job_input_is_refused_with_the_field_and_nothing_is_lost() {
    let (_data, server, mut agent) = server_and_agent("bad-input").await;
    let (_dir, file) = write_file("calc.hcl", CALC);
    ok(&server, &["run", "--detach", path(&file)]);

    // Unknown fields: file:line:field, exit 64, nothing sent.
    let (_d, typo) = write_file("typo.hcl", &CALC.replace("    count = 2", "    cuont = 2"));
    let (code, _, err) = job(&server, &["run", path(&typo)]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(
            "typo.hcl:3: job.group[0].cuont: unknown field `cuont` (did you mean `count`?)"
        ),
        "{err}"
    );
    let (_d, rules) = write_file(
        "rules.hcl",
        &CALC
            .replace("port = \"http\"\n", "port = \"web\"\n")
            .replace("\"exec\"", "\"docker\""),
    );
    let (code, _, err) = job(&server, &["plan", path(&rules)]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("rules.hcl:7: job.group[0].service[0].port: port \"web\" is not a port"),
        "{err}"
    );
    assert!(
        err.contains("rules.hcl:11: job.group[0].task[0].driver: driver \"docker\""),
        "{err}"
    );

    // Another job registering the same service: refused, naming the job that has it.
    let (_d, other) = write_file("other.hcl", &CALC.replace("job \"calc\"", "job \"other\""));
    let (code, _, err) = job(&server, &["run", "--detach", path(&other)]);
    assert_ne!(code, 0);
    assert!(
        err.contains("service \"add\" is already registered by job \"calc\""),
        "{err}"
    );

    // A group or version that does not exist; a job that does not exist.
    let (code, _, err) = job(&server, &["scale", "calc", "mul", "2"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("job \"calc\" has no group \"mul\" (groups: add)"),
        "{err}"
    );
    let (code, _, err) = job(&server, &["revert", "calc", "7"]);
    assert_ne!(code, 0);
    assert!(err.contains("job \"calc\" has no version 7"), "{err}");
    let (code, _, err) = job(&server, &["status", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("job \"nope\" not found"), "{err}");

    // The API itself: a body with an unknown field names it; no token is refused.
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/jobs", server.addr());
    let response = client
        .put(&url)
        .header("X-Consul-Token", plexus_test::server::management_token())
        .json(&serde_json::json!({"name": "x", "group": [{"name": "g", "cuont": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "group[0].cuont", "{body}");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);

    // Nothing stored was lost.
    let out = ok(&server, &["history", "calc", "--json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(history.len(), 1);
    ok(&server, &["stop", "calc"]);
    // SIGTERM: the agent stops its instances (and their sidecars) before it exits.
    agent.terminate().await.unwrap();
}

/// A group of `count` small HTTP servers on dynamic ports, checked over TCP.
fn web_job(name: &str, count: u32, command: &str) -> String {
    format!(
        r#"job "{name}" {{
  group "web" {{
    count = {count}
    network {{
      port "http" {{}}
    }}
    service {{
      name = "{name}-web"
      port = "http"
      check {{
        type     = "tcp"
        interval = "500ms"
        timeout  = "400ms"
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "{command}"
        args    = ["-c", "exec python3 -m http.server $PLEXUS_PORT_http --bind 127.0.0.1"]
      }}
    }}
    restart {{
      attempts = 5
      delay    = "200ms"
    }}
  }}
}}
"#
    )
}

/// The job's status, `null` once the job is unknown (404); any other failure fails the test
/// (it used to read as `null` too, hiding a connection error as "no such job").
pub async fn status(server: &Server, job: &str) -> serde_json::Value {
    match server
        .client
        .job_status(job, plexus_api::client::QueryOptions::default())
        .await
    {
        Ok(status) => serde_json::to_value(status.value).unwrap(),
        Err(error) if error.status() == Some(404) => serde_json::Value::Null,
        Err(error) => panic!("reading job {job:?}'s status: {error}"),
    }
}

pub fn instances(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["instances"].as_array().cloned().unwrap_or_default()
}

fn running_on(status: &serde_json::Value, node: &str) -> usize {
    instances(status)
        .iter()
        .filter(|i| i["allocation"]["node"] == node && i["status"]["state"] == "running")
        .count()
}

async fn passing(server: &Server, service: &str) -> usize {
    server
        .client
        .health_service(service, true, plexus_api::client::QueryOptions::default())
        .await
        .map_or(0, |e| e.value.len())
}

#[tokio::test]
async fn two_agents_on_one_host_spread_restart_and_take_over_instances() {
    let (_data, server) = server().await;
    // A lease short enough for a quick take-over, long enough for a loaded machine.
    let slots = ["--job-slots", "8", "--lease-ttl", "4s"];
    let (mut a, _) = crate::agent::agent("jobs-a", &server.addr(), &slots).await;
    let (b, _) = crate::agent::agent("jobs-b", &server.addr(), &slots).await;
    wait_alive(&server, "jobs-a").await;
    wait_alive(&server, "jobs-b").await;
    let (_dir, file) = write_file("web.hcl", &web_job("spread", 6, "sh"));
    let out = ok(&server, &["run", path(&file)]);
    assert!(out.contains("placed 6/6"), "{out}");
    assert!(
        out.contains("Job \"spread\" version 1: all 6 instance(s) healthy"),
        "{out}"
    );

    // 3/3, all running on distinct ports, all passing.
    plexus_test::eventually!(
        {
            let s = status(&server, "spread").await;
            running_on(&s, "jobs-a") == 3 && running_on(&s, "jobs-b") == 3
        },
        std::time::Duration::from_secs(30)
    );
    let s = status(&server, "spread").await;
    let mut ports: Vec<u64> = instances(&s)
        .iter()
        .map(|i| i["status"]["ports"]["http"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "{s}");
    plexus_test::eventually!(passing(&server, "spread-web").await == 6);
    let out = ok(&server, &["status", "spread"]);
    assert!(
        out.contains("spread-web-0") && out.contains("running"),
        "{out}"
    );

    // A killed instance is restarted.
    let victim = instances(&s)
        .into_iter()
        .find(|i| i["allocation"]["node"] == "jobs-a")
        .unwrap();
    let id = victim["allocation"]["id"].as_str().unwrap().to_owned();
    let pid = victim["status"]["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-s", "KILL", &pid.to_string()])
        .status()
        .unwrap();
    plexus_test::eventually!({
        let s = status(&server, "spread").await;
        instances(&s).iter().any(|i| {
            i["allocation"]["id"] == id.as_str()
                && i["status"]["state"] == "running"
                && i["status"]["restarts"].as_u64() >= Some(1)
                && i["status"]["pid"].as_u64() != Some(pid)
        })
    });
    plexus_test::eventually!(passing(&server, "spread-web").await == 6);

    // Agent b dies: within its lease TTL (2s) plus start time, a runs all six.
    let orphans: Vec<u64> = instances(&status(&server, "spread").await)
        .iter()
        .filter(|i| i["allocation"]["node"] == "jobs-b")
        .filter_map(|i| i["status"]["pid"].as_u64())
        .collect();
    b.signal("KILL").unwrap();
    let killed = std::time::Instant::now();
    plexus_test::eventually!(
        running_on(&status(&server, "spread").await, "jobs-a") == 6,
        std::time::Duration::from_secs(30)
    );
    let took = killed.elapsed();
    for pid in orphans {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .status();
    }
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    ok(&server, &["stop", "spread"]);
    // SIGTERM: the agent stops its instances (and their sidecars) before it exits.
    a.terminate().await.unwrap();
    plexus_test::eventually!(instances(&status(&server, "spread").await).is_empty());
}

#[tokio::test]
async fn instances_that_cannot_run_say_why() {
    let (_data, server) = server().await;
    let port = plexus_test::free_port();
    let range = format!("{port}-{port}");
    let (mut a, _) = crate::agent::agent(
        "jobs-lone",
        &server.addr(),
        &["--job-slots", "3", "--job-ports", &range],
    )
    .await;
    wait_alive(&server, "jobs-lone").await;

    // More instances than the agents hold: refused by placement, with the reason.
    let (_d, big) = write_file("big.hcl", &web_job("big", 4, "sh"));
    let (code, _, err) = job(&server, &["plan", path(&big)]);
    assert_ne!(code, 0);
    assert!(err.contains("1 of 4 instance(s) cannot be placed"), "{err}");
    let (code, _, err) = job(&server, &["run", path(&big)]);
    assert_ne!(code, 0);
    assert!(
        err.contains("1 of 4 instance(s) cannot be placed: the 1 eligible agent(s) have 3 slot(s)"),
        "{err}"
    );
    let (code, _, _) = job(&server, &["status", "big"]);
    assert_ne!(code, 0, "a refused job is not stored");

    // A command that does not exist: the OS error in `job status`.
    let (_d, missing) = write_file(
        "missing.hcl",
        &web_job("missing", 1, "/nonexistent/plexus-app"),
    );
    let (code, _, err) = job(&server, &["run", path(&missing)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: instance missing-web-0: cannot start"),
        "{err}"
    );
    plexus_test::eventually!({
        let s = status(&server, "missing").await;
        instances(&s).iter().any(|i| {
            i["status"]["state"] == "failed"
                && i["status"]["message"].as_str().is_some_and(|m| {
                    m.contains(
                        "cannot start \"/nonexistent/plexus-app\": No such file or directory",
                    )
                })
        })
    });
    let out = ok(&server, &["status", "missing"]);
    assert!(out.contains("No such file or directory"), "{out}");
    ok(&server, &["stop", "missing"]);

    // The one-port range runs one instance; the second reports the exhausted range.
    let (_d, two) = write_file("two.hcl", &web_job("two", 2, "sh"));
    ok(&server, &["run", "--detach", path(&two)]);
    let want = format!("no free port left in {port}–{port} for port \"http\"");
    plexus_test::eventually!({
        let s = status(&server, "two").await;
        running_on(&s, "jobs-lone") == 1
            && instances(&s).iter().any(|i| {
                i["status"]["state"] == "failed"
                    && i["status"]["message"].as_str() == Some(want.as_str())
            })
    });
    ok(&server, &["stop", "two"]);
    // SIGTERM: the agent stops its instances (and their sidecars) before it exits.
    a.terminate().await.unwrap();
}

pub const MESH: &str = r#"job "mesh" {
  group "web" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name = "mesh-web"
      port = "http"
      check {
        type     = "http"
        path     = "/"
        interval = "500ms"
        timeout  = "400ms"
      }
      connect {
        sidecar_service {}
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "sh"
        args    = ["-c", "exec python3 -m http.server $PLEXUS_PORT_http --bind 127.0.0.1"]
      }
    }
  }
  group "client" {
    network {
      port "http" {}
    }
    service {
      name = "mesh-client"
      port = "http"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "mesh-web"
            }
          }
        }
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "sh"
        args    = ["-c", "echo upstream=$PLEXUS_UPSTREAM_MESH_WEB; exec python3 -m http.server $PLEXUS_PORT_http --bind 127.0.0.1"]
      }
    }
  }
}
"#;

/// Whether process `pid` runs (a zombie does not count).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Requests the web instance served, from its output file.
/// 100 calls through `call` (true when one succeeded): none fails, and the two instances
/// `mesh-web-0` and `mesh-web-1` serve them within 40/60.
pub async fn hundred_calls_split_evenly<F, Fut>(jobs_dir: &Path, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let before = (
        served(jobs_dir, "mesh-web-0"),
        served(jobs_dir, "mesh-web-1"),
    );
    let mut failed = 0;
    for _ in 0..100 {
        if !call().await {
            failed += 1;
        }
    }
    assert_eq!(failed, 0);
    let n0 = served(jobs_dir, "mesh-web-0") - before.0;
    let n1 = served(jobs_dir, "mesh-web-1") - before.1;
    assert_eq!(n0 + n1, 100, "{n0} + {n1}");
    assert!((40..=60).contains(&n0), "split {n0}/{n1}");
}

pub fn served(dir: &Path, alloc: &str) -> usize {
    std::fs::read_to_string(dir.join(alloc).join("app.stderr.log"))
        .map(|t| t.lines().filter(|l| l.contains("\"GET /?via=mesh")).count())
        .unwrap_or(0)
}

#[tokio::test]
async fn instances_reach_each_other_through_their_own_sidecars_and_calls_split_evenly() {
    let (_data, server) = server().await;
    let jobs_dir = tempfile::tempdir().unwrap();
    let dir = jobs_dir.path().to_str().unwrap().to_owned();
    let (mut a, _) = crate::agent::agent(
        "mesh-node",
        &server.addr(),
        &["--job-slots", "4", "--job-dir", &dir],
    )
    .await;
    wait_alive(&server, "mesh-node").await;
    let intention: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "mesh-client", "DestinationName": "mesh-web", "Action": "allow"
    }))
    .unwrap();
    server.client.create_intention(&intention).await.unwrap();
    let (_d, file) = write_file("mesh.hcl", MESH);
    let out = ok(&server, &["run", path(&file)]);
    assert!(out.contains("all 3 instance(s) healthy"), "{out}");
    // An instance passes only with its sidecar listening: both web instances carry the check.
    plexus_test::eventually!(
        server
            .client
            .health_service(
                "mesh-web",
                true,
                plexus_api::client::QueryOptions::default()
            )
            .await
            .is_ok_and(|web| web.value.len() == 2
                && web
                    .value
                    .iter()
                    .all(|e| e.checks.iter().any(|c| c.name == "sidecar ready")))
    );

    let s = status(&server, "mesh").await;
    let client = instances(&s)
        .into_iter()
        .find(|i| i["allocation"]["group"] == "client")
        .unwrap();
    let upstream = client["status"]["ports"]["upstream:mesh-web"]
        .as_u64()
        .unwrap();
    // The app was told where its upstream is.
    let told = std::fs::read_to_string(jobs_dir.path().join("mesh-client-0/app.stdout.log"));
    assert_eq!(
        told.unwrap_or_default().lines().next(),
        Some(format!("upstream=127.0.0.1:{upstream}").as_str())
    );
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
    // Both web sidecars known to the client's sidecar: calls then split.
    plexus_test::eventually!(call().await);
    plexus_test::eventually!({
        let before = (
            served(jobs_dir.path(), "mesh-web-0"),
            served(jobs_dir.path(), "mesh-web-1"),
        );
        call().await && call().await && {
            let after = (
                served(jobs_dir.path(), "mesh-web-0"),
                served(jobs_dir.path(), "mesh-web-1"),
            );
            after.0 > before.0 && after.1 > before.1
        }
    });
    hundred_calls_split_evenly(jobs_dir.path(), call).await;

    // `job logs` reads an instance's output from its agent.
    let out = ok(&server, &["logs", "mesh", "client"]);
    assert!(
        out.starts_with(&format!("upstream=127.0.0.1:{upstream}\n")),
        "{out}"
    );
    let out = ok(
        &server,
        &["logs", "mesh", "web", "--instance", "1", "--stderr"],
    );
    assert!(out.contains("\"GET /?via=mesh HTTP/1.1\" 200"), "{out}");
    let (code, _, err) = job(&server, &["logs", "mesh", "web", "--instance", "7"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("group \"web\" has no instance 7 (instances: mesh-web-0, mesh-web-1)"),
        "{err}"
    );
    let agent_addr = client["status"]["agent"].as_str().unwrap().to_owned();
    let response = reqwest::Client::new()
        .get(format!(
            "http://{agent_addr}/v1/agent/job/logs/bad%24name?task=app"
        ))
        .header("X-Consul-Token", plexus_test::server::management_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = reqwest::get(format!(
        "http://{agent_addr}/v1/agent/job/logs/mesh-client-0?task=app"
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 403);
    let pids: Vec<u64> = instances(&status(&server, "mesh").await)
        .iter()
        .filter_map(|i| i["status"]["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 3);
    ok(&server, &["stop", "mesh"]);
    // SIGTERM: the agent stops its instances (and their sidecars) before it exits.
    a.terminate().await.unwrap();
    for pid in pids {
        assert!(!alive(pid), "instance process {pid} outlived its agent");
    }
}

/// `plexus dev --job-slots N`: its own agent runs jobs, with ACLs on (the runner uses the
/// initial management token); `job logs` reads through the dev server's agent routes.
#[tokio::test]
async fn plexus_dev_with_job_slots_runs_a_job_under_acls() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = plexus_test::mesh::Dev::start_with_env(
        bin(),
        data.path(),
        &["--acl", "--job-slots", "2"],
        &plexus_test::server::server_env(),
    )
    .await
    .unwrap();
    let addr = dev.addr();
    let cli = |args: &[&str]| {
        let mut all = vec!["job"];
        all.extend_from_slice(args);
        all.extend(["--http-addr", addr.as_str()]);
        run_cli(bin(), &all, &Server::token_env()).unwrap()
    };
    let text = web_job("devjob", 1, "sh").replace(
        "    restart {",
        "    update {\n      min_healthy_time = \"500ms\"\n    }\n    restart {",
    );
    let (_d, file) = write_file("devjob.hcl", &text);
    let (code, out, err) = cli(&["run", path(&file)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("Job \"devjob\" version 1: all 1 instance(s) healthy"),
        "{out}"
    );
    let (code, out, err) = cli(&["status", "devjob", "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pid = instances(&s)[0]["status"]["pid"].as_u64().unwrap();
    assert_eq!(instances(&s)[0]["allocation"]["node"], "test-node");
    let (code, out, err) = cli(&["logs", "devjob", "web", "--stderr"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = cli(&["stop", "devjob"]);
    assert_eq!(code, 0, "{err}");
    dev.process.terminate().await.unwrap();
    plexus_test::eventually!(!alive(pid));
}
