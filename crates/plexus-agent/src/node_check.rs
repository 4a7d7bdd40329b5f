//! Checks registered on their own (`PUT /v1/agent/check/register`, `…/deregister/{id}`) and
//! Consul's maintenance mode, which is a critical check without a runner:
//! `_service_maintenance:<service id>` on a service, `_node_maintenance` on the node.
//!
//! A maintenance check is an ordinary catalog check, so every health read and the mesh see the
//! instance (or the node's every instance) as critical while it is there. Re-registering the
//! service replaces its checks (as every registration here does), which ends its maintenance.

use plexus_api::acl::Authorizer;
use plexus_api::registration::CheckDefinition;
use plexus_api::validate::{FieldError, ValidationErrors, validate_check};
use plexus_api::{CheckStatus, HealthCheck, Registration};

use crate::service::keep_current_status;
use crate::{Agent, AgentError};

/// The id of the node's maintenance check (Consul's `structs.NodeMaint`).
pub(crate) const NODE_MAINTENANCE: &str = "_node_maintenance";
/// The id prefix of a service's maintenance check (Consul's `structs.ServiceMaintPrefix`).
pub(crate) const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
/// Notes of a service maintenance check enabled without a reason (Consul's text).
pub(crate) const DEFAULT_SERVICE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";
/// Notes of a node maintenance check enabled without a reason (Consul's text).
pub(crate) const DEFAULT_NODE_REASON: &str = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";

impl Agent {
    /// Registers a check on this node, on its `ServiceID` when given. Re-registering an id
    /// replaces the check (an unchanged one keeps its status). Returns the check id.
    ///
    /// Needs `service:write` on the check's service, else `node:write` on this node (and the
    /// same for the check it replaces).
    pub async fn register_check_as(
        &self,
        def: &CheckDefinition,
        authz: &Authorizer,
    ) -> Result<String, AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        let _writes = inner.writes.lock().await;
        let services = inner.catalog.node_services(node).await?.value;
        let service = match def.service_id.as_deref().filter(|id| !id.is_empty()) {
            None => None,
            Some(id) => Some(services.iter().find(|s| s.id == id).ok_or_else(|| {
                AgentError::InvalidCheck(ValidationErrors(vec![FieldError {
                    field: "service_id".to_owned(),
                    message: format!("service {id:?} is not registered on node {node:?}"),
                }]))
            })?),
        };
        let check = validate_check(def, service, node).map_err(AgentError::InvalidCheck)?;
        match service {
            Some(service) => authz.require_service_write(&service.service)?,
            None => authz.require_node_write(node)?,
        }
        let id = check.check_id.clone();
        let current = inner.catalog.node_checks(node).await?.value;
        // Replacing a check held by another service (or the node) needs write access to it too.
        if let Some(old) = current.iter().find(|c| c.check_id == id) {
            require_check_write(authz, node, old)?;
        }
        let mut checks = vec![check];
        keep_current_status(&mut checks, &current);
        self.write_checks(checks).await?;
        tracing::info!(node, check_id = %id, "check registered");
        Ok(id)
    }

    /// Removes a check from this node ([`AgentError::NotFound`] when it is not there). Needs
    /// `service:write` on its service, else `node:write` on this node.
    pub async fn deregister_check_as(
        &self,
        check_id: &str,
        authz: &Authorizer,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        let _writes = inner.writes.lock().await;
        let check = self.find_check(check_id).await?;
        require_check_write(authz, node, &check)?;
        inner.catalog.deregister_check(node, check_id).await?;
        tracing::info!(node, check_id, "check deregistered");
        Ok(())
    }

    /// Puts a service into maintenance (a critical `_service_maintenance:<id>` check whose notes
    /// are `reason`, or Consul's default text) or takes it out. Needs `service:write` on it;
    /// [`AgentError::NotFound`] for a service not on this node.
    pub async fn service_maintenance_as(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
        authz: &Authorizer,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        let _writes = inner.writes.lock().await;
        let services = inner.catalog.node_services(node).await?.value;
        let service = services
            .iter()
            .find(|s| s.id == service_id)
            .ok_or_else(|| AgentError::NotFound {
                kind: "service",
                id: service_id.to_owned(),
            })?;
        authz.require_service_write(&service.service)?;
        let check_id = format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}");
        if !enable {
            return self.remove_maintenance(&check_id).await;
        }
        let check = HealthCheck {
            node: node.to_owned(),
            check_id: check_id.clone(),
            name: "Service Maintenance Mode".to_owned(),
            status: CheckStatus::Critical,
            notes: or_default(reason, DEFAULT_SERVICE_REASON),
            service_id: service.id.clone(),
            service_name: service.service.clone(),
            service_tags: service.tags.clone(),
            ..HealthCheck::default()
        };
        self.write_checks(vec![check]).await?;
        tracing::info!(node, service_id, "service maintenance enabled");
        Ok(())
    }

    /// Puts this node into maintenance (a critical `_node_maintenance` check) or takes it out.
    /// Needs `node:write` on this node.
    pub async fn node_maintenance_as(
        &self,
        enable: bool,
        reason: &str,
        authz: &Authorizer,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        authz.require_node_write(node)?;
        let _writes = inner.writes.lock().await;
        if !enable {
            return self.remove_maintenance(NODE_MAINTENANCE).await;
        }
        let check = HealthCheck {
            node: node.to_owned(),
            check_id: NODE_MAINTENANCE.to_owned(),
            name: "Node Maintenance Mode".to_owned(),
            status: CheckStatus::Critical,
            notes: or_default(reason, DEFAULT_NODE_REASON),
            ..HealthCheck::default()
        };
        self.write_checks(vec![check]).await?;
        tracing::info!(node, "node maintenance enabled");
        Ok(())
    }

    /// Writes checks of this node (with the node record, as every registration does).
    async fn write_checks(&self, checks: Vec<HealthCheck>) -> Result<u64, AgentError> {
        let registration = Registration {
            node: self.inner.config.node.clone(),
            services: Vec::new(),
            checks,
        };
        Ok(self.inner.catalog.register(registration).await?)
    }

    /// Removes a maintenance check; one not there is already removed.
    async fn remove_maintenance(&self, check_id: &str) -> Result<(), AgentError> {
        let node = self.node();
        match self.inner.catalog.deregister_check(node, check_id).await {
            Ok(_) => {
                tracing::info!(node, check_id, "maintenance disabled");
                Ok(())
            }
            Err(plexus_api::CatalogError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// One check of this node by id.
    async fn find_check(&self, check_id: &str) -> Result<HealthCheck, AgentError> {
        let checks = self.inner.catalog.node_checks(self.node()).await?.value;
        checks
            .into_iter()
            .find(|c| c.check_id == check_id)
            .ok_or_else(|| AgentError::NotFound {
                kind: "check",
                id: check_id.to_owned(),
            })
    }
}

/// A service's check needs `service:write` on the service, a node check `node:write`.
pub(crate) fn require_check_write(
    authz: &Authorizer,
    node: &str,
    check: &HealthCheck,
) -> Result<(), plexus_api::acl::Denied> {
    if check.service_name.is_empty() {
        authz.require_node_write(node)
    } else {
        authz.require_service_write(&check.service_name)
    }
}

fn or_default(reason: &str, default: &str) -> String {
    if reason.is_empty() {
        default.to_owned()
    } else {
        reason.to_owned()
    }
}
