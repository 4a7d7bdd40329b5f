//! Which listeners a new configuration opens, closes or re-targets: a pure function of the
//! listeners that run and the configuration wanted.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::discovery::{InboundSpec, SidecarConfig, UpstreamSpec};

/// What to do with the inbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InboundChange {
    /// Nothing changed.
    Keep,
    /// Same bind address, new local app address: no rebinding needed.
    Retarget(SocketAddr),
    /// (Re)bind: none is running, or its bind address or protocol changed.
    Bind(InboundSpec),
}

/// The changes that take the running listeners to a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The inbound listener.
    pub inbound: InboundChange,
    /// Upstream listeners to close (gone, or moving to another address), by destination.
    pub close: Vec<String>,
    /// Upstream listeners to open (new, moving, or not running because binding failed before).
    pub open: Vec<UpstreamSpec>,
}

impl Plan {
    /// True when nothing needs doing.
    pub(crate) fn is_empty(&self) -> bool {
        self.inbound == InboundChange::Keep && self.close.is_empty() && self.open.is_empty()
    }
}

/// Compares running listeners with `desired`. A moved listener appears in both `close` and
/// `open`; closing happens first, so a listener may take over an address another one frees.
pub(crate) fn plan(
    inbound: Option<&InboundSpec>,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    desired: &SidecarConfig,
) -> Plan {
    let inbound = match inbound {
        // A new protocol changes how connections are served: rebind.
        Some(current)
            if current.bind != desired.inbound.bind
                || current.protocol != desired.inbound.protocol
                || current.explicit != desired.inbound.explicit =>
        {
            InboundChange::Bind(desired.inbound)
        }
        Some(current) if current.local_app != desired.inbound.local_app => {
            InboundChange::Retarget(desired.inbound.local_app)
        }
        Some(_) => InboundChange::Keep,
        None => InboundChange::Bind(desired.inbound),
    };
    let close = upstreams
        .iter()
        .filter(|(name, spec)| desired.upstreams.get(*name) != Some(*spec))
        .map(|(name, _)| name.clone())
        .collect();
    let open = desired
        .upstreams
        .iter()
        .filter(|(name, spec)| upstreams.get(*name) != Some(*spec))
        .map(|(_, spec)| spec.clone())
        .collect();
    Plan {
        inbound,
        close,
        open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, port: u16) -> (String, UpstreamSpec) {
        let spec = UpstreamSpec {
            destination: name.to_owned(),
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            protocol: crate::discovery::Protocol::Tcp,
            explicit: false,
            datacenter: None,
        };
        (name.to_owned(), spec)
    }

    fn config(app_port: u16, upstreams: &[(&str, u16)]) -> SidecarConfig {
        SidecarConfig {
            sidecar_id: "web-sidecar-proxy".into(),
            destination: "web".into(),
            revision: 1,
            inbound: InboundSpec {
                bind: SocketAddr::from(([0, 0, 0, 0], 21000)),
                local_app: SocketAddr::from(([127, 0, 0, 1], app_port)),
                protocol: crate::discovery::Protocol::Tcp,
                explicit: false,
            },
            upstreams: upstreams.iter().map(|(n, p)| upstream(n, *p)).collect(),
        }
    }

    #[test]
    fn first_config_opens_everything() {
        let desired = config(8080, &[("db", 9000), ("echo", 9191)]);
        let plan = plan(None, &BTreeMap::new(), &desired);
        assert_eq!(plan.inbound, InboundChange::Bind(desired.inbound));
        assert!(plan.close.is_empty());
        let opened: Vec<_> = plan.open.iter().map(|s| s.destination.as_str()).collect();
        assert_eq!(opened, ["db", "echo"]);
    }

    #[test]
    fn same_config_changes_nothing() {
        let desired = config(8080, &[("echo", 9191)]);
        let plan = plan(Some(&desired.inbound), &desired.upstreams, &desired);
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn added_removed_and_moved_upstreams() {
        let running = config(8080, &[("db", 9000), ("echo", 9191), ("old", 9300)]);
        let desired = config(8080, &[("db", 9000), ("echo", 9192), ("new", 9400)]);
        let plan = plan(Some(&running.inbound), &running.upstreams, &desired);
        assert_eq!(plan.inbound, InboundChange::Keep);
        assert_eq!(plan.close, ["echo", "old"]);
        let opened: Vec<_> = plan
            .open
            .iter()
            .map(|s| (s.destination.as_str(), s.bind.port()))
            .collect();
        assert_eq!(opened, [("echo", 9192), ("new", 9400)]);
    }

    #[test]
    fn inbound_is_retargeted_without_rebinding_unless_its_bind_moves() {
        let running = config(8080, &[]);
        let desired = config(8081, &[]);
        let retarget = plan(Some(&running.inbound), &running.upstreams, &desired);
        assert_eq!(
            retarget.inbound,
            InboundChange::Retarget(desired.inbound.local_app)
        );
        let mut moved = desired.clone();
        moved.inbound.bind.set_port(21001);
        let rebind = plan(Some(&running.inbound), &running.upstreams, &moved);
        assert_eq!(rebind.inbound, InboundChange::Bind(moved.inbound));
    }

    #[test]
    fn listeners_that_failed_to_bind_are_retried() {
        let desired = config(8080, &[("echo", 9191)]);
        // "echo" is not running (its bind failed last time): the next plan opens it again.
        let plan = plan(Some(&desired.inbound), &BTreeMap::new(), &desired);
        assert_eq!(plan.open.len(), 1);
    }
}
