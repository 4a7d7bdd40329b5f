//! Signing: who may have which identity (the registered proxy or gateway a CSR comes from, its
//! config entries), per-caller rate limits, and issuing and caching leaves. The pure decision is
//! [`super::policy`]; this is the part that reads the store and signs.

use std::time::{Duration, Instant};

use plexus_api::config_entry::{ConfigEntry, Kind};
use plexus_api::connect::{IssuedCert, ServiceId, service_spiffe_id};
use plexus_api::{AgentService, Indexed, ServiceKind};
use rcgen::{KeyPair, PublicKeyData};
use tracing::info;

use super::policy::{self, Grant};
use super::x509::{colon_hex, issuer, leaf_params, parse_csr, rfc3339, unix_now};
use super::{CaError, CaState, CertificateAuthority, format_duration, renew_time};

impl CertificateAuthority {
    pub(super) fn limit(&self, caller: &str) -> Result<(), CaError> {
        plexus_runtime::lock::lock(&self.limiter)
            .take(caller, Instant::now())
            .map_err(|retry_after| CaError::RateLimited {
                caller: caller.to_owned(),
                retry_after,
            })
    }

    async fn find_service(&self, id: &str) -> Result<Option<AgentService>, CaError> {
        let (records, _) = self.store.range(crate::catalog::keys::SERVICES).await?;
        for kv in records {
            if let Ok(service) = serde_json::from_slice::<AgentService>(&kv.value)
                && service.id == id
            {
                return Ok(Some(service));
            }
        }
        Ok(None)
    }

    async fn service_exists(&self, name: &str) -> Result<bool, CaError> {
        let (records, _) = self.store.range(crate::catalog::keys::SERVICES).await?;
        Ok(records.iter().any(|kv| {
            serde_json::from_slice::<AgentService>(&kv.value)
                .map(|s| s.service == name)
                .unwrap_or(false)
        }))
    }

    /// The service whose identity a CSR from the registered proxy `proxy_id` may ask for (what
    /// the signing endpoint checks `service:write` on), and the DNS names it may carry:
    ///
    /// - a `connect-proxy`: its destination service;
    /// - an `ingress-gateway`: its own service, with the hosts of its TLS listeners (from its
    ///   `ingress-gateway` config entry) as DNS names;
    /// - a `terminating-gateway`: the service the CSR asks for when the gateway's
    ///   `terminating-gateway` entry links it (the gateway presents it to the mesh), else its own;
    /// - a `mesh-gateway`: its own service.
    pub async fn entitlement(&self, proxy_id: &str, csr_pem: &str) -> Result<Entitlement, CaError> {
        let proxy = self
            .find_service(proxy_id)
            .await?
            .filter(|s| s.kind == ServiceKind::ConnectProxy || s.kind.is_gateway())
            .ok_or_else(|| {
                CaError::NotFound(format!(
                    "no connect-proxy or gateway service {proxy_id:?} is registered"
                ))
            })?;
        let own = || Entitlement {
            service: proxy.service.clone(),
            dns_names: Vec::new(),
        };
        match proxy.kind {
            ServiceKind::IngressGateway => {
                let dns_names = match self
                    .gateway_entry(Kind::IngressGateway, &proxy.service)
                    .await?
                {
                    Some(ConfigEntry::IngressGateway(entry)) => entry.tls_hosts(),
                    _ => Vec::new(),
                };
                Ok(Entitlement {
                    service: proxy.service.clone(),
                    dns_names,
                })
            }
            ServiceKind::TerminatingGateway => {
                let (request, _) = parse_csr(csr_pem)?;
                let asked = request
                    .uris
                    .first()
                    .and_then(|uri| ServiceId::parse(uri))
                    .map(|id| id.service);
                let linked = match self
                    .gateway_entry(Kind::TerminatingGateway, &proxy.service)
                    .await?
                {
                    Some(ConfigEntry::TerminatingGateway(entry)) => entry
                        .services
                        .into_iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                match asked.filter(|asked| linked.contains(asked)) {
                    Some(service) => Ok(Entitlement {
                        service,
                        dns_names: Vec::new(),
                    }),
                    None => Ok(own()),
                }
            }
            ServiceKind::MeshGateway => Ok(own()),
            _ => proxy
                .proxy
                .as_ref()
                .map(|p| p.destination_service_name.clone())
                .filter(|s| !s.is_empty())
                .map(|service| Entitlement {
                    service,
                    dns_names: Vec::new(),
                })
                .ok_or_else(|| {
                    CaError::NotFound(format!("proxy {proxy_id:?} has no destination service"))
                }),
        }
    }

    /// The stored gateway config entry of `kind` named `name`, if any.
    async fn gateway_entry(&self, kind: Kind, name: &str) -> Result<Option<ConfigEntry>, CaError> {
        let key = format!(
            "{}{}/{}",
            crate::config::ENTRIES,
            kind.as_str(),
            crate::catalog::keys::escape(name)
        );
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|value| ConfigEntry::from_json(value).ok()))
    }

    /// `POST /v1/connect/ca/sign`: signs `csr_pem` for the identity the registered proxy
    /// `proxy_id` is entitled to ([`CertificateAuthority::entitlement`]), if the CSR asks for
    /// exactly that identity (and DNS names it may have).
    pub async fn sign(
        &self,
        proxy_id: &str,
        csr_pem: &str,
        ttl: Option<Duration>,
    ) -> Result<Indexed<IssuedCert>, CaError> {
        self.limit(&format!("proxy:{proxy_id}"))?;
        let (request, public_key) = parse_csr(csr_pem)?;
        let Entitlement { service, dns_names } = self.entitlement(proxy_id, csr_pem).await?;
        let (state, kv) = self.state().await?;
        self.check_primary(&state)?;
        let entitled = service_spiffe_id(&state.trust_domain, &self.datacenter, &service);
        let grant = policy::decide_with_dns(
            &request,
            &entitled,
            &dns_names,
            ttl,
            Duration::from_secs(state.leaf_ttl_secs),
        )?;
        self.issue(
            &state,
            kv.store,
            &grant,
            &service,
            &public_key,
            String::new(),
        )
    }

    /// `GET /v1/agent/connect/ca/leaf/:service`, as Consul's agent serves it: the leaf issued
    /// last for `service`, until half its lifetime has passed or the active root changed; then a
    /// new one (with a higher index). So a client that watches it is not rate limited.
    pub async fn cached_leaf(&self, service: &str) -> Result<Indexed<IssuedCert>, CaError> {
        let (state, kv) = self.state().await?;
        let now = unix_now() as i64;
        let cached = self
            .leaves
            .lock()
            .map_err(|_| CaError::Corrupt {
                what: "leaf cache lock poisoned",
            })?
            .get(service)
            .cloned();
        if let Some(cached) = &cached
            && cached.value.root_id == state.set.active
            && now < renew_time(&cached.value)
        {
            return Ok(cached.clone());
        }
        let mut issued = self.leaf_for_service(service).await?;
        let index = cached
            .map_or(0, |c| c.index + 1)
            .max(kv.store)
            .max(issued.index);
        issued.index = index;
        issued.value.create_index = index;
        issued.value.modify_index = index;
        self.leaves
            .lock()
            .map_err(|_| CaError::Corrupt {
                what: "leaf cache lock poisoned",
            })?
            .insert(service.to_owned(), issued.clone());
        Ok(issued)
    }

    /// A key and leaf for a registered service, generated here (Consul's agent does the same
    /// for its clients); every call signs a new one (see [`CertificateAuthority::cached_leaf`]).
    pub async fn leaf_for_service(&self, service: &str) -> Result<Indexed<IssuedCert>, CaError> {
        self.limit(&format!("service:{service}"))?;
        if !self.service_exists(service).await? {
            return Err(CaError::NotFound(format!(
                "no service {service:?} is registered"
            )));
        }
        let (state, kv) = self.state().await?;
        self.check_primary(&state)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Crypto)?;
        let grant = Grant {
            spiffe_id: service_spiffe_id(&state.trust_domain, &self.datacenter, service),
            dns_names: Vec::new(),
            ttl: Duration::from_secs(state.leaf_ttl_secs),
        };
        self.issue(&state, kv.store, &grant, service, &key, key.serialize_pem())
    }

    fn issue(
        &self,
        state: &CaState,
        index: u64,
        grant: &Grant,
        service: &str,
        public_key: &impl PublicKeyData,
        private_key_pem: String,
    ) -> Result<Indexed<IssuedCert>, CaError> {
        let active = state.active()?;
        let by = issuer(active, &state.trust_domain, self.kek.as_ref())?;
        let (params, not_before, not_after, serial) = leaf_params(grant, service)?;
        let cert = params
            .signed_by(public_key, &by.cert, &by.key)
            .map_err(CaError::Crypto)?;
        let mut cert_pem = cert.pem();
        if let Some(cross) = &active.cross_signed_pem {
            cert_pem.push_str(cross);
        }
        self.metrics.signed.inc();
        info!(service, spiffe_id = %grant.spiffe_id, ttl = %format_duration(grant.ttl), root_id = %active.id, "signed a leaf certificate");
        Ok(Indexed {
            index,
            value: IssuedCert {
                serial_number: colon_hex(&serial.to_be_bytes()),
                cert_pem,
                private_key_pem,
                service: service.to_owned(),
                service_uri: grant.spiffe_id.clone(),
                valid_after: rfc3339(not_before),
                valid_before: rfc3339(not_after),
                valid_after_unix: not_before,
                valid_before_unix: not_after,
                root_id: active.id.clone(),
                create_index: index,
                modify_index: index,
            },
        })
    }
}

/// What a proxy's CSR may ask for ([`CertificateAuthority::entitlement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    /// The service whose SPIFFE id it may have.
    pub service: String,
    /// DNS names it may have besides.
    pub dns_names: Vec<String>,
}
