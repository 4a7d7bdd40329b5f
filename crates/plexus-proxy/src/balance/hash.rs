//! Consistent hashing: `ring_hash` ([`Ring`]) and `maglev` ([`Maglev`]), both keyed by a
//! request hash from [`hash_key`].
//!
//! Endpoints are identified by a stable string (e.g. `addr:port`); tables are rebuilt when the
//! endpoint set changes. Hashes are FNV-1a 64 mixed with splitmix64: stable across processes and
//! releases, so every sidecar maps a key to the same endpoint.

/// FNV-1a 64 of `bytes`, finalised with splitmix64.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash ring with a fixed number of virtual nodes per endpoint, so adding or removing one
/// endpoint moves only the keys that endpoint owns (or takes over).
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds a ring over `hosts` (indices into it are returned by [`Ring::pick`]) with
    /// `points_per_host` points each (at least 1). Keep it constant across rebuilds: e.g.
    /// `LoadBalancerPolicy::ring_size / 8` (128 by default).
    pub fn new<S: AsRef<str>>(hosts: &[S], points_per_host: u32) -> Self {
        let per_host = (points_per_host as usize).max(1);
        let mut points = Vec::with_capacity(per_host * hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            for v in 0..per_host {
                points.push((hash_key(format!("{}_{v}", h.as_ref()).as_bytes()), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint index for `hash`: the first point at or after it, wrapping.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(p, _)| *p < hash);
        Some(self.points[i % self.points.len()].1)
    }
}

/// A Maglev lookup table (prime size, default 65537).
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<usize>,
}

impl Maglev {
    /// Default table size.
    pub const DEFAULT_SIZE: usize = 65_537;

    /// Builds the table for `hosts` (`size` should be a prime larger than the host count).
    pub fn new<S: AsRef<str>>(hosts: &[S], size: usize) -> Self {
        let n = hosts.len();
        if n == 0 || size == 0 {
            return Self { table: Vec::new() };
        }
        let m = size as u64;
        let prefs: Vec<(u64, u64)> = hosts
            .iter()
            .map(|h| {
                let h = h.as_ref().as_bytes();
                let offset = hash_key(h) % m;
                let skip = mix(hash_key(h) ^ 0x5bd1_e995) % (m - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![usize::MAX; size];
        let mut filled = 0;
        'outer: loop {
            for i in 0..n {
                let (offset, skip) = prefs[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != usize::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'outer;
                }
            }
        }
        Self { table }
    }

    /// The endpoint index for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn ring_is_stable_under_unrelated_host_removal(n in 2usize..10, removed in 0usize..10, keys in proptest::collection::vec(any::<u64>(), 1..200)) {
            let all = hosts(n);
            let removed = removed % n;
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, h)| h.clone()).collect();
            let before = Ring::new(&all, 128);
            let after = Ring::new(&rest, 128);
            for k in keys {
                let b = before.pick(k).unwrap();
                if b != removed {
                    let a = &rest[after.pick(k).unwrap()];
                    prop_assert_eq!(a, &all[b]);
                }
            }
        }

        #[test]
        fn maglev_moves_few_keys_when_a_host_goes(n in 3usize..8, removed in 0usize..8) {
            let all = hosts(n);
            let removed = removed % n;
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, h)| h.clone()).collect();
            let before = Maglev::new(&all, 4099);
            let after = Maglev::new(&rest, 4099);
            let mut moved = 0;
            let keys = 2000u64;
            for k in 0..keys {
                let h = hash_key(&k.to_le_bytes());
                let b = before.pick(h).unwrap();
                let a = &rest[after.pick(h).unwrap()];
                if b != removed && a != &all[b] {
                    moved += 1;
                }
            }
            // Maglev is near-minimal: only a small share of unrelated keys move.
            prop_assert!(moved * 100 <= keys as usize * 15, "{} of {} moved", moved, keys);
        }
    }

    #[test]
    fn both_spread_keys_over_every_host() {
        let h = hosts(4);
        let ring = Ring::new(&h, 128);
        let maglev = Maglev::new(&h, Maglev::DEFAULT_SIZE);
        let mut rc = [0u32; 4];
        let mut mc = [0u32; 4];
        for k in 0..8000u64 {
            let key = hash_key(&k.to_le_bytes());
            rc[ring.pick(key).unwrap()] += 1;
            mc[maglev.pick(key).unwrap()] += 1;
        }
        assert!(rc.iter().all(|c| *c > 1200), "{rc:?}");
        assert!(mc.iter().all(|c| *c > 1800), "{mc:?}");
        assert_eq!(hash_key(b"user-1"), hash_key(b"user-1"));
        assert!(Ring::new::<String>(&[], 16).pick(1).is_none());
    }
}
