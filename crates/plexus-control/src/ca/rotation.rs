//! Root rotation as pure state transitions over time (Unix seconds), so they can be tested
//! exhaustively.
//!
//! ```text
//!   Stable { active: R1 } ──rotate(R2, now)──► active R2, retiring [(R1, until = now + longest leaf TTL + skew)]
//!        ▲                                                     │
//!        └──────────────── retire(now ≥ until) ◄───────────────┘
//! ```
//!
//! While a root is retiring it stays in `/v1/connect/ca/roots`, so leaves it signed keep
//! verifying; leaves of the new root carry the new root cross-signed by the old one, so peers
//! that have not yet seen the new root verify them too. A root retires only once every leaf it
//! can have signed has expired: `until` uses the longest leaf TTL ever configured
//! ([`RootSet::longest_leaf_ttl`]), so shortening the TTL never retires a root too early.

use serde::{Deserialize, Serialize};

/// Allowance for clocks that disagree between the CA and the sidecars.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The roots peers must trust, and which one signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSet {
    /// The root that signs new leaves.
    pub active: String,
    /// Previous roots still trusted, each until a Unix time.
    pub retiring: Vec<Retiring>,
    /// The longest leaf lifetime (seconds) any leaf can have been issued with.
    pub longest_leaf_ttl: u64,
}

/// A previous root, trusted until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    /// Root id.
    pub id: String,
    /// Unix seconds after which no leaf of this root is valid.
    pub until: u64,
}

impl RootSet {
    /// A fresh CA with one root.
    pub fn new(active: impl Into<String>, leaf_ttl: u64) -> Self {
        Self {
            active: active.into(),
            retiring: Vec::new(),
            longest_leaf_ttl: leaf_ttl,
        }
    }

    /// Every trusted root id, active first.
    pub fn trusted(&self) -> Vec<&str> {
        std::iter::once(self.active.as_str())
            .chain(self.retiring.iter().map(|r| r.id.as_str()))
            .collect()
    }

    /// The leaf TTL was configured to `leaf_ttl` seconds.
    pub fn leaf_ttl_changed(&self, leaf_ttl: u64) -> Self {
        let mut next = self.clone();
        next.longest_leaf_ttl = next.longest_leaf_ttl.max(leaf_ttl);
        next
    }

    /// `new_root` becomes active at `now`; the current one retires once its leaves expired.
    pub fn rotate(&self, new_root: impl Into<String>, now: u64) -> Self {
        let mut next = self.clone();
        let until = now
            .saturating_add(self.longest_leaf_ttl)
            .saturating_add(CLOCK_SKEW_SECS);
        next.retiring.push(Retiring {
            id: std::mem::replace(&mut next.active, new_root.into()),
            until,
        });
        next
    }

    /// Drops the roots whose leaves have all expired at `now`.
    pub fn retire(&self, now: u64) -> Self {
        let mut next = self.clone();
        next.retiring.retain(|r| r.until > now);
        next
    }

    /// When the next root retires, if any is retiring.
    pub fn next_retirement(&self) -> Option<u64> {
        self.retiring.iter().map(|r| r.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_rotation_keeps_the_old_root_until_its_leaves_expired() {
        let set = RootSet::new("r1", 120);
        let rotated = set.rotate("r2", 1000);
        assert_eq!(rotated.trusted(), ["r2", "r1"]);
        assert_eq!(
            rotated.next_retirement(),
            Some(1000 + 120 + CLOCK_SKEW_SECS)
        );
        assert_eq!(rotated.retire(1100).trusted(), ["r2", "r1"]);
        assert_eq!(
            rotated.retire(1000 + 120 + CLOCK_SKEW_SECS).trusted(),
            ["r2"]
        );
        // A TTL that was shortened still counts with its longest value.
        let shortened = set.leaf_ttl_changed(3600).leaf_ttl_changed(60);
        assert_eq!(shortened.longest_leaf_ttl, 3600);
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// Time passes by this many seconds.
        Tick(u64),
        /// A leaf is signed by the active root, with this TTL (≤ the configured one).
        Sign(u64),
        /// The TTL is reconfigured.
        Configure(u64),
        /// A new root.
        Rotate,
        /// Retirement runs.
        Retire,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (1u64..5000).prop_map(Event::Tick),
            (60u64..5000).prop_map(Event::Sign),
            (60u64..5000).prop_map(Event::Configure),
            Just(Event::Rotate),
            Just(Event::Retire),
        ]
    }

    proptest! {
        /// Whatever happens, the root of every unexpired leaf is trusted, and the active root
        /// is always trusted.
        #[test]
        fn unexpired_leaves_always_verify(events in proptest::collection::vec(event(), 0..60)) {
            let mut now = 1_000_000u64;
            let mut ttl = 300u64;
            let mut set = RootSet::new("r0", ttl);
            let mut roots = 0;
            let mut leaves: Vec<(String, u64)> = Vec::new(); // (root, expiry)
            for event in events {
                match event {
                    Event::Tick(secs) => now += secs,
                    Event::Sign(asked) => leaves.push((set.active.clone(), now + asked.min(ttl))),
                    Event::Configure(new) => { ttl = new; set = set.leaf_ttl_changed(new); }
                    Event::Rotate => { roots += 1; set = set.rotate(format!("r{roots}"), now); }
                    Event::Retire => set = set.retire(now),
                }
                let trusted = set.trusted();
                prop_assert_eq!(trusted[0], set.active.as_str());
                for (root, expiry) in &leaves {
                    if *expiry > now {
                        prop_assert!(trusted.contains(&root.as_str()), "{root} expired {expiry} now {now}");
                    }
                }
            }
        }

        /// Retiring is idempotent and never drops the active root.
        #[test]
        fn retire_is_idempotent(rotations in 0usize..5, at in 0u64..100_000) {
            let mut set = RootSet::new("r0", 600);
            for i in 0..rotations {
                set = set.rotate(format!("r{}", i + 1), (i as u64) * 1000);
            }
            let once = set.retire(at);
            prop_assert_eq!(once.retire(at), once.clone());
            prop_assert_eq!(once.active, set.active);
        }
    }
}
