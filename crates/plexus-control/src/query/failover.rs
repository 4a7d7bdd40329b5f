//! A prepared query's `Failover`: when no instance here passes the query, the same query runs in
//! other datacenters, in order, and the first that has any answers. `NearestN` takes the first N
//! other datacenters this server knows (by name: Plexus has no network coordinates, so "nearest"
//! is the order `/v1/catalog/datacenters` lists them in), then `Datacenters` in the order given.
//!
//! The remote run reads the datacenter's health answer with the caller's token (tokens are per
//! datacenter, as with `?dc=`) and applies the query's conditions here, so a remote datacenter
//! needs nothing but its health API. A datacenter that cannot be reached counts as tried.

use super::QueryFailover;

/// The datacenters to try, in order, without this one or repeats.
pub(super) fn order(failover: &QueryFailover, known: &[String], own: &str) -> Vec<String> {
    let nearest = known
        .iter()
        .filter(|dc| *dc != own)
        .take(failover.nearest_n as usize);
    let mut out: Vec<String> = Vec::new();
    for dc in nearest.chain(failover.datacenters.iter()) {
        if dc != own && !out.contains(dc) {
            out.push(dc.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_first_then_the_named_ones_never_this_one_or_twice() {
        let known: Vec<String> = ["dc1", "dc2", "dc3", "dc4"].map(str::to_owned).to_vec();
        let failover = |n: u32, dcs: &[&str]| QueryFailover {
            nearest_n: n,
            datacenters: dcs.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(order(&failover(0, &[]), &known, "dc1").is_empty());
        assert_eq!(order(&failover(2, &[]), &known, "dc1"), ["dc2", "dc3"]);
        assert_eq!(
            order(&failover(9, &[]), &known, "dc3"),
            ["dc1", "dc2", "dc4"]
        );
        assert_eq!(
            order(&failover(1, &["dc4", "dc1", "dc2", "dc9"]), &known, "dc1"),
            ["dc2", "dc4", "dc9"],
            "a named datacenter nobody knows is still tried (and fails as unreachable)"
        );
    }
}
