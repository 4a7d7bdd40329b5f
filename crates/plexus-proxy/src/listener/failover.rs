//! L4 failover to other datacenters: when none of an upstream's instances here passes, a new
//! connection goes to the first datacenter of its resolver's `Failover.*.Datacenters` whose
//! mesh gateways are known, through them (mTLS to the destination there, SNI and SPIFFE id
//! naming that datacenter). Decided per connection from the latest endpoint sets: once the
//! health change is seen, no new connection tries the failed instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

use super::Target;
use crate::discovery::ChainWatch;
use crate::error::ProxyError;

/// Builds the target for a datacenter.
pub(crate) type MakeRemote = Box<dyn Fn(&str) -> Result<Target, ProxyError> + Send + Sync>;

/// The other datacenters' targets of one upstream, opened on first use.
pub(crate) struct Remotes {
    make: MakeRemote,
    opened: Mutex<BTreeMap<String, Target>>,
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes").finish_non_exhaustive()
    }
}

impl Remotes {
    pub(crate) fn new(make: MakeRemote) -> Self {
        Self {
            make,
            opened: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, datacenter: &str) -> Option<Target> {
        let mut opened = plexus_runtime::lock::lock(&self.opened);
        if let Some(found) = opened.get(datacenter) {
            return Some(found.clone());
        }
        match (self.make)(datacenter) {
            Ok(target) => {
                opened.insert(datacenter.to_owned(), target.clone());
                Some(target)
            }
            Err(error) => {
                tracing::warn!(%datacenter, error = %plexus_runtime::ErrorChain(&error), "cannot reach a failover datacenter");
                None
            }
        }
    }
}

/// The datacenters `chain` fails `destination` over to, in order.
fn datacenters(chain: &ChainWatch, destination: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    if let Some(chain) = chain.borrow().as_ref() {
        for target in chain.value.targets.values() {
            if target.service != destination {
                continue;
            }
            for dc in &target.failover_datacenters {
                if !found.contains(dc) {
                    found.push(dc.clone());
                }
            }
        }
    }
    found
}

/// Whether a balanced target has an endpoint (waiting up to `timeout` for its first answer).
async fn has_endpoints(target: &Target, timeout: Duration) -> bool {
    let Target::Balanced { endpoints, .. } = target else {
        return true;
    };
    let mut endpoints = endpoints.clone();
    let _ = tokio::time::timeout(timeout, endpoints.wait_for(|set| set.is_resolved())).await;
    !endpoints.borrow().addrs.is_empty()
}

/// The target a new connection takes: `local` while it has endpoints, else the first failover
/// datacenter with gateways, else `local` (which then fails with no endpoints).
pub(crate) async fn choose(
    local: Target,
    chain: &ChainWatch,
    destination: &str,
    remotes: &Remotes,
    timeout: Duration,
) -> Target {
    if has_endpoints(&local, timeout).await {
        return local;
    }
    for datacenter in datacenters(chain, destination) {
        if let Some(remote) = remotes.get(&datacenter)
            && has_endpoints(&remote, timeout).await
        {
            debug!(upstream = destination, %datacenter, "no passing instance here; failing over");
            return remote;
        }
    }
    local
}

/// Wraps `local` so that it fails over when its chain names datacenters.
pub(crate) fn wrap(
    local: Target,
    chain: ChainWatch,
    destination: &str,
    remotes: Arc<Remotes>,
) -> Target {
    Target::Failover {
        local: Box::new(local),
        chain,
        destination: destination.to_owned(),
        remotes,
    }
}
