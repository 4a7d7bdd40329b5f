#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

/// Version `version` of job "j": group "g" with `count` instances, max_parallel 1,
/// min_healthy_time 1s, healthy_deadline 6s.
fn jv(version: u64, count: u32, auto_revert: bool, cause: &str) -> JobVersion {
    let text = format!(
        r#"job "j" {{
  group "g" {{
    count = {count}
    update {{
      max_parallel     = 1
      min_healthy_time = "1s"
      healthy_deadline = "6s"
      auto_revert      = {auto_revert}
    }}
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
        version,
        submitted: 0,
        stopped: false,
        job: plexus_api::job::file::parse_job(Path::new("j.hcl"), &text)
            .unwrap()
            .normalized()
            .unwrap(),
        cause: cause.into(),
    }
}

fn alloc(index: u32, version: u64) -> Allocation {
    Allocation {
        id: format!("j-g-{index}"),
        job: "j".into(),
        group: "g".into(),
        index,
        version,
        node: "n".into(),
    }
}

fn status(a: &Allocation, state: &str, healthy: bool) -> (String, InstanceStatus) {
    (
        a.id.clone(),
        InstanceStatus {
            id: a.id.clone(),
            node: a.node.clone(),
            version: a.version,
            state: state.into(),
            pid: Some(1),
            ports: BTreeMap::new(),
            restarts: 0,
            message: String::new(),
            agent: String::new(),
            healthy,
        },
    )
}

fn all_healthy(allocs: &[Allocation]) -> BTreeMap<String, InstanceStatus> {
    allocs.iter().map(|a| status(a, "running", true)).collect()
}

fn versions(allocs: &[Allocation]) -> Vec<u64> {
    allocs.iter().map(|a| a.version).collect()
}

/// v1 rolled out and successful: the `previous` of the next version.
/// The step after `d`, at `now_ms`, with no instance already running the new spec.
fn next(
    job: &JobVersion,
    d: &Decision,
    allocs: &mut [Allocation],
    statuses: &BTreeMap<String, InstanceStatus>,
    now_ms: u64,
) -> Decision {
    step(
        job,
        Some(&d.deployment),
        allocs,
        statuses,
        |_, _| false,
        now_ms,
    )
}

fn stable_v1() -> Deployment {
    let mut allocs = vec![alloc(0, 1), alloc(1, 1)];
    let s = all_healthy(&allocs);
    let d = step(
        &jv(1, 2, true, "run"),
        None,
        &mut allocs,
        &s,
        |_, _| false,
        0,
    );
    assert_eq!(d.deployment.state, DeploymentState::Successful);
    d.deployment
}

#[test]
fn a_new_job_succeeds_once_every_instance_is_healthy() {
    let job = jv(1, 2, false, "run");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1)];
    let d = step(
        &job,
        None,
        &mut allocs,
        &BTreeMap::new(),
        |_, _| false,
        1000,
    );
    assert_eq!(d.deployment.state, DeploymentState::Running);
    assert_eq!(d.deployment.stable, None);
    assert_eq!(d.wake_at_ms, Some(7000), "the first batch's deadline");
    assert_eq!(d.deployment.groups[0].healthy, 0);
    let s = all_healthy(&allocs);
    let d = next(&job, &d, &mut allocs, &s, 2000);
    assert_eq!(d.deployment.state, DeploymentState::Successful);
    assert_eq!(d.deployment.groups[0].healthy, 2);
    assert_eq!(d.wake_at_ms, None);
}

#[test]
fn an_update_replaces_one_instance_at_a_time_and_waits_for_it_to_be_healthy() {
    let v1 = stable_v1();
    let job = jv(2, 2, true, "run");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1)];
    let mut s = all_healthy(&allocs);
    let d = step(&job, Some(&v1), &mut allocs, &s, |_, _| false, 10_000);
    assert_eq!(versions(&allocs), [2, 1], "one instance at a time");
    assert_eq!(d.deployment.stable, Some(1));
    assert_eq!(d.deployment.groups[0].batch, 1);
    assert_eq!(d.wake_at_ms, Some(16_000));

    // Not healthy yet: the next batch waits.
    s.extend([status(&allocs[0], "running", false)]);
    let d = next(&job, &d, &mut allocs, &s, 12_000);
    assert_eq!(versions(&allocs), [2, 1]);
    assert_eq!(d.deployment.state, DeploymentState::Running);

    // Healthy: the second goes.
    s.extend([status(&allocs[0], "running", true)]);
    let d = next(&job, &d, &mut allocs, &s, 13_000);
    assert_eq!(versions(&allocs), [2, 2]);
    assert_eq!(d.deployment.groups[0].batch, 2);
    assert_eq!(d.deployment.groups[0].healthy, 1);
    assert_eq!(d.wake_at_ms, Some(19_000));

    s.extend([status(&allocs[1], "running", true)]);
    let d = next(&job, &d, &mut allocs, &s, 14_000);
    assert_eq!(d.deployment.state, DeploymentState::Successful);
    assert_eq!(d.deployment.groups[0].healthy, 2);
}

#[test]
fn a_missed_deadline_reverts_by_itself_and_the_old_instances_stay() {
    let v1 = stable_v1();
    let job = jv(2, 2, true, "run");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1)];
    let mut s = all_healthy(&allocs);
    let d = step(&job, Some(&v1), &mut allocs, &s, |_, _| false, 10_000);
    s.extend([status(&allocs[0], "running", false)]);
    let before = d.deployment.clone();
    let d = step(&job, Some(&before), &mut allocs, &s, |_, _| false, 15_999);
    assert_eq!(d.deployment.state, DeploymentState::Running, "1 ms early");
    let d = step(&job, Some(&before), &mut allocs, &s, |_, _| false, 16_000);
    assert_eq!(d.deployment.state, DeploymentState::Reverted);
    assert_eq!(d.revert_to, Some(1));
    assert_eq!(d.deployment.reverted_to, Some(1));
    assert_eq!(
        d.deployment.reason,
        "group \"g\": 1 instance(s) of version 2 not healthy within healthy_deadline 6s: j-g-0: checks not passing"
    );
    assert_eq!(versions(&allocs), [2, 1], "the old instance keeps serving");

    // The revert (v3, v1's spec): the old instance moves without a restart, the broken one is
    // replaced.
    let job = jv(3, 2, true, "auto-revert to 1: ...");
    let same = |_: &str, v: u64| v == 1;
    let d = step(&job, Some(&d.deployment), &mut allocs, &s, same, 16_500);
    assert_eq!(versions(&allocs), [3, 3]);
    assert_eq!(d.deployment.stable, Some(1));
    assert_eq!(
        d.deployment.previous.as_ref().unwrap().state,
        DeploymentState::Reverted
    );
}

#[test]
fn without_auto_revert_a_missed_deadline_stops_the_rollout() {
    let v1 = stable_v1();
    let job = jv(2, 3, false, "run");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1), alloc(2, 1)];
    let s = all_healthy(&allocs);
    let d = step(&job, Some(&v1), &mut allocs, &s, |_, _| false, 0);
    let d = next(&job, &d, &mut allocs, &s, 6_000);
    assert_eq!(d.deployment.state, DeploymentState::Failed);
    assert_eq!(d.revert_to, None);
    // Stopped there, for good.
    let d = next(&job, &d, &mut allocs, &s, 60_000);
    assert_eq!(d.deployment.state, DeploymentState::Failed);
    assert_eq!(versions(&allocs), [2, 1, 1]);
}

#[test]
fn a_failed_instance_fails_the_rollout_at_once_and_a_revert_is_not_reverted() {
    let v1 = stable_v1();
    let job = jv(2, 2, true, "auto-revert to 1: x");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1)];
    let mut s = all_healthy(&allocs);
    let d = step(&job, Some(&v1), &mut allocs, &s, |_, _| false, 0);
    let mut failed = status(&allocs[0], "failed", false);
    failed.1.message = "cannot start \"x\": No such file".into();
    s.extend([failed]);
    let d = next(&job, &d, &mut allocs, &s, 100);
    assert_eq!(d.deployment.state, DeploymentState::Failed);
    assert_eq!(d.revert_to, None);
    assert!(
        d.deployment
            .reason
            .starts_with("group \"g\": j-g-0 failed: cannot start \"x\": No such file"),
        "{}",
        d.deployment.reason
    );
    assert!(
        d.deployment
            .reason
            .ends_with("this version is already a revert)")
    );
}

#[test]
fn a_scale_moves_every_instance_without_a_batch_and_new_ones_start_at_once() {
    let v1 = stable_v1();
    let job = jv(2, 3, false, "scale g to 3");
    let mut allocs = vec![alloc(0, 1), alloc(1, 1), alloc(2, 2)];
    let mut s = all_healthy(&allocs[..2]);
    let d = step(&job, Some(&v1), &mut allocs, &s, |_, v| v == 1, 0);
    assert_eq!(versions(&allocs), [2, 2, 2]);
    assert_eq!(d.deployment.groups[0].batch, 0);
    // The moved ones report the new version as healthy; the new one becomes healthy.
    s = all_healthy(&allocs);
    let d = step(
        &job,
        Some(&d.deployment),
        &mut allocs,
        &s,
        |_, v| v == 1,
        500,
    );
    assert_eq!(d.deployment.state, DeploymentState::Successful);
}
