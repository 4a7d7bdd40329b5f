//! Job rules and defaults: [`Job::normalized`] checks every field and fills every default, so
//! what is stored and run has no `None` left where a default exists.
//!
//! Defaults (Nomad's, for a `service` job): `count` 1; `update` max_parallel 1,
//! min_healthy_time 10s, healthy_deadline 5m, auto_revert false; `restart` attempts 2, interval
//! 30m, delay 15s, mode "fail"; `kill_timeout` 5s; check interval 10s, timeout 2s.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Group, Job, JobCheck, Restart, Update};
use crate::duration::GoDuration;
use crate::validate::{FieldError, ValidationErrors};

/// Most instances one group may ask for.
pub const MAX_COUNT: u32 = 1000;

/// Collected problems, each with its field path from the top of the file (`job.group[1].count`).
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

const fn secs(s: u64) -> GoDuration {
    GoDuration(Duration::from_secs(s))
}

/// Names of jobs, groups and tasks: letters, digits, `-` and `_`, 1–63 characters.
fn check_name(errs: &mut Errors, field: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        errs.push(
            field,
            format!("{what} {name:?} must be 1–63 letters, digits, '-' or '_'"),
        );
    }
}

/// Port labels and env keys: letters, digits and `_` (they become environment variable names).
fn check_env_name(errs: &mut Errors, field: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        errs.push(
            field,
            format!(
                "{what} {name:?} must be letters, digits and '_' (an environment variable name)"
            ),
        );
    }
}

/// The environment-variable form of a name: upper case, `-` and `.` as `_`.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Job {
    /// Checks every field and fills every default. All problems are returned at once.
    pub fn normalized(mut self) -> Result<Job, ValidationErrors> {
        let mut errs = Errors::default();
        check_name(&mut errs, "job", "job name", &self.name);
        match self.kind.as_deref() {
            None | Some("service") => self.kind = Some("service".to_owned()),
            Some(other) => errs.push(
                "job.type",
                format!("job type {other:?} is not supported (expected \"service\")"),
            ),
        }
        for (i, c) in self.constraint.0.iter_mut().enumerate() {
            check_constraint(&mut errs, &format!("job.constraint[{i}]"), c);
        }
        if self.group.is_empty() {
            errs.push("job.group", "a job needs at least one group");
        }
        let job_update = self.update.take();
        let mut groups = BTreeSet::new();
        let mut services = BTreeSet::new();
        for (i, group) in self.group.0.iter_mut().enumerate() {
            let at = format!("job.group[{i}]");
            if !groups.insert(group.name.clone()) {
                errs.push(
                    format!("{at}.name"),
                    format!("group {:?} is defined twice", group.name),
                );
            }
            normalize_group(&mut errs, &at, group, job_update.as_ref());
            for (s, service) in group.service.iter().enumerate() {
                if !services.insert(service.name.clone()) {
                    errs.push(
                        format!("{at}.service[{s}].name"),
                        format!(
                            "service {:?} is registered by two groups of this job",
                            service.name
                        ),
                    );
                }
            }
        }
        self.update = job_update.map(|u| fill_update(&u, None));
        if errs.0.is_empty() {
            Ok(self)
        } else {
            Err(ValidationErrors(errs.0))
        }
    }
}

/// A constraint attribute without Nomad's `${...}` around it: `meta.zone`, `node.name`.
pub fn constraint_attribute(attribute: &str) -> &str {
    attribute
        .strip_prefix("${")
        .and_then(|a| a.strip_suffix('}'))
        .unwrap_or(attribute)
}

fn check_constraint(errs: &mut Errors, at: &str, c: &mut super::Constraint) {
    let attribute = constraint_attribute(&c.attribute);
    let attribute_ok = attribute == "node.name"
        || attribute
            .strip_prefix("meta.")
            .is_some_and(|key| !key.is_empty());
    if !attribute_ok {
        errs.push(
            format!("{at}.attribute"),
            format!(
                "attribute {:?} is not supported (expected \"meta.KEY\" or \"node.name\"; in HCL \"$${{meta.KEY}}\" works too)",
                c.attribute
            ),
        );
    }
    match c.operator.as_deref() {
        None | Some("=") | Some("==") => c.operator = Some("=".to_owned()),
        Some("!=") => {}
        Some(other) => errs.push(
            format!("{at}.operator"),
            format!("operator {other:?} is not supported (expected \"=\" or \"!=\")"),
        ),
    }
}

fn fill_update(u: &Update, base: Option<&Update>) -> Update {
    let base = base.cloned().unwrap_or_default();
    Update {
        max_parallel: u.max_parallel.or(base.max_parallel).or(Some(1)),
        min_healthy_time: u
            .min_healthy_time
            .or(base.min_healthy_time)
            .or(Some(secs(10))),
        healthy_deadline: u
            .healthy_deadline
            .or(base.healthy_deadline)
            .or(Some(secs(300))),
        auto_revert: u.auto_revert.or(base.auto_revert).or(Some(false)),
    }
}

fn normalize_group(errs: &mut Errors, at: &str, group: &mut Group, job_update: Option<&Update>) {
    check_name(errs, &format!("{at}.name"), "group name", &group.name);
    let count = group.count.unwrap_or(1);
    if count > MAX_COUNT {
        errs.push(
            format!("{at}.count"),
            format!("count {count} is more than {MAX_COUNT}"),
        );
    }
    group.count = Some(count);
    for (i, c) in group.constraint.0.iter_mut().enumerate() {
        check_constraint(errs, &format!("{at}.constraint[{i}]"), c);
    }

    let update = fill_update(&group.update.take().unwrap_or_default(), job_update);
    if update.max_parallel == Some(0) {
        errs.push(
            format!("{at}.update.max_parallel"),
            "max_parallel must be at least 1",
        );
    }
    if update.healthy_deadline <= update.min_healthy_time {
        errs.push(
            format!("{at}.update.healthy_deadline"),
            "healthy_deadline must be longer than min_healthy_time",
        );
    }
    group.update = Some(update);

    let restart = group.restart.take().unwrap_or_default();
    let restart = Restart {
        attempts: restart.attempts.or(Some(2)),
        interval: restart.interval.or(Some(secs(1800))),
        delay: restart.delay.or(Some(secs(15))),
        mode: restart.mode.or(Some("fail".to_owned())),
    };
    if let Some(mode) = restart.mode.as_deref()
        && mode != "fail"
        && mode != "delay"
    {
        errs.push(
            format!("{at}.restart.mode"),
            format!("restart mode {mode:?} is not supported (expected \"fail\" or \"delay\")"),
        );
    }
    group.restart = Some(restart);

    let mut labels = BTreeSet::new();
    if let Some(network) = &group.network {
        for (i, port) in network.port.iter().enumerate() {
            let field = format!("{at}.network.port[{i}]");
            check_env_name(errs, &field, "port label", &port.name);
            if !labels.insert(port.name.clone()) {
                errs.push(
                    field.clone(),
                    format!("port {:?} is defined twice", port.name),
                );
            }
            if port.static_port == Some(0) {
                errs.push(
                    format!("{field}.static"),
                    "a static port must be 1–65535 (leave it out for a dynamic port)",
                );
            }
        }
    }

    for (s, service) in group.service.0.iter_mut().enumerate() {
        let sat = format!("{at}.service[{s}]");
        check_name(errs, &format!("{sat}.name"), "service name", &service.name);
        match service.port.as_deref() {
            Some(label) if !labels.contains(label) => errs.push(
                format!("{sat}.port"),
                format!(
                    "port {label:?} is not a port of this group's network (ports: {})",
                    labels.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(_) => {}
            None => {
                if !service.check.is_empty() || service.connect.is_some() {
                    errs.push(
                        format!("{sat}.port"),
                        "a service with checks or a sidecar needs a port label",
                    );
                }
            }
        }
        if let Some(connect) = &service.connect
            && let Some(task) = &connect.sidecar_task
        {
            if !matches!(task.driver.as_str(), "plexus" | "envoy") {
                errs.push(
                    format!("{sat}.connect.sidecar_task.driver"),
                    format!(
                        "sidecar driver {:?} is not supported (expected \"plexus\", the built-in proxy, or \"envoy\")",
                        task.driver
                    ),
                );
            }
            if connect.sidecar_service.is_none() {
                errs.push(
                    format!("{sat}.connect.sidecar_task"),
                    "sidecar_task configures the sidecar of sidecar_service: add `sidecar_service {}`",
                );
            }
        }
        for (c, check) in service.check.0.iter_mut().enumerate() {
            normalize_check(errs, &format!("{sat}.check[{c}]"), check);
        }
        let upstreams = service
            .connect
            .iter()
            .flat_map(|c| c.sidecar_service.iter())
            .flat_map(|s| s.proxy.iter())
            .flat_map(|p| p.upstreams.iter());
        let mut names = BTreeSet::new();
        for (u, upstream) in upstreams.enumerate() {
            let uat = format!("{sat}.connect.sidecar_service.proxy.upstreams[{u}]");
            check_name(
                errs,
                &format!("{uat}.destination_name"),
                "destination_name",
                &upstream.destination_name,
            );
            if !names.insert(env_name(&upstream.destination_name)) {
                errs.push(
                    format!("{uat}.destination_name"),
                    format!("upstream {:?} is listed twice", upstream.destination_name),
                );
            }
        }
    }

    match group.task.len() {
        0 => errs.push(format!("{at}.task"), "a group needs one task"),
        1 => {}
        _ => errs.push(
            format!("{at}.task[1]"),
            "only one task per group is supported",
        ),
    }
    for (t, task) in group.task.0.iter_mut().enumerate() {
        let tat = format!("{at}.task[{t}]");
        check_name(errs, &format!("{tat}.name"), "task name", &task.name);
        match task.driver.as_str() {
            "exec" | "raw_exec" => task.driver = "exec".to_owned(),
            other => errs.push(
                format!("{tat}.driver"),
                format!("driver {other:?} is not supported (expected \"exec\")"),
            ),
        }
        if task.config.command.trim().is_empty() {
            errs.push(format!("{tat}.config.command"), "command must not be empty");
        }
        for key in task.env.keys() {
            check_env_name(errs, &format!("{tat}.env"), "env key", key);
        }
        task.kill_timeout = task.kill_timeout.or(Some(secs(5)));
    }
}

fn normalize_check(errs: &mut Errors, at: &str, check: &mut JobCheck) {
    match check.kind.as_str() {
        "http" => {
            if !check.path.as_deref().is_some_and(|p| p.starts_with('/')) {
                errs.push(
                    format!("{at}.path"),
                    "an http check needs a path starting with '/'",
                );
            }
        }
        "tcp" => {
            if check.path.is_some() {
                errs.push(format!("{at}.path"), "a tcp check takes no path");
            }
        }
        other => errs.push(
            format!("{at}.type"),
            format!("check type {other:?} is not supported (expected \"http\" or \"tcp\")"),
        ),
    }
    check.interval = check.interval.or(Some(secs(10)));
    check.timeout = check.timeout.or(Some(secs(2)));
    if check.interval.is_some_and(|d| d.0.is_zero()) {
        errs.push(format!("{at}.interval"), "interval must be more than 0");
    }
}
