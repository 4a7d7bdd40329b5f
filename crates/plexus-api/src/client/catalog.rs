//! Client calls for the local agent (`/v1/agent/*`), the catalog and health.

use std::collections::BTreeMap;

use super::{Client, ClientError, QueryOptions, encode};
use crate::catalog::Indexed;
use crate::model::{
    AgentSelf, AgentService, CatalogService, CheckStatus, HealthCheck, Node, ServiceEntry,
};
use crate::registration::ServiceRegistration;

impl Client {
    /// `PUT /v1/agent/service/register`.
    pub async fn register_service(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ClientError> {
        self.send_put("/v1/agent/service/register", Some(registration))
            .await
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ClientError> {
        self.send_put::<()>(
            &format!("/v1/agent/service/deregister/{}", encode(id)),
            None,
        )
        .await
    }

    /// `GET /v1/agent/services`.
    pub async fn agent_services(&self) -> Result<BTreeMap<String, AgentService>, ClientError> {
        Ok(self
            .get("/v1/agent/services", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET /v1/agent/services`, optionally blocking, with the index (the xDS server follows
    /// every proxy of its node with this one query).
    pub async fn agent_services_indexed(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<BTreeMap<String, AgentService>>, ClientError> {
        self.get("/v1/agent/services", query, &[]).await
    }

    /// `GET /v1/agent/service/:id`, optionally blocking.
    pub async fn agent_service(
        &self,
        id: &str,
        query: QueryOptions,
    ) -> Result<Indexed<AgentService>, ClientError> {
        self.get(&format!("/v1/agent/service/{}", encode(id)), query, &[])
            .await
    }

    /// `GET /v1/agent/checks`.
    pub async fn agent_checks(&self) -> Result<BTreeMap<String, HealthCheck>, ClientError> {
        Ok(self
            .get("/v1/agent/checks", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET /v1/agent/self`.
    pub async fn agent_self(&self) -> Result<AgentSelf, ClientError> {
        Ok(self
            .get("/v1/agent/self", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/agent/check/pass|warn|fail/:id` for TTL checks.
    pub async fn update_ttl_check(
        &self,
        check_id: &str,
        status: CheckStatus,
        note: &str,
    ) -> Result<(), ClientError> {
        let verb = match status {
            CheckStatus::Passing => "pass",
            CheckStatus::Warning => "warn",
            CheckStatus::Critical | CheckStatus::Maintenance => "fail",
        };
        let path = format!(
            "/v1/agent/check/{verb}/{}?note={}",
            encode(check_id),
            encode(note)
        );
        self.send_put::<()>(&path, None).await
    }

    /// `GET /v1/catalog/services`.
    pub async fn catalog_services(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, ClientError> {
        self.get("/v1/catalog/services", query, &[]).await
    }

    /// `GET /v1/catalog/service/:name`.
    pub async fn catalog_service(
        &self,
        name: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<CatalogService>>, ClientError> {
        self.get(&format!("/v1/catalog/service/{}", encode(name)), query, &[])
            .await
    }

    /// `GET /v1/catalog/nodes`.
    pub async fn catalog_nodes(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<Node>>, ClientError> {
        self.get("/v1/catalog/nodes", query, &[]).await
    }

    /// `GET /v1/health/service/:name` (`passing`: only instances whose checks all pass).
    pub async fn health_service(
        &self,
        name: &str,
        passing: bool,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        self.health_entries("service", name, passing, query).await
    }

    /// `GET /v1/health/connect/:name`: the sidecars in front of `name`'s instances.
    pub async fn health_connect(
        &self,
        name: &str,
        passing: bool,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        self.health_entries("connect", name, passing, query).await
    }

    /// `GET /v1/health/<family>/:name`, `family` `service` or `connect`.
    async fn health_entries(
        &self,
        family: &str,
        name: &str,
        passing: bool,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        let flags: &[&str] = if passing { &["passing"] } else { &[] };
        self.get(
            &format!("/v1/health/{family}/{}", encode(name)),
            query,
            flags,
        )
        .await
    }

    /// `GET /v1/health/checks/:service`.
    pub async fn health_checks(
        &self,
        service: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ClientError> {
        self.get(
            &format!("/v1/health/checks/{}", encode(service)),
            query,
            &[],
        )
        .await
    }

    /// `GET /v1/health/state/:state` (`any`, `passing`, `warning`, `critical`).
    pub async fn health_state(
        &self,
        state: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ClientError> {
        self.get(&format!("/v1/health/state/{}", encode(state)), query, &[])
            .await
    }
}
