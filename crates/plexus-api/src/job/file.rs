//! Job files: `.hcl` or `.json` → a normalized [`Job`], every problem as a
//! [`DefinitionError`] (`calc.hcl:7: job.group[1].cuont: unknown field ...`).
//!
//! HCL goes through the definition files' strict converter with the job shape: `job`, `group`,
//! `task` and `port` blocks take one label (their name), `service`, `check`, `constraint` and
//! `upstreams` blocks may repeat. JSON is the converted form itself:
//! `{"job": {"name": "calc", "group": [{"name": "add", "count": 2, "task": {...}}]}}`.

use std::path::Path;

use serde::Deserialize;

use super::Job;
use crate::definition::hcl_body::Shape;
use crate::definition::locate::{self, Seg};
use crate::definition::{self, DefinitionError};
use crate::one_or_many::OneOrMany;

/// Blocks of a job file.
const JOB_SHAPE: Shape = Shape {
    lists: &["service", "check", "constraint", "upstreams"],
    labelled: &["job", "group", "task", "port"],
};

/// The top of a job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    job: OneOrMany<Job>,
}

/// Reads, parses and validates a job file.
pub fn load_job(path: &Path) -> Result<Job, Vec<DefinitionError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![DefinitionError::new(path, format!("cannot read file: {e}"))])?;
    parse_job(path, &text)
}

/// Parses and validates a job file's text; the format follows `file`'s extension.
pub fn parse_job(file: &Path, text: &str) -> Result<Job, Vec<DefinitionError>> {
    let value = match file.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("hcl") || ext.eq_ignore_ascii_case("nomad") => {
            definition::hcl_value_shaped(file, text, &JOB_SHAPE).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|mut e| {
                        e.field = e.field.map(|f| match f.strip_prefix("job[0]") {
                            Some(rest) => format!("job{rest}"),
                            None => f,
                        });
                        e
                    })
                    .collect::<Vec<_>>()
            })?
        }
        Some(ext) if ext.eq_ignore_ascii_case("json") => serde_json::from_str(text)
            .map_err(|e| vec![definition::json_error(file, text, &e, &[])])?,
        _ => {
            return Err(vec![DefinitionError::new(
                file,
                "job files must end in .hcl, .nomad or .json",
            )]);
        }
    };
    let raw: RawFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = job_path(definition::field_path(e.path()));
        vec![DefinitionError {
            file: file.to_owned(),
            line: locate::line_of(text, &path),
            field: (!path.is_empty()).then(|| locate::render_path(&path)),
            message: definition::tidy(&e.inner().to_string()),
        }]
    })?;
    let mut jobs = raw.job.0;
    if jobs.len() != 1 {
        return Err(vec![DefinitionError {
            line: locate::line_of(text, &[Seg::Key("job".to_owned()), Seg::Index(1)]),
            field: Some("job".to_owned()),
            ..DefinitionError::new(
                file,
                format!("a job file holds exactly one job (found {})", jobs.len()),
            )
        }]);
    }
    let job = jobs.remove(0);
    job.normalized().map_err(|errors| {
        errors
            .0
            .into_iter()
            .map(|e| {
                let path = locate::parse_path(&e.field);
                DefinitionError {
                    file: file.to_owned(),
                    line: locate::line_of(text, &path),
                    field: Some(e.field),
                    message: e.message,
                }
            })
            .collect()
    })
}

/// A decoder path with the one job's `[0]` left out (`job.group[1].count`).
fn job_path(mut path: Vec<Seg>) -> Vec<Seg> {
    if matches!(path.first(), Some(Seg::Key(k)) if k == "job")
        && matches!(path.get(1), Some(Seg::Index(0)))
    {
        path.remove(1);
    }
    path
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
