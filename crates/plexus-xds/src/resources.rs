//! A proxy's configuration as xDS resources: per type, named resources with a version each
//! (a hash of their encoded bytes, so equal content has an equal version on every server).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// The resource types this server serves, in the order changes are pushed: clusters before
/// their endpoints, both before the listeners that name them, listeners before their routes
/// (Envoy warms a listener until its routes arrive), secrets whenever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    Secret,
}

impl TypeUrl {
    /// Every type, in push order.
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    /// The type URL on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// Parses a type URL; `None` for a type this server does not serve.
    pub fn parse(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name for logs and status (`CDS`, `EDS`, …).
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "CDS",
            TypeUrl::Endpoint => "EDS",
            TypeUrl::Listener => "LDS",
            TypeUrl::Route => "RDS",
            TypeUrl::Secret => "SDS",
        }
    }

    /// Whether a response of this type must be ACKed before a response of `later` is sent.
    ///
    /// Clusters and endpoints hold back listeners, routes and secrets: a route must never name
    /// a cluster Envoy has not warmed. Clusters do not hold back endpoints: Envoy withholds its
    /// CDS ACK while any cluster is warming, and an EDS cluster warms until its endpoints
    /// arrive, so endpoints that waited for that ACK would wait until Envoy's
    /// `initial_fetch_timeout` (15 s by default) gave up on them.
    pub fn holds_back(self, later: TypeUrl) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Endpoint)
            && matches!(later, TypeUrl::Listener | TypeUrl::Route | TypeUrl::Secret)
    }

    /// Whether an empty subscription means "everything" (LDS and CDS), as xDS defines it.
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }

    fn index(self) -> usize {
        match self {
            TypeUrl::Cluster => 0,
            TypeUrl::Endpoint => 1,
            TypeUrl::Listener => 2,
            TypeUrl::Route => 3,
            TypeUrl::Secret => 4,
        }
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One named resource, encoded once and shared by every stream that sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its name (what Envoy subscribes to).
    pub name: String,
    /// Hash of the encoded bytes, hex.
    pub version: String,
    /// The encoded resource.
    pub body: Any,
}

impl Resource {
    /// Encodes `message` as a resource named `name`.
    pub fn new<M: prost::Name>(name: impl Into<String>, message: &M) -> Self {
        let body = any(message);
        Self {
            name: name.into(),
            version: format!("{:016x}", fnv1a(&body.value)),
            body,
        }
    }
}

/// Wraps a message in `google.protobuf.Any`.
pub fn any<M: prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every resource of one proxy, by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    by_type: [BTreeMap<String, Arc<Resource>>; 5],
}

impl Resources {
    /// Adds (or replaces) a resource.
    pub fn insert(&mut self, type_url: TypeUrl, resource: Resource) {
        self.by_type[type_url.index()].insert(resource.name.clone(), Arc::new(resource));
    }

    /// The resources of one type.
    pub fn of(&self, type_url: TypeUrl) -> &BTreeMap<String, Arc<Resource>> {
        &self.by_type[type_url.index()]
    }

    /// A version for a set of resources: a hash of their names and versions.
    pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a Arc<Resource>>) -> String {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for resource in resources {
            for bytes in [resource.name.as_bytes(), b"\0", resource.version.as_bytes()] {
                hash = bytes.iter().fold(hash, |hash, byte| {
                    (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
                });
            }
        }
        format!("{hash:016x}")
    }

    /// The types whose resources differ between `self` and `other`.
    pub fn changed_types(&self, other: &Self) -> Vec<TypeUrl> {
        TypeUrl::ALL
            .into_iter()
            .filter(|t| self.of(*t) != other.of(*t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn type_urls_round_trip_and_unknown_ones_are_refused() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(
            TypeUrl::parse("type.googleapis.com/envoy.config.cluster.v3.Nope"),
            None
        );
        assert_eq!(
            TypeUrl::Cluster.as_str(),
            <Cluster as prost::Name>::type_url()
        );
    }

    #[test]
    fn versions_follow_content() {
        let a = Resource::new(
            "a",
            &Cluster {
                name: "a".into(),
                ..Default::default()
            },
        );
        let same = Resource::new(
            "a",
            &Cluster {
                name: "a".into(),
                ..Default::default()
            },
        );
        let other = Resource::new(
            "a",
            &Cluster {
                name: "b".into(),
                ..Default::default()
            },
        );
        assert_eq!(a.version, same.version);
        assert_ne!(a.version, other.version);
        let mut one = Resources::default();
        one.insert(TypeUrl::Cluster, a);
        let mut two = Resources::default();
        two.insert(TypeUrl::Cluster, other);
        assert_eq!(one.changed_types(&two), [TypeUrl::Cluster]);
        assert_ne!(
            Resources::version_of(one.of(TypeUrl::Cluster).values()),
            Resources::version_of(two.of(TypeUrl::Cluster).values())
        );
    }
}
