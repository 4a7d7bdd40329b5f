#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::job::SidecarDriver;

const CALC: &str = r#"job "calc" {
  group "add" {
    count = 2
    network { port "http" {} }
    service {
      name = "add"
      port = "http"
      check { type = "http"  path = "/health"  interval = "1s"  timeout = "500ms" }
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "sub"
              local_bind_port  = 9002
            }
          }
        }
      }
    }
    task "app" {
      driver = "exec"
      config { command = "python3"  args = ["add.py"] }
      env { MODE = "fast" }
    }
    update { max_parallel = 1  min_healthy_time = "5s"  healthy_deadline = "1m"  auto_revert = true }
    restart { attempts = 3  delay = "1s"  mode = "delay" }
  }
  group "sub" {
    network {
      port "http" {}
    }
    service {
      name = "sub"
      port = "http"
    }
    task "app" {
      driver = "exec"
      config {
        command = "python3"
      }
    }
  }
}
"#;

fn errors(name: &str, text: &str) -> Vec<String> {
    parse_job(Path::new(name), text)
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_issue_example_parses_with_defaults_filled() {
    let job = parse_job(Path::new("calc.hcl"), CALC).unwrap();
    assert_eq!(job.name, "calc");
    let add = &job.group.0[0];
    assert_eq!(add.count, Some(2));
    assert_eq!(add.network.as_ref().unwrap().port.0[0].name, "http");
    let up = &add.service.0[0]
        .connect
        .as_ref()
        .unwrap()
        .sidecar_service
        .as_ref()
        .unwrap()
        .proxy
        .as_ref()
        .unwrap()
        .upstreams
        .0[0];
    assert_eq!(
        (up.destination_name.as_str(), up.local_bind_port),
        ("sub", 9002)
    );
    let task = &add.task.0[0];
    assert_eq!(task.config.args, ["add.py"]);
    assert_eq!(task.env["MODE"], "fast");
    assert_eq!(add.update.as_ref().unwrap().auto_revert, Some(true));
    assert_eq!(add.restart.as_ref().unwrap().mode.as_deref(), Some("delay"));
    let sub = &job.group.0[1];
    assert_eq!(sub.count, Some(1));
    assert_eq!(sub.restart.as_ref().unwrap().attempts, Some(2));
    assert_eq!(
        sub.update.as_ref().unwrap().healthy_deadline,
        Some(crate::GoDuration(std::time::Duration::from_secs(300)))
    );

    // The JSON form is the converted one; it decodes to the same job.
    let json = serde_json::to_string(&serde_json::json!({ "job": job })).unwrap();
    assert_eq!(parse_job(Path::new("calc.json"), &json).unwrap(), job);
}

#[test]
fn unknown_fields_name_file_line_and_field() {
    let text = CALC.replace("    count = 2", "    cuont = 2");
    let errs = errors("calc.hcl", &text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "calc.hcl:3: job.group[0].cuont: unknown field `cuont` (did you mean `count`?)"
        ),
        "{errs:?}"
    );
    let text = CALC.replace(
        "command = \"python3\"\n",
        "command = \"python3\"\n        comand = \"x\"\n",
    );
    let errs = errors("calc.hcl", &text);
    assert!(
        errs[0].starts_with("calc.hcl:40: job.group[1].task[0].config.comand: unknown field"),
        "{errs:?}"
    );
}

#[test]
fn rule_violations_are_all_reported_with_their_lines() {
    let text = CALC
        .replace(
            "port = \"http\"\n      check",
            "port = \"web\"\n      check",
        )
        .replace(
            "driver = \"exec\"\n      config { command",
            "driver = \"docker\"\n      config { command",
        )
        .replace("group \"sub\"", "group \"add\"");
    let errs = errors("calc.hcl", &text);
    assert!(
        errs.iter().any(|e| e
            .starts_with("calc.hcl:7: job.group[0].service[0].port: port \"web\" is not a port")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("calc.hcl:21: job.group[0].task[0].driver: driver \"docker\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(
            |e| e.starts_with("calc.hcl:28: job.group[1].name: group \"add\" is defined twice")
        ),
        "{errs:?}"
    );
}

#[test]
fn a_service_in_two_groups_and_labels_are_refused() {
    let text = CALC.replace("name = \"sub\"\n      port", "name = \"add\"\n      port");
    let errs = errors("calc.hcl", &text);
    assert!(
        errs.iter().any(|e| e
            .contains("job.group[1].service[0].name: service \"add\" is registered by two groups")),
        "{errs:?}"
    );
    let errs = errors(
        "x.hcl",
        "job { group \"a\" { task \"t\" { driver = \"exec\" config { command = \"x\" } } } }\n",
    );
    assert!(errs[0].contains("block `job` takes one label"), "{errs:?}");
    let errs = errors("x.hcl", "job \"a\" {}\njob \"b\" {}\n");
    assert!(errs[0].contains("exactly one job"), "{errs:?}");
    let errs = errors("x.yaml", "");
    assert!(errs[0].contains("must end in .hcl"), "{errs:?}");
}

#[test]
fn plan_shows_counts_updates_and_removals() {
    let job = parse_job(Path::new("calc.hcl"), CALC).unwrap();
    let fresh = super::super::plan::plan(&job, None);
    assert_eq!(fresh.current_version, None);
    assert_eq!((fresh.groups[0].before, fresh.groups[0].after), (0, 2));
    let same = super::super::plan::plan(&job, Some((3, &job)));
    assert!(same.unchanged);
    let mut changed = job.clone();
    changed.group.0[0].count = Some(4);
    changed.group.0[0].task.0[0].config.args = vec!["add2.py".into()];
    changed.group.0.pop();
    let p = super::super::plan::plan(&changed, Some((3, &job)));
    assert!(!p.unchanged);
    assert_eq!(
        (p.groups[0].before, p.groups[0].after, p.groups[0].updated),
        (2, 4, true)
    );
    assert!(p.groups[1].removed);
}

const ENVOY: &str = r#"job "mesh" {
  group "web" {
    network {
      port "http" {}
    }
    service {
      name = "web"
      port = "http"
      connect {
        sidecar_service {}
        sidecar_task {
          driver = "envoy"
        }
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "web"
      }
    }
  }
}
"#;

#[test]
fn a_sidecar_task_chooses_envoy_or_the_built_in_proxy() {
    let job = parse_job(Path::new("mesh.hcl"), ENVOY).unwrap();
    let connect = job.group.0[0].service.0[0].connect.as_ref().unwrap();
    assert_eq!(connect.sidecar_driver(), SidecarDriver::Envoy);
    let job = parse_job(
        Path::new("mesh.hcl"),
        &ENVOY.replace("\"envoy\"", "\"plexus\""),
    )
    .unwrap();
    let connect = job.group.0[0].service.0[0].connect.as_ref().unwrap();
    assert_eq!(connect.sidecar_driver(), SidecarDriver::Plexus);
    let job = parse_job(Path::new("calc.hcl"), CALC).unwrap();
    let connect = job.group.0[0].service.0[0].connect.as_ref().unwrap();
    assert_eq!(connect.sidecar_driver(), SidecarDriver::Plexus);
}

#[test]
fn an_unknown_sidecar_driver_or_field_is_named_with_its_line() {
    let errs = errors("mesh.hcl", &ENVOY.replace("\"envoy\"", "\"docker\""));
    assert_eq!(
        errs,
        [
            "mesh.hcl:12: job.group[0].service[0].connect.sidecar_task.driver: sidecar driver \"docker\" is not supported (expected \"plexus\", the built-in proxy, or \"envoy\")"
        ],
    );
    let errs = errors(
        "mesh.hcl",
        &ENVOY.replace(
            "driver = \"envoy\"",
            "driver = \"envoy\"\n          image = \"envoy\"",
        ),
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "mesh.hcl:13: job.group[0].service[0].connect.sidecar_task.image: unknown field `image`"
        ),
        "{errs:?}"
    );
    let errs = errors("mesh.hcl", &ENVOY.replace("sidecar_service {}", ""));
    assert!(
        errs.iter().any(|e| e.starts_with(
            "mesh.hcl:11: job.group[0].service[0].connect.sidecar_task: sidecar_task configures"
        )),
        "{errs:?}"
    );
}
