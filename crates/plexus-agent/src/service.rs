//! Registering and deregistering services on this node, and TTL check updates.

use plexus_api::acl::Authorizer;
use plexus_api::validate::validate_service;
use plexus_api::{
    AgentService, Catalog, CatalogError, CheckStatus, CheckType, Registration, ServiceRegistration,
};

use crate::ports::{self, Clash};
use crate::{Agent, AgentError};

/// The host ports one registration reserved for its sidecar: on drop, every newly reserved port
/// but the one registered is released again (a failed registration reserves nothing).
struct Claims<'a> {
    agent: &'a Agent,
    owner: &'a str,
    new: Vec<u16>,
    kept: Option<Option<u16>>,
}

impl Claims<'_> {
    /// The registration succeeded with the sidecar on `port` (`None`: no sidecar): the owner's
    /// other ports (a previous port it moved away from) are released.
    fn keep(&mut self, port: Option<u16>) {
        self.kept = Some(port);
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        let host = &self.agent.inner.host_ports;
        match self.kept {
            Some(port) if !self.owner.is_empty() => host.release_owner(self.owner, port),
            Some(_) => {}
            None => {
                for port in &self.new {
                    host.release(*port);
                }
            }
        }
    }
}

/// Longest check output kept (Consul's default `check_output_max_size`).
pub(crate) const MAX_OUTPUT_BYTES: usize = 4096;

impl Agent {
    /// Validates and registers a service and its sidecar (with their checks). Re-registering an id
    /// replaces it. Returns the ids written, the service's first.
    ///
    /// A sidecar without a port gets the lowest free one in 21000–21255 (its previous port when
    /// re-registered). Fails with [`AgentError::Conflict`] when a proxy port or an upstream
    /// listener is already used by another service on this node.
    pub async fn register(&self, reg: &ServiceRegistration) -> Result<Vec<String>, AgentError> {
        self.register_as(reg, &Authorizer::allow_all()).await
    }

    /// Like [`Agent::register`] for a caller: its token needs `service:write` on every service
    /// the registration makes (the service, its sidecar, and a proxy's destination).
    pub async fn register_as(
        &self,
        reg: &ServiceRegistration,
        authz: &Authorizer,
    ) -> Result<Vec<String>, AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        let _writes = inner.writes.lock().await;

        let existing = inner.catalog.node_services(node).await?.value;
        let (id, sidecar_id) = ports::registration_ids(reg);
        let replaced = ports::replaced_ids(&existing, &id, sidecar_id.as_deref());
        let others: Vec<&AgentService> = existing
            .iter()
            .filter(|s| !replaced.contains(&s.id))
            .collect();
        let previous_port = existing
            .iter()
            .find(|s| Some(&s.id) == sidecar_id.as_ref())
            .map(|s| s.port);
        let reserved = ports::own_ports(reg);
        // Ports newly reserved on the host for the sidecar; released again unless registered.
        let owner = sidecar_id.clone().unwrap_or_default();
        let mut claims = Claims {
            agent: self,
            owner: &owner,
            new: Vec::new(),
            kept: None,
        };
        let mut host_free = |port: u16| {
            // The sidecar's previous port may be listening already: its own proxy.
            let bind_test = Some(port) != previous_port;
            match inner.host_ports.claim(port, &owner, bind_test) {
                Ok(newly) => {
                    if newly {
                        claims.new.push(port);
                    }
                    true
                }
                Err(taken) => {
                    tracing::info!(node, %taken, "sidecar port skipped");
                    false
                }
            }
        };
        let mut next_port =
            || ports::next_free_port(&others, &reserved, previous_port, &mut host_free);
        let mut validated =
            validate_service(reg, &inner.defaults, &mut next_port).map_err(AgentError::Invalid)?;
        // A sidecar port given in the registration (a job instance registering again after a
        // restart, with its sidecar still listening there) is reserved on the host too, without
        // the bind test; a port another agent holds is named, not refused (it was given).
        if let Some(port) = validated
            .iter()
            .find(|v| Some(&v.service.id) == sidecar_id.as_ref())
            .map(|v| v.service.port)
            .filter(|p| *p != 0)
        {
            match inner.host_ports.claim(port, &owner, false) {
                Ok(true) => claims.new.push(port),
                Ok(false) => {}
                Err(taken) => {
                    tracing::warn!(node, %taken, "sidecar port given in the registration is not reserved")
                }
            }
        }
        for v in &mut validated {
            fill_addresses(&mut v.service, &inner.config.node);
        }
        for v in &validated {
            authz.require_service_write(&v.service.service)?;
            if let Some(proxy) = &v.service.proxy
                && !proxy.destination_service_name.is_empty()
            {
                authz.require_service_write(&proxy.destination_service_name)?;
            }
        }
        if let Some(Clash { field, message }) = ports::find_clash(&validated, &others) {
            return Err(AgentError::Conflict { field, message });
        }

        let ids: Vec<String> = validated.iter().map(|v| v.service.id.clone()).collect();
        let mut registration = Registration {
            node: inner.config.node.clone(),
            ..Registration::default()
        };
        for v in validated {
            registration.services.push(v.service);
            registration.checks.extend(v.checks);
        }
        let current = inner.catalog.node_checks(node).await?.value;
        keep_current_status(&mut registration.checks, &current);
        let sidecar_port = registration
            .services
            .iter()
            .find(|s| Some(&s.id) == sidecar_id.as_ref())
            .map(|s| s.port);
        inner.catalog.register(registration).await?;
        self.registered().extend(ids.iter().cloned());
        claims.keep(sidecar_port);

        // A sidecar re-registered under another id replaces the old one.
        for stale in replaced.iter().filter(|r| !ids.contains(r)) {
            if !existing.iter().any(|s| &s.id == stale) {
                continue;
            }
            // The registration itself succeeded; a leftover proxy is logged, not an error.
            match remove(inner.catalog.as_ref(), node, stale).await {
                Ok(()) => {
                    self.registered().remove(stale);
                    inner.host_ports.release_owner(stale, None);
                }
                Err(error) => {
                    tracing::warn!(%error, node, service_id = %stale, "removing replaced sidecar failed");
                }
            }
        }
        tracing::info!(node, service_id = %id, services = ids.len(), "service registered");
        Ok(ids)
    }

    /// Deregisters a service and the sidecar registered with it (any connect-proxy whose
    /// destination is this instance). [`AgentError::NotFound`] when it is not on this node.
    pub async fn deregister(&self, service_id: &str) -> Result<(), AgentError> {
        self.deregister_as(service_id, &Authorizer::allow_all())
            .await
    }

    /// Like [`Agent::deregister`] for a caller, whose token needs `service:write` on the
    /// service.
    pub async fn deregister_as(
        &self,
        service_id: &str,
        authz: &Authorizer,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        if authz.enforcing() {
            let services = inner.catalog.node_services(node).await?.value;
            let service = services
                .iter()
                .find(|s| s.id == service_id)
                .ok_or_else(|| AgentError::NotFound {
                    kind: "service",
                    id: service_id.to_owned(),
                })?;
            authz.require_service_write(&service.service)?;
        }
        let _writes = inner.writes.lock().await;
        let removed = deregister_with_sidecars(inner.catalog.as_ref(), node, service_id).await?;
        let mut registered = self.registered();
        for id in &removed {
            registered.remove(id);
            inner.host_ports.release_owner(id, None);
        }
        drop(registered);
        tracing::info!(
            node,
            service_id,
            removed = removed.len(),
            "service deregistered"
        );
        Ok(())
    }

    /// Deregisters every service this agent registered (best effort: failures are logged).
    pub async fn deregister_all(&self) {
        let ids: Vec<String> = self.registered().iter().cloned().collect();
        for id in ids {
            match self.deregister(&id).await {
                // Already gone, e.g. removed with its parent.
                Ok(()) | Err(AgentError::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, service_id = %id, "deregister on shutdown failed");
                }
            }
        }
    }

    /// Sets a TTL check's status and output and restarts its TTL. [`AgentError::NotFound`] for an
    /// unknown check, [`AgentError::NotTtl`] for a check of another kind.
    pub async fn update_ttl(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), AgentError> {
        self.update_ttl_as(check_id, status, output, &Authorizer::allow_all())
            .await
    }

    /// Like [`Agent::update_ttl`] for a caller: a service's check needs `service:write` on the
    /// service, a node check `node:write` on this node.
    pub async fn update_ttl_as(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
        authz: &Authorizer,
    ) -> Result<(), AgentError> {
        let inner = &self.inner;
        let node = inner.config.node.node.as_str();
        let checks = inner.catalog.node_checks(node).await?.value;
        let check = checks
            .iter()
            .find(|c| c.check_id == check_id)
            .ok_or_else(|| AgentError::NotFound {
                kind: "check",
                id: check_id.to_owned(),
            })?;
        if check.service_name.is_empty() {
            authz.require_node_write(node)?;
        } else {
            authz.require_service_write(&check.service_name)?;
        }
        if check.check_type != Some(CheckType::Ttl) {
            return Err(AgentError::NotTtl {
                check_id: check_id.to_owned(),
            });
        }
        // Reset the timer first, so an expiry racing with this update cannot win.
        inner.ttl.touch(check_id);
        let output = truncate_output(output);
        inner
            .catalog
            .update_check(node, check_id, status, output)
            .await?;
        Ok(())
    }
}

/// Removes a service and every connect-proxy fronting it. Returns the ids removed.
pub(crate) async fn deregister_with_sidecars(
    catalog: &dyn Catalog,
    node: &str,
    service_id: &str,
) -> Result<Vec<String>, AgentError> {
    let existing = catalog.node_services(node).await?.value;
    if !existing.iter().any(|s| s.id == service_id) {
        return Err(AgentError::NotFound {
            kind: "service",
            id: service_id.to_owned(),
        });
    }
    let mut removed = vec![service_id.to_owned()];
    removed.extend(
        existing
            .iter()
            .filter(|s| ports::is_sidecar_of(s, service_id))
            .map(|s| s.id.clone()),
    );
    for id in &removed {
        remove(catalog, node, id).await?;
    }
    Ok(removed)
}

/// Removes one instance; one already gone counts as removed.
async fn remove(catalog: &dyn Catalog, node: &str, id: &str) -> Result<(), AgentError> {
    match catalog.deregister_service(node, id).await {
        Ok(_) | Err(CatalogError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// A service (or sidecar) without an address of its own gets its node's, and `lan`/`wan` tagged
/// addresses (`{"address", "port"}`, as Consul's services carry them) unless it names them:
/// `lan` is its address, `wan` its own address when it has one, else the node's `wan`.
pub(crate) fn fill_addresses(service: &mut AgentService, node: &plexus_api::Node) {
    let own = !service.address.is_empty();
    if !own {
        service.address.clone_from(&node.address);
    }
    if service.address.is_empty() {
        return;
    }
    let wan = if own {
        service.address.clone()
    } else {
        node.tagged_addresses
            .get("wan")
            .cloned()
            .unwrap_or_else(|| service.address.clone())
    };
    let mut tagged = match service.tagged_addresses.take() {
        Some(serde_json::Value::Object(map)) => map,
        // Validation accepts only an object; anything else is left as it was.
        Some(other) => {
            service.tagged_addresses = Some(other);
            return;
        }
        None => serde_json::Map::new(),
    };
    for (tag, address) in [("lan", service.address.clone()), ("wan", wan)] {
        tagged
            .entry(tag)
            .or_insert_with(|| serde_json::json!({"address": address, "port": service.port}));
    }
    service.tagged_addresses = Some(serde_json::Value::Object(tagged));
}

/// At most [`MAX_OUTPUT_BYTES`] of `output`, cut at a character boundary.
pub(crate) fn truncate_output(output: &str) -> &str {
    if output.len() <= MAX_OUTPUT_BYTES {
        return output;
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    &output[..end]
}

/// A check re-registered unchanged (same id, service, type and definition) keeps its current
/// status and output instead of starting over as critical, as Consul's agent does: restarting
/// the agent or re-sending a registration must not take healthy instances out of the mesh
/// until their checks run again. A status the registration sets explicitly (passing, warning)
/// still applies.
pub(crate) fn keep_current_status(
    checks: &mut [plexus_api::HealthCheck],
    current: &[plexus_api::HealthCheck],
) {
    for check in checks
        .iter_mut()
        .filter(|c| c.status == CheckStatus::Critical)
    {
        let same = current.iter().find(|old| {
            old.check_id == check.check_id
                && old.service_id == check.service_id
                && old.check_type == check.check_type
                && old.definition == check.definition
        });
        if let Some(old) = same {
            check.status = old.status;
            check.output.clone_from(&old.output);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn services_without_an_address_get_their_nodes() {
        let mut node = plexus_api::Node {
            address: "10.0.0.5".into(),
            ..plexus_api::Node::default()
        };
        node.tagged_addresses
            .insert("wan".into(), "203.0.113.5".into());
        let mut service = AgentService {
            port: 9090,
            ..AgentService::default()
        };
        fill_addresses(&mut service, &node);
        assert_eq!(service.address, "10.0.0.5");
        assert_eq!(
            service.tagged_addresses,
            Some(serde_json::json!({
                "lan": {"address": "10.0.0.5", "port": 9090},
                "wan": {"address": "203.0.113.5", "port": 9090},
            }))
        );
        // An address of its own, and a tagged address it names, are kept.
        let mut own = AgentService {
            address: "10.0.0.9".into(),
            port: 80,
            tagged_addresses: Some(
                serde_json::json!({"wan": {"address": "198.51.100.1", "port": 443}}),
            ),
            ..AgentService::default()
        };
        fill_addresses(&mut own, &node);
        assert_eq!(own.address, "10.0.0.9");
        assert_eq!(
            own.tagged_addresses,
            Some(serde_json::json!({
                "lan": {"address": "10.0.0.9", "port": 80},
                "wan": {"address": "198.51.100.1", "port": 443},
            }))
        );
    }

    #[test]
    fn output_is_cut_at_a_char_boundary() {
        assert_eq!(truncate_output("ok"), "ok");
        let long = "é".repeat(MAX_OUTPUT_BYTES);
        let cut = truncate_output(&long);
        assert!(cut.len() <= MAX_OUTPUT_BYTES && cut.len() >= MAX_OUTPUT_BYTES - 1);
    }
}
