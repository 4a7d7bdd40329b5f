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
      config { command = "sleep"  args = ["600"] }
    }
  }
}
"#;

/// Runs `plexus job ARGS --http-addr SERVER` with the management token.
fn job(server: &Server, args: &[&str]) -> (i32, String, String) {
    let addr = server.addr();
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    all.extend(["--http-addr", addr.as_str()]);
    run_cli(bin(), &all, &Server::token_env()).unwrap()
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = job(server, args);
    assert_eq!(
        code, 0,
        "plexus job {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn server() -> (tempfile::TempDir, Server) {
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

#[tokio::test]
async fn run_plan_scale_stop_history_and_revert_keep_every_version() {
    let (_data, server) = server().await;
    let (_dir, file) = write_file("calc.hcl", CALC);
    let f = path(&file);

    let out = ok(&server, &["plan", f]);
    assert!(out.contains("Job \"calc\" (new):"), "{out}");
    assert!(out.contains("group \"add\": create 2 instance(s)"), "{out}");
    let out = ok(&server, &["run", f]);
    assert!(out.contains("Job \"calc\" submitted: version 1"), "{out}");
    let out = ok(&server, &["run", f]);
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
}

#[tokio::test]
async fn bad_job_input_is_refused_with_the_field_and_nothing_is_lost() {
    let (_data, server) = server().await;
    let (_dir, file) = write_file("calc.hcl", CALC);
    ok(&server, &["run", path(&file)]);

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
    let (code, _, err) = job(&server, &["run", path(&other)]);
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
    assert!(server.process.as_ref().is_some());
}
