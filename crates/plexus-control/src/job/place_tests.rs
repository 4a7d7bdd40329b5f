#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

fn jv(name: &str, count: u32, extra: &str) -> JobVersion {
    let text = format!(
        r#"job "{name}" {{
  group "g" {{
    count = {count}
    {extra}
    task "t" {{
      driver = "exec"
      config {{
        command = "sleep"
      }}
    }}
  }}
}}
"#
    );
    JobVersion {
        version: 1,
        submitted: 0,
        stopped: false,
        job: plexus_api::job::file::parse_job(Path::new("j.hcl"), &text).unwrap(),
        cause: "run".into(),
    }
}

fn node(name: &str, slots: u32, zone: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        meta: [("zone".to_owned(), zone.to_owned())].into(),
        slots,
        alive: true,
    }
}

fn per_node(p: &Placement) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in &p.allocations {
        *m.entry(a.node.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn spreads_evenly_and_keeps_instances_where_they_are() {
    let nodes = [node("a", 10, "x"), node("b", 10, "y")];
    let p = place(&[jv("calc", 6, "")], &nodes, &[]);
    assert!(p.failures.is_empty(), "{:?}", p.failures);
    assert_eq!(per_node(&p), [("a".into(), 3), ("b".into(), 3)].into());
    // Scaling up keeps the six where they are.
    let more = place(&[jv("calc", 8, "")], &nodes, &p.allocations);
    for a in &p.allocations {
        assert!(more.allocations.contains(a), "{a:?} moved");
    }
    assert_eq!(per_node(&more), [("a".into(), 4), ("b".into(), 4)].into());
}

#[test]
fn a_dead_node_loses_its_instances_to_the_others() {
    let mut nodes = vec![node("a", 10, "x"), node("b", 10, "y")];
    let p = place(&[jv("calc", 6, "")], &nodes, &[]);
    nodes[1].alive = false;
    let moved = place(&[jv("calc", 6, "")], &nodes, &p.allocations);
    assert_eq!(per_node(&moved), [("a".into(), 6)].into());
}

#[test]
fn constraints_slots_and_static_ports_refuse_with_the_reason() {
    let nodes = [node("a", 2, "x"), node("b", 2, "y")];
    let p = place(&[jv("calc", 5, "")], &nodes, &[]);
    assert_eq!(p.allocations.len(), 4);
    assert!(
        p.failures[0].contains(
            "1 of 5 instance(s) cannot be placed: the 2 eligible agent(s) have 4 slot(s)"
        ),
        "{:?}",
        p.failures
    );
    let zoned = jv(
        "calc",
        2,
        "constraint {\n      attribute = \"$${meta.zone}\"\n      value = \"y\"\n    }",
    );
    let p = place(std::slice::from_ref(&zoned), &nodes, &[]);
    assert_eq!(per_node(&p), [("b".into(), 2)].into());
    let p = place(&[zoned], &[node("a", 2, "x")], &[]);
    assert!(
        p.failures[0].contains("no alive agent matches the constraints"),
        "{:?}",
        p.failures
    );
    let fixed = jv(
        "calc",
        3,
        "network {\n      port \"http\" {\n        static = 8080\n      }\n    }",
    );
    let p = place(&[fixed], &nodes, &[]);
    assert!(
        p.failures[0].contains("a static port allows one instance per node"),
        "{:?}",
        p.failures
    );
    let p = place(&[jv("calc", 1, "")], &[node("a", 0, "x")], &[]);
    assert!(
        p.failures[0].contains("no agent runs jobs"),
        "{:?}",
        p.failures
    );
}

#[test]
fn stopped_jobs_place_nothing() {
    let mut j = jv("calc", 3, "");
    j.stopped = true;
    let p = place(&[j], &[node("a", 10, "x")], &[]);
    assert!(p.allocations.is_empty() && p.failures.is_empty());
}

#[test]
fn a_group_with_an_envoy_sidecar_goes_only_to_agents_serving_xds() {
    let envoy = r#"network {
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
    }"#;
    let mut with_xds = node("b", 10, "y");
    with_xds.meta.insert(XDS_META.to_owned(), "true".to_owned());
    let nodes = [node("a", 10, "x"), with_xds];
    let p = place(&[jv("mesh", 2, envoy)], &nodes, &[]);
    assert!(p.failures.is_empty(), "{:?}", p.failures);
    assert_eq!(per_node(&p), [("b".into(), 2)].into());
    // The built-in proxy goes anywhere.
    let builtin = envoy.replace("\"envoy\"", "\"plexus\"");
    let p = place(&[jv("mesh", 2, &builtin)], &nodes, &[]);
    assert_eq!(per_node(&p), [("a".into(), 1), ("b".into(), 1)].into());
    let p = place(&[jv("mesh", 2, envoy)], &nodes[..1], &[]);
    assert_eq!(
        p.failures,
        [
            "job \"mesh\" group \"g\": 2 of 2 instance(s) cannot be placed: its Envoy sidecars need an agent serving xDS, and none of the 1 alive agent(s) running jobs does (start them with --grpc-addr IP:PORT)"
        ]
    );
}
