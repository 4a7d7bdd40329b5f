//! Topic-partition names and assignment: pure functions, no I/O.
//!
//! Topics are named like Mercury's: `multiplex.0001-000` … `multiplex.0001-031`, then
//! `multiplex.0002-000`: a Kafka topic (`multiplex.0001`) with [`PARTITIONS`] partitions, one per
//! app instance. The lowest free name is handed out, so released topics are reused.

use std::collections::BTreeSet;

/// Partitions per topic.
pub const PARTITIONS: u32 = 32;
/// Highest topic index handed out (a bound, not a goal).
pub const MAX_TOPICS: u32 = 9999 * PARTITIONS;

/// The name of the `index`th topic-partition.
pub fn topic_name(index: u32) -> String {
    format!(
        "multiplex.{:04}-{:03}",
        index / PARTITIONS + 1,
        index % PARTITIONS
    )
}

/// The index of a topic-partition name, or `None` when the name is not one.
pub fn topic_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("multiplex.")?;
    let (topic, partition) = rest.split_once('-')?;
    if topic.len() != 4 || partition.len() != 3 {
        return None;
    }
    let topic: u32 = topic.parse().ok()?;
    let partition: u32 = partition.parse().ok()?;
    if topic == 0 || partition >= PARTITIONS {
        return None;
    }
    let index = (topic - 1) * PARTITIONS + partition;
    (index < MAX_TOPICS).then_some(index)
}

/// The lowest topic-partition not in `taken`.
pub fn next_free(taken: &BTreeSet<String>) -> Option<String> {
    (0..MAX_TOPICS).map(topic_name).find(|t| !taken.contains(t))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names() {
        assert_eq!(topic_name(0), "multiplex.0001-000");
        assert_eq!(topic_name(31), "multiplex.0001-031");
        assert_eq!(topic_name(32), "multiplex.0002-000");
        for bad in [
            "multiplex.0001-032",
            "multiplex.0000-000",
            "x.0001-000",
            "multiplex.1-0",
            "multiplex.0001-00a",
        ] {
            assert_eq!(topic_index(bad), None, "{bad}");
        }
    }

    #[test]
    fn lowest_free_is_reused() {
        let mut taken: BTreeSet<String> = (0..3).map(topic_name).collect();
        assert_eq!(next_free(&taken).unwrap(), "multiplex.0001-003");
        taken.remove("multiplex.0001-001");
        assert_eq!(next_free(&taken).unwrap(), "multiplex.0001-001");
    }

    proptest! {
        #[test]
        fn names_round_trip(index in 0..MAX_TOPICS) {
            prop_assert_eq!(topic_index(&topic_name(index)), Some(index));
        }

        #[test]
        fn parse_never_panics(text in ".{0,30}") {
            let _ = topic_index(&text);
        }
    }
}
