//! The job API (Plexus's own; Nomad's job API is not emulated):
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/jobs` | every job: name, version, stopped, group counts |
//! | `PUT /v1/jobs` (`?plan=true`) | runs a job (the JSON form of a job file), or plans it |
//! | `GET /v1/job/:name` | the current version |
//! | `DELETE /v1/job/:name` | stops it (a new, stopped version) |
//! | `POST /v1/job/:name/scale` | `{"group", "count"}` |
//! | `GET /v1/job/:name/versions` | every version, newest first |
//! | `POST /v1/job/:name/revert` | `{"version"}`: that version again, as a new one |
//! | `GET /v1/job-allocations/:node` | what an agent runs: its instances and their job versions |
//! | `PUT /v1/job-allocation/:id/status` | an agent reports one of its instances |
//!
//! ACLs: a job runs programs on the agents' nodes, so every write needs `operator:write` and
//! `service:write` on each service the job registers (the version written, and for revert also
//! the version reverted to); reads need `operator:read`. An agent reads its node's instances with
//! `node:read` and reports them with `node:write` on its node.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use plexus_api::acl::Authorizer;
use plexus_api::job::Job;
use plexus_api::job::api::{
    GroupCount, InstanceStatus, JobStatus, JobSummary, RevertRequest, ScaleRequest,
};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};
use tracing::warn;

use super::{JobError, Jobs};
use crate::api::{ErrorChain, path_error};

/// The job routes.
pub fn router(jobs: Arc<Jobs>) -> Router {
    Router::new()
        .route("/v1/jobs", get(list).put(run))
        .route("/v1/job/{name}", get(read).delete(stop))
        .route("/v1/job/{name}/scale", post(scale))
        .route("/v1/job/{name}/versions", get(versions))
        .route("/v1/job/{name}/revert", post(revert))
        .route("/v1/job-allocations/{node}", get(node_allocations))
        .route("/v1/job-allocation/{id}/status", axum::routing::put(report))
        .with_state(jobs)
}

fn error(error: JobError) -> ApiError {
    match error {
        JobError::Invalid(errs) => {
            let message = format!("invalid job: {errs}");
            match errs.0.first() {
                Some(first) => ApiError::invalid_field(first.field.clone(), message),
                None => ApiError::bad_request(message),
            }
        }
        JobError::BadField { field, message } => ApiError::invalid_field(field, message),
        JobError::ServiceClash { .. } | JobError::Contended => {
            ApiError::conflict(error.to_string())
        }
        JobError::NotFound { .. } | JobError::NoAllocation { .. } => {
            ApiError::not_found(error.to_string())
        }
        JobError::Unplaceable(_) => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "unplaceable",
            error.to_string(),
        ),
        other => {
            warn!(error = %ErrorChain(&other), "job operation failed");
            ApiError::internal("the job store is unavailable")
        }
    }
}

fn require_write(authz: &Authorizer, job: &Job) -> Result<(), ApiError> {
    authz.require_operator_write()?;
    for service in job.service_names() {
        authz.require_service_write(service)?;
    }
    Ok(())
}

async fn block(jobs: &Jobs, query: &BlockingQuery) {
    if query.index.is_some_and(|index| index > 0) {
        query.block(jobs.revision_watch()).await;
    }
}

async fn list(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    authz.require_operator_read()?;
    block(&jobs, &query).await;
    let index = jobs.index().await.map_err(error)?;
    let summaries: Vec<JobSummary> = jobs
        .list()
        .await
        .map_err(error)?
        .into_iter()
        .map(|v| JobSummary {
            name: v.job.name.clone(),
            version: v.version,
            stopped: v.stopped,
            groups: v
                .job
                .group
                .iter()
                .map(|g| GroupCount {
                    name: g.name.clone(),
                    count: g.count.unwrap_or(1),
                })
                .collect(),
        })
        .collect();
    Ok(indexed_json(index, &summaries))
}

async fn run(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    params: QueryParams,
    body: Result<JsonBody<serde_json::Value>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(value) = body?;
    let job: Job = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = format!("invalid job: {}", e.inner());
        if field == "." {
            ApiError::bad_request(message)
        } else {
            ApiError::invalid_field(field, message)
        }
    })?;
    require_write(&authz, &job)?;
    let plan = matches!(params.get("plan"), Some("" | "true" | "1"));
    if plan {
        let plan = jobs.plan(job).await.map_err(error)?;
        let index = jobs.index().await.map_err(error)?;
        return Ok(indexed_json(index, &plan));
    }
    let written = jobs.run(job).await.map_err(error)?;
    let index = jobs.index().await.map_err(error)?;
    Ok(indexed_json(index, &written))
}

async fn read(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    authz.require_operator_read()?;
    block(&jobs, &query).await;
    let index = jobs.index().await.map_err(error)?;
    let status: JobStatus = jobs.status(&name).await.map_err(error)?;
    Ok(indexed_json(index, &status))
}

async fn stop(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let current = jobs.get(&name).await.map_err(error)?;
    require_write(&authz, &current.job)?;
    let written = jobs.stop(&name).await.map_err(error)?;
    let index = jobs.index().await.map_err(error)?;
    Ok(indexed_json(index, &written))
}

async fn scale(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<ScaleRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let JsonBody(request) = body?;
    let current = jobs.get(&name).await.map_err(error)?;
    require_write(&authz, &current.job)?;
    let written = jobs
        .scale(&name, &request.group, request.count)
        .await
        .map_err(error)?;
    let index = jobs.index().await.map_err(error)?;
    Ok(indexed_json(index, &written))
}

async fn versions(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    authz.require_operator_read()?;
    let versions = jobs.history(&name).await.map_err(error)?;
    let index = jobs.index().await.map_err(error)?;
    Ok(indexed_json(index, &versions))
}

async fn revert(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<RevertRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let JsonBody(request) = body?;
    let history = jobs.history(&name).await.map_err(error)?;
    for v in history
        .iter()
        .filter(|v| v.version == request.version || v.version == history[0].version)
    {
        require_write(&authz, &v.job)?;
    }
    let written = jobs.revert(&name, request.version).await.map_err(error)?;
    let index = jobs.index().await.map_err(error)?;
    Ok(indexed_json(index, &written))
}

async fn node_allocations(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(node) = path.map_err(path_error)?;
    authz.require_node_read(&node)?;
    // Blocks until the job index moves past the query's (every job write and placement moves
    // it), or the wait ends.
    if let Some(wanted) = query.index.filter(|i| *i > 0) {
        let mut revisions = jobs.revision_watch();
        let deadline = tokio::time::Instant::now() + query.wait;
        while jobs.index().await.map_err(error)? <= wanted {
            if tokio::time::timeout_at(deadline, revisions.changed())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let index = jobs.index().await.map_err(error)?;
    let allocations = jobs.node_allocations(&node).await.map_err(error)?;
    Ok(indexed_json(index, &allocations))
}

async fn report(
    State(jobs): State<Arc<Jobs>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<InstanceStatus>, ApiError>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    let JsonBody(status) = body?;
    if status.id != id {
        return Err(ApiError::invalid_field(
            "id",
            format!(
                "the body is about instance {:?}, the path about {id:?}",
                status.id
            ),
        ));
    }
    authz.require_node_write(&status.node)?;
    jobs.put_status(&status).await.map_err(error)?;
    Ok(indexed_json(jobs.index().await.map_err(error)?, &true))
}
