//! Config entries (`service-defaults`, `service-resolver`, `service-splitter`, `service-router`,
//! the gateways', `proxy-defaults`, `service-intentions`), their validation, and the compiled
//! [`chain::DiscoveryChain`] a sidecar uses.
//!
//! ```text
//!  HCL/JSON file / API body ─► parse ─► ConfigEntry ─► validate (+ cross-entry checks) ─► store
//!                                                         stored entries ─► compile ─► DiscoveryChain
//! ```
//!
//! - [`entries`]: the entries as written, Consul's shape;
//! - [`validate`](mod@validate): field-path errors, alone and against the other entries;
//! - [`compile`](mod@compile): entries → [`chain::DiscoveryChain`] for one upstream;
//! - [`chain`]: the compiled type (what the sidecar consumes).

pub mod chain;
pub mod compile;
pub mod entries;
pub mod filter;
pub mod gateway;
mod hcl1;
pub mod intentions;
pub mod proxy_defaults;
#[cfg(test)]
mod tests;
pub mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::entries::{ServiceDefaults, ServiceResolver, ServiceRouter, ServiceSplitter};
pub use self::gateway::{IngressGateway, TerminatingGateway};
pub use self::intentions::{ServiceIntentions, SourceIntention};
pub use self::proxy_defaults::ProxyDefaults;
pub use self::validate::{EntryError, EntryErrors};

/// A config entry kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `service-defaults`.
    #[serde(rename = "service-defaults")]
    ServiceDefaults,
    /// `service-resolver`.
    #[serde(rename = "service-resolver")]
    ServiceResolver,
    /// `service-splitter`.
    #[serde(rename = "service-splitter")]
    ServiceSplitter,
    /// `service-router`.
    #[serde(rename = "service-router")]
    ServiceRouter,
    /// `ingress-gateway`.
    #[serde(rename = "ingress-gateway")]
    IngressGateway,
    /// `terminating-gateway`.
    #[serde(rename = "terminating-gateway")]
    TerminatingGateway,
    /// `service-intentions` (a view of the intentions; see [`intentions`]).
    #[serde(rename = "service-intentions")]
    ServiceIntentions,
    /// `proxy-defaults` (`global` only).
    #[serde(rename = "proxy-defaults")]
    ProxyDefaults,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Self::ServiceDefaults,
        Self::ServiceResolver,
        Self::ServiceSplitter,
        Self::ServiceRouter,
        Self::IngressGateway,
        Self::TerminatingGateway,
        Self::ServiceIntentions,
        Self::ProxyDefaults,
    ];

    /// Every kind, as an error message lists them.
    pub const EXPECTED: &'static str = "service-defaults, service-resolver, service-splitter, service-router, ingress-gateway, terminating-gateway, service-intentions, proxy-defaults";

    /// The written name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceDefaults => "service-defaults",
            Self::ServiceResolver => "service-resolver",
            Self::ServiceSplitter => "service-splitter",
            Self::ServiceRouter => "service-router",
            Self::IngressGateway => "ingress-gateway",
            Self::TerminatingGateway => "terminating-gateway",
            Self::ServiceIntentions => "service-intentions",
            Self::ProxyDefaults => "proxy-defaults",
        }
    }

    /// Parses a written kind.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any config entry. Deserialises through [`ConfigEntry::from_json`] (`Kind` picks the type).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConfigEntry {
    /// `service-defaults`.
    ServiceDefaults(ServiceDefaults),
    /// `service-resolver`.
    ServiceResolver(ServiceResolver),
    /// `service-splitter`.
    ServiceSplitter(ServiceSplitter),
    /// `service-router`.
    ServiceRouter(ServiceRouter),
    /// `ingress-gateway`.
    IngressGateway(IngressGateway),
    /// `terminating-gateway`.
    TerminatingGateway(TerminatingGateway),
    /// `service-intentions`.
    ServiceIntentions(ServiceIntentions),
    /// `proxy-defaults`.
    ProxyDefaults(ProxyDefaults),
}

impl<'de> Deserialize<'de> for ConfigEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

impl ConfigEntry {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::ServiceDefaults(_) => Kind::ServiceDefaults,
            Self::ServiceResolver(_) => Kind::ServiceResolver,
            Self::ServiceSplitter(_) => Kind::ServiceSplitter,
            Self::ServiceRouter(_) => Kind::ServiceRouter,
            Self::IngressGateway(_) => Kind::IngressGateway,
            Self::TerminatingGateway(_) => Kind::TerminatingGateway,
            Self::ServiceIntentions(_) => Kind::ServiceIntentions,
            Self::ProxyDefaults(_) => Kind::ProxyDefaults,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Self::ServiceDefaults(e) => &e.name,
            Self::ServiceResolver(e) => &e.name,
            Self::ServiceSplitter(e) => &e.name,
            Self::ServiceRouter(e) => &e.name,
            Self::IngressGateway(e) => &e.name,
            Self::TerminatingGateway(e) => &e.name,
            Self::ServiceIntentions(e) => &e.name,
            Self::ProxyDefaults(e) => &e.name,
        }
    }

    /// `(CreateIndex, ModifyIndex)`.
    pub fn indexes(&self) -> (u64, u64) {
        match self {
            Self::ServiceDefaults(e) => (e.create_index, e.modify_index),
            Self::ServiceResolver(e) => (e.create_index, e.modify_index),
            Self::ServiceSplitter(e) => (e.create_index, e.modify_index),
            Self::ServiceRouter(e) => (e.create_index, e.modify_index),
            Self::IngressGateway(e) => (e.create_index, e.modify_index),
            Self::TerminatingGateway(e) => (e.create_index, e.modify_index),
            Self::ServiceIntentions(e) => (e.create_index, e.modify_index),
            Self::ProxyDefaults(e) => (e.create_index, e.modify_index),
        }
    }

    /// Sets `(CreateIndex, ModifyIndex)` (the store does this).
    pub fn set_indexes(&mut self, create: u64, modify: u64) {
        let (c, m) = match self {
            Self::ServiceDefaults(e) => (&mut e.create_index, &mut e.modify_index),
            Self::ServiceResolver(e) => (&mut e.create_index, &mut e.modify_index),
            Self::ServiceSplitter(e) => (&mut e.create_index, &mut e.modify_index),
            Self::ServiceRouter(e) => (&mut e.create_index, &mut e.modify_index),
            Self::IngressGateway(e) => (&mut e.create_index, &mut e.modify_index),
            Self::TerminatingGateway(e) => (&mut e.create_index, &mut e.modify_index),
            Self::ServiceIntentions(e) => (&mut e.create_index, &mut e.modify_index),
            Self::ProxyDefaults(e) => (&mut e.create_index, &mut e.modify_index),
        };
        *c = create;
        *m = modify;
    }

    /// Decodes an entry from JSON (an API body, or a converted HCL file): `Kind` picks the type;
    /// unknown kinds and unknown fields are errors naming the field.
    pub fn from_json(value: serde_json::Value) -> Result<Self, EntryError> {
        let kind = value
            .get("Kind")
            .or_else(|| value.get("kind"))
            .ok_or_else(|| {
                if value.is_object() {
                    EntryError::new(
                        "Kind",
                        format!("missing; expected one of {}", Kind::EXPECTED),
                    )
                } else {
                    EntryError::new("", "a config entry must be a JSON object")
                }
            })?;
        let kind_str = kind
            .as_str()
            .ok_or_else(|| EntryError::new("Kind", "must be a string"))?;
        let kind = Kind::parse(kind_str).ok_or_else(|| {
            EntryError::new(
                "Kind",
                format!(
                    "unknown config entry kind {kind_str:?}; expected one of {}",
                    Kind::EXPECTED
                ),
            )
        })?;
        fn decode<T: serde::de::DeserializeOwned>(
            value: serde_json::Value,
        ) -> Result<T, EntryError> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                EntryError::new(field, e.into_inner().to_string())
            })
        }
        Ok(match kind {
            Kind::ServiceDefaults => Self::ServiceDefaults(decode(value)?),
            Kind::ServiceResolver => Self::ServiceResolver(decode(value)?),
            Kind::ServiceSplitter => Self::ServiceSplitter(decode(value)?),
            Kind::ServiceRouter => Self::ServiceRouter(decode(value)?),
            Kind::IngressGateway => Self::IngressGateway(decode(value)?),
            Kind::TerminatingGateway => Self::TerminatingGateway(decode(value)?),
            Kind::ServiceIntentions => Self::ServiceIntentions(decode(value)?),
            Kind::ProxyDefaults => Self::ProxyDefaults(decode(value)?),
        })
    }

    /// Parses a config entry file's text: HCL (`.hcl`) or JSON (`.json`), by `file`'s extension.
    /// HCL is Consul's config-entry style (`Kind = "service-router"`, `Routes = [ { ... } ]`),
    /// HCL 1 blocks inside objects (`Match { HTTP { ... } }`) included.
    pub fn parse_file_text(file: &Path, text: &str) -> Result<Self, EntryError> {
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let value: serde_json::Value = match ext.as_deref() {
            Some("json") => serde_json::from_str(text)
                .map_err(|e| EntryError::new("", format!("invalid JSON: {e}")))?,
            Some("hcl") => hcl::from_str(&hcl1::blocks_to_attributes(text))
                .map_err(|e| EntryError::new("", format!("invalid HCL: {e}")))?,
            _ => {
                return Err(EntryError::new(
                    "",
                    "config entry files must end in .hcl or .json",
                ));
            }
        };
        Self::from_json(value)
    }

    /// Reads and parses a config entry file.
    pub fn load_file(path: &Path) -> Result<Self, EntryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EntryError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::parse_file_text(path, &text)
    }
}
