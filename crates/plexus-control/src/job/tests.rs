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
