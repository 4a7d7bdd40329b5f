//! Segmentation of envelopes larger than the broker's message limit, and their reassembly.
//!
//! A segment is itself an envelope whose tags say which event it belongs to and where it goes
//! (`_seg` id, `_n` index, `_of` count) and whose body is a binary chunk of the original encoded
//! envelope. Brokers only ever see envelopes within their limit, and any Mercury-style peer can
//! read the framing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rmpv::Value;

use crate::envelope::{EventEnvelope, MAX_ENVELOPE_BYTES, new_id};

/// Room left in each segment for the envelope around the chunk.
const SEGMENT_OVERHEAD: usize = 256;
/// How long a partly received event is kept.
const REASSEMBLY_TTL: Duration = Duration::from_secs(60);
/// At most this many events are being reassembled at once; older ones are dropped.
const MAX_PENDING: usize = 256;

/// Splits an encoded envelope into encoded segments of at most `max_payload` bytes each; returns
/// the input unchanged (one item) when it fits.
pub fn split(encoded: Vec<u8>, max_payload: usize) -> Vec<Vec<u8>> {
    if encoded.len() <= max_payload {
        return vec![encoded];
    }
    let chunk = max_payload.saturating_sub(SEGMENT_OVERHEAD).max(1);
    let count = encoded.len().div_ceil(chunk);
    let id = new_id();
    encoded
        .chunks(chunk)
        .enumerate()
        .map(|(n, part)| {
            let mut segment = EventEnvelope {
                body: Value::Binary(part.to_vec()),
                ..EventEnvelope::default()
            };
            segment.tags.insert("_seg".into(), id.clone());
            segment.tags.insert("_n".into(), n.to_string());
            segment.tags.insert("_of".into(), count.to_string());
            segment.to_bytes()
        })
        .collect()
}

/// Why a segment was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    /// Tags or body do not describe a valid segment.
    #[error("malformed segment: {0}")]
    Malformed(&'static str),
    /// The reassembled event would exceed the envelope size limit.
    #[error("segmented event exceeds {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
}

struct Pending {
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    started: Instant,
}

/// Collects segments until an event is complete.
pub struct Reassembler {
    pending: HashMap<String, Pending>,
    max_event: usize,
    max_total: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::with_limits(MAX_ENVELOPE_BYTES, 8 * MAX_ENVELOPE_BYTES)
    }
}

impl Reassembler {
    /// A reassembler holding events of at most `max_event` bytes, and at most `max_total` bytes
    /// of partly received events at once (the oldest are dropped first).
    pub fn with_limits(max_event: usize, max_total: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max_event: max_event.min(MAX_ENVELOPE_BYTES),
            max_total,
        }
    }

    /// True when `event` is a segment.
    pub fn is_segment(event: &EventEnvelope) -> bool {
        event.tags.contains_key("_seg")
    }

    /// Adds a segment; returns the complete encoded event once every part arrived.
    pub fn add(
        &mut self,
        segment: EventEnvelope,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, SegmentError> {
        self.pending
            .retain(|_, p| now.duration_since(p.started) < REASSEMBLY_TTL);
        let id = segment
            .tags
            .get("_seg")
            .cloned()
            .ok_or(SegmentError::Malformed("no _seg tag"))?;
        let n: usize = tag_number(&segment, "_n")?;
        let of: usize = tag_number(&segment, "_of")?;
        if of == 0 || n >= of || of > self.max_event {
            return Err(SegmentError::Malformed("index out of range"));
        }
        let Value::Binary(part) = segment.body else {
            return Err(SegmentError::Malformed("body is not binary"));
        };
        while (self.pending.len() >= MAX_PENDING
            || self.pending.values().map(|p| p.bytes).sum::<usize>() + part.len() > self.max_total)
            && !self.pending.contains_key(&id)
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
        {
            self.pending.remove(&oldest);
        }
        let entry = self.pending.entry(id.clone()).or_insert_with(|| Pending {
            parts: Vec::new(),
            received: 0,
            bytes: 0,
            started: now,
        });
        if entry.parts.is_empty() {
            entry.parts = vec![None; of.min(self.max_event / SEGMENT_OVERHEAD + 1)];
        }
        if entry.parts.len() != of {
            self.pending.remove(&id);
            return Err(SegmentError::Malformed("segment count changed"));
        }
        if entry.parts[n].is_none() {
            entry.bytes += part.len();
            entry.received += 1;
            entry.parts[n] = Some(part);
        }
        if entry.bytes > self.max_event {
            self.pending.remove(&id);
            return Err(SegmentError::TooLarge);
        }
        if entry.received < of {
            return Ok(None);
        }
        let done = self
            .pending
            .remove(&id)
            .map(|p| p.parts.into_iter().flatten().flatten().collect::<Vec<u8>>());
        Ok(done)
    }
}

fn tag_number(segment: &EventEnvelope, tag: &'static str) -> Result<usize, SegmentError> {
    segment
        .tags
        .get(tag)
        .and_then(|v| v.parse().ok())
        .ok_or(SegmentError::Malformed("missing or non-numeric index tag"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splits_and_reassembles_out_of_order() {
        let big = EventEnvelope::to("hello.world", Value::Binary(vec![7u8; 10_000]));
        let encoded = big.to_bytes();
        let mut parts = split(encoded.clone(), 1024);
        assert!(parts.len() > 10);
        assert!(parts.iter().all(|p| p.len() <= 1024));
        parts.reverse();
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut out = None;
        for p in parts {
            let seg = EventEnvelope::from_bytes(&p).unwrap();
            assert!(Reassembler::is_segment(&seg));
            out = r.add(seg, now).unwrap();
        }
        assert_eq!(out.unwrap(), encoded);
    }

    #[test]
    fn small_events_are_not_split() {
        let e = EventEnvelope::to("a.b", 1).to_bytes();
        assert_eq!(split(e.clone(), 1024), vec![e]);
    }

    #[test]
    fn limits_bound_one_event_and_all_pending_bytes() {
        let big = EventEnvelope::to("a.b", Value::Binary(vec![1u8; 5000])).to_bytes();
        let parts = split(big, 1024);
        let mut r = Reassembler::with_limits(4000, 100_000);
        let now = Instant::now();
        let outcome: Vec<_> = parts
            .into_iter()
            .map(|p| r.add(EventEnvelope::from_bytes(&p).unwrap(), now))
            .collect();
        assert!(
            outcome.contains(&Err(SegmentError::TooLarge)),
            "{outcome:?}"
        );
        // Many partial events: the total stays under the bound.
        let mut r = Reassembler::with_limits(100_000, 10_000);
        for _ in 0..20 {
            let parts = split(
                EventEnvelope::to("a.b", Value::Binary(vec![2u8; 3000])).to_bytes(),
                1024,
            );
            let first = EventEnvelope::from_bytes(&parts[0]).unwrap();
            assert_eq!(r.add(first, now), Ok(None));
        }
        assert!(r.pending.values().map(|p| p.bytes).sum::<usize>() <= 10_000);
    }

    #[test]
    fn malformed_segments_are_refused() {
        let mut r = Reassembler::default();
        let mut seg = EventEnvelope::default();
        seg.tags.insert("_seg".into(), "x".into());
        seg.tags.insert("_n".into(), "3".into());
        seg.tags.insert("_of".into(), "2".into());
        seg.body = Value::Binary(vec![1]);
        assert!(r.add(seg.clone(), Instant::now()).is_err());
        seg.tags.insert("_n".into(), "0".into());
        seg.body = Value::from("text");
        assert!(r.add(seg, Instant::now()).is_err());
    }
}
