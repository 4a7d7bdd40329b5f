//! Job storage over a real embedded store: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::store::EmbeddedStore;

fn job(name: &str, service: &str, count: u32) -> Job {
    let text = format!(
        r#"job "{name}" {{
  group "g" {{
    count = {count}
    network {{
      port "http" {{}}
    }}
    service {{
      name = "{service}"
      port = "http"
    }}
    task "t" {{
      driver = "exec"
      config {{
        command = "sleep"
        args    = ["60"]
      }}
    }}
  }}
}}
"#
    );
    plexus_api::job::file::parse_job(Path::new("job.hcl"), &text).unwrap()
}

#[tokio::test]
async fn versions_scale_stop_revert_and_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let jobs = Jobs::new(store);

    let w = jobs.run(job("calc", "add", 2)).await.unwrap();
    assert_eq!((w.version, w.changed), (1, true));
    // The same job again stores nothing.
    let w = jobs.run(job("calc", "add", 2)).await.unwrap();
    assert_eq!((w.version, w.changed), (1, false));
    let w = jobs.scale("calc", "g", 3).await.unwrap();
    assert_eq!(w.version, 2);
    assert_eq!(
        jobs.get("calc").await.unwrap().job.group.0[0].count,
        Some(3)
    );
    let err = jobs.scale("calc", "nope", 3).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("has no group \"nope\" (groups: g)"),
        "{err}"
    );

    // Another job may not register the same service while this one runs.
    let err = jobs.run(job("other", "add", 1)).await.unwrap_err();
    assert!(matches!(err, JobError::ServiceClash { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("already registered by job \"calc\""),
        "{err}"
    );
    assert!(jobs.plan(job("other", "add", 1)).await.is_err());

    let w = jobs.stop("calc").await.unwrap();
    assert_eq!(w.version, 3);
    assert!(jobs.get("calc").await.unwrap().stopped);
    // Stopped: the name is free.
    jobs.run(job("other", "add", 1)).await.unwrap();
    jobs.stop("other").await.unwrap();

    let w = jobs.revert("calc", 1).await.unwrap();
    assert_eq!(w.version, 4);
    let current = jobs.get("calc").await.unwrap();
    assert!(!current.stopped);
    assert_eq!(current.job.group.0[0].count, Some(2));
    assert_eq!(current.cause, "revert to 1");
    let history = jobs.history("calc").await.unwrap();
    let versions: Vec<(u64, &str)> = history
        .iter()
        .map(|v| (v.version, v.cause.as_str()))
        .collect();
    assert_eq!(
        versions,
        [
            (4, "revert to 1"),
            (3, "stop"),
            (2, "scale g to 3"),
            (1, "run")
        ]
    );
    assert!(matches!(
        jobs.revert("calc", 9).await.unwrap_err(),
        JobError::BadField {
            field: "version",
            ..
        }
    ));
    assert!(matches!(
        jobs.revert("nope", 1).await.unwrap_err(),
        JobError::NotFound { .. }
    ));

    let plan = jobs.plan(job("calc", "add", 5)).await.unwrap();
    assert_eq!(plan.current_version, Some(4));
    assert_eq!((plan.groups[0].before, plan.groups[0].after), (2, 5));
}

/// Two servers' reconcilers over one store: a rollout that misses its deadline is reverted
/// once, not once per replica, and the revert's rollout carries on from either.
#[tokio::test]
async fn replicas_revert_a_failed_rollout_once() {
    use plexus_api::Catalog;
    use plexus_api::job::api::{DeploymentState, InstanceStatus};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let catalog = Arc::new(crate::catalog::StoreCatalog::new(Arc::clone(&store), "dc1"));
    let node: plexus_api::Node = serde_json::from_value(serde_json::json!({
        "Node": "n1", "Address": "127.0.0.1", "Meta": {"plexus-job-slots": "4"},
    }))
    .unwrap();
    catalog
        .register(plexus_api::Registration {
            node,
            services: Vec::new(),
            checks: Vec::new(),
        })
        .await
        .unwrap();
    let a = Jobs::new(Arc::clone(&store)).with_catalog(Arc::clone(&catalog));
    let b = Jobs::new(Arc::clone(&store)).with_catalog(Arc::clone(&catalog));
    let versioned = |args: &str| {
        let mut j = job("calc", "add", 2);
        j.group.0[0].task.0[0].config.args = vec![args.to_owned()];
        j.group.0[0].update = Some(plexus_api::job::Update {
            max_parallel: Some(1),
            min_healthy_time: Some(plexus_api::duration::GoDuration(
                std::time::Duration::from_millis(1),
            )),
            healthy_deadline: Some(plexus_api::duration::GoDuration(
                std::time::Duration::from_millis(2),
            )),
            auto_revert: Some(true),
        });
        j
    };
    let report = |id: &str, version: u64, healthy: bool| InstanceStatus {
        id: id.to_owned(),
        node: "n1".into(),
        version,
        state: "running".into(),
        pid: Some(1),
        ports: Default::default(),
        restarts: 0,
        message: String::new(),
        agent: String::new(),
        healthy,
    };

    a.run(versioned("60")).await.unwrap();
    for id in ["calc-g-0", "calc-g-1"] {
        a.put_status(&report(id, 1, true)).await.unwrap();
    }
    a.reconcile().await.unwrap();
    let d = a.status("calc").await.unwrap().deployment.unwrap();
    assert_eq!((d.version, d.state), (1, DeploymentState::Successful));

    b.run(versioned("61")).await.unwrap();
    let s = b.status("calc").await.unwrap();
    let moved: Vec<u64> = s.instances.iter().map(|i| i.allocation.version).collect();
    assert_eq!(moved, [2, 1], "one at a time");
    a.put_status(&report("calc-g-0", 2, false)).await.unwrap();
    // The 2 ms deadline passes; both replicas see it at once.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(5) {
        tokio::task::yield_now().await;
    }
    let (ra, rb) = tokio::join!(a.reconcile(), b.reconcile());
    ra.unwrap();
    rb.unwrap();
    let (ra, rb) = tokio::join!(a.reconcile(), b.reconcile());
    ra.unwrap();
    rb.unwrap();
    let history = a.history("calc").await.unwrap();
    let causes: Vec<&str> = history.iter().map(|v| v.cause.as_str()).collect();
    assert_eq!(causes.len(), 3, "{causes:?}");
    assert!(
        causes[0].starts_with("auto-revert to 1: group \"g\""),
        "{causes:?}"
    );
    assert_eq!(history[0].job, history[2].job);
    let s = a.status("calc").await.unwrap();
    let d = s.deployment.unwrap();
    assert_eq!(d.version, 3);
    assert_eq!(d.previous.unwrap().state, DeploymentState::Reverted);
    // The healthy old instance moved to version 3 in place.
    let versions: Vec<u64> = s.instances.iter().map(|i| i.allocation.version).collect();
    assert_eq!(
        versions,
        [3, 3],
        "the broken one replaced first, the old one moved"
    );
}
