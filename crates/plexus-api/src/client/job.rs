//! Client calls for jobs (`/v1/jobs`, `/v1/job/:name/...`).

use reqwest::Method;

use super::{Client, ClientError, QueryOptions, encode};
use crate::catalog::Indexed;
use crate::job::Job;
use crate::job::api::{
    JobPlan, JobStatus, JobSummary, JobVersion, JobWritten, RevertRequest, ScaleRequest,
};

impl Client {
    /// `PUT /v1/jobs`: runs `job` (a new version unless unchanged).
    pub async fn job_run(&self, job: &Job) -> Result<JobWritten, ClientError> {
        self.put_json("/v1/jobs", Some(job)).await
    }

    /// `PUT /v1/jobs?plan=true`: what running `job` would change.
    pub async fn job_plan(&self, job: &Job) -> Result<JobPlan, ClientError> {
        self.put_json("/v1/jobs?plan=true", Some(job)).await
    }

    /// `GET /v1/jobs` (blocking with `query`).
    pub async fn jobs(&self, query: QueryOptions) -> Result<Indexed<Vec<JobSummary>>, ClientError> {
        self.get("/v1/jobs", query, &[]).await
    }

    /// `GET /v1/job/:name` (blocking with `query`).
    pub async fn job_status(
        &self,
        name: &str,
        query: QueryOptions,
    ) -> Result<Indexed<JobStatus>, ClientError> {
        self.get(&format!("/v1/job/{}", encode(name)), query, &[])
            .await
    }

    /// `DELETE /v1/job/:name`: stops the job.
    pub async fn job_stop(&self, name: &str) -> Result<JobWritten, ClientError> {
        let path = format!("/v1/job/{}", encode(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/job/:name/scale`.
    pub async fn job_scale(
        &self,
        name: &str,
        group: &str,
        count: u32,
    ) -> Result<JobWritten, ClientError> {
        let path = format!("/v1/job/{}/scale", encode(name));
        let body = ScaleRequest {
            group: group.to_owned(),
            count,
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `GET /v1/job/:name/versions`: newest first.
    pub async fn job_versions(&self, name: &str) -> Result<Vec<JobVersion>, ClientError> {
        let path = format!("/v1/job/{}/versions", encode(name));
        Ok(self.get(&path, QueryOptions::default(), &[]).await?.value)
    }

    /// `POST /v1/job/:name/revert`.
    pub async fn job_revert(&self, name: &str, version: u64) -> Result<JobWritten, ClientError> {
        let path = format!("/v1/job/{}/revert", encode(name));
        self.call(Method::POST, &path, Some(&RevertRequest { version }))
            .await
    }
}

impl Client {
    /// `GET /v1/job-allocations/:node` (blocking with `query`): what an agent runs.
    pub async fn job_node_allocations(
        &self,
        node: &str,
        query: QueryOptions,
    ) -> Result<Indexed<crate::job::api::NodeAllocations>, ClientError> {
        self.get(&format!("/v1/job-allocations/{}", encode(node)), query, &[])
            .await
    }

    /// `PUT /v1/job-allocation/:id/status`: an agent reports one of its instances.
    pub async fn job_report(
        &self,
        status: &crate::job::api::InstanceStatus,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/job-allocation/{}/status", encode(&status.id));
        self.call::<_, bool>(Method::PUT, &path, Some(status))
            .await
            .map(|_| ())
    }
}

impl Client {
    /// `GET /v1/agent/job/logs/:alloc?task=&stream=&offset=` on the agent running the instance:
    /// its output from `offset` and the offset to read from next.
    pub async fn job_logs(
        &self,
        alloc: &str,
        task: &str,
        stream: &str,
        offset: u64,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let path = format!(
            "/v1/agent/job/logs/{}?task={}&stream={}&offset={offset}",
            encode(alloc),
            encode(task),
            encode(stream)
        );
        let response = self.send_get(&path, QueryOptions::default(), &[]).await?;
        let response = super::check_status("GET", "/v1/agent/job/logs", response).await?;
        let next = response
            .headers()
            .get("x-plexus-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Decode {
                path: "/v1/agent/job/logs".to_owned(),
                source,
            })?;
        Ok((bytes.to_vec(), next))
    }
}
