//! Instance output files: `<dir>/<task>.stdout.log` and `.stderr.log`, rotated when a process
//! starts and the file has grown past [`MAX_LOG_BYTES`] (the old one becomes `.log.1`, replacing
//! the previous `.1`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::ApiError;

/// A log file larger than this is rotated at the next start.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// The two files a process writes to (appending), after rotating them if large.
pub(super) fn open(dir: &Path, task: &str) -> std::io::Result<(File, File)> {
    std::fs::create_dir_all(dir)?;
    let out = open_one(&dir.join(format!("{task}.stdout.log")))?;
    let err = open_one(&dir.join(format!("{task}.stderr.log")))?;
    Ok((out, err))
}

fn open_one(path: &PathBuf) -> std::io::Result<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let mut old = path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    File::options().create(true).append(true).open(path)
}

/// Most bytes one read returns.
pub const MAX_READ: u64 = 64 * 1024;

/// `?task=app&stream=stdout|stderr&offset=N`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct LogQuery {
    task: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    offset: u64,
}

/// `GET /v1/agent/job/logs/{alloc}`: up to [`MAX_READ`] bytes of an instance's output from
/// `offset`; `X-Plexus-Offset` is where the next read starts. Needs `operator:read` (job reads
/// do). Names are checked, so a request never leaves the job directory.
pub(super) async fn read(
    State(dir): State<PathBuf>,
    authz: Authz,
    UrlPath(alloc): UrlPath<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authz.require_operator_read()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !s.starts_with('.')
    };
    if !plain(&alloc) {
        return Err(ApiError::invalid_field(
            "alloc",
            format!("invalid instance id {alloc:?}"),
        ));
    }
    if !plain(&query.task) {
        return Err(ApiError::invalid_field(
            "task",
            format!("invalid task {:?}", query.task),
        ));
    }
    let stream = query.stream.as_deref().unwrap_or("stdout");
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::invalid_field(
            "stream",
            format!("stream {stream:?}: expected stdout or stderr"),
        ));
    }
    let path = dir
        .join(&alloc)
        .join(format!("{}.{stream}.log", query.task));
    let mut file = File::open(&path).map_err(|_| {
        ApiError::not_found(format!(
            "no {stream} output of task {:?} of instance {alloc:?} on this node",
            query.task
        ))
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A file rotated since the last read starts again at 0.
    let from = if query.offset > len { 0 } else { query.offset };
    let mut bytes = Vec::new();
    let read = file
        .seek(SeekFrom::Start(from))
        .and_then(|_| file.take(MAX_READ).read_to_end(&mut bytes));
    if let Err(error) = read {
        tracing::warn!(%error, path = %path.display(), "reading instance output failed");
        return Err(ApiError::internal("reading the instance's output failed"));
    }
    let next = from + bytes.len() as u64;
    Ok(([("x-plexus-offset", next.to_string())], bytes).into_response())
}

/// The route, behind the agent's ACL edge.
pub fn router(dir: PathBuf, acl: plexus_runtime::acl::Resolver) -> axum::Router {
    plexus_runtime::acl::layer(
        axum::Router::new()
            .route("/v1/agent/job/logs/{alloc}", axum::routing::get(read))
            .with_state(dir),
        acl,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_rotated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = open(dir.path(), "app").unwrap();
        out.set_len(MAX_LOG_BYTES + 1).unwrap();
        drop(out);
        let (out, _) = open(dir.path(), "app").unwrap();
        assert_eq!(out.metadata().unwrap().len(), 0);
        let rotated = dir.path().join("app.stdout.log.1");
        assert_eq!(std::fs::metadata(rotated).unwrap().len(), MAX_LOG_BYTES + 1);
    }
}
