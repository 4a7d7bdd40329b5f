//! Envelope vectors written from Mercury's published wire-format description (see
//! `vectors/make_vectors.py`): every field, both key forms, nil fields, binary bodies. Each must
//! decode to the expected values, say which form it was in, and re-encode in both forms without
//! loss. The Python and Node clients run the same file.

#![allow(clippy::unwrap_used, missing_docs)]

use plexus_events::Value;
use plexus_events::envelope::{EventEnvelope, Format};
use serde_json::{Value as Json, json};

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A MsgPack value in the vectors' JSON notation (binary as `{"$bin": hex}`).
fn canonical(value: &Value) -> Json {
    match value {
        Value::Binary(b) => json!({ "$bin": hex(b) }),
        Value::Array(items) => Json::Array(items.iter().map(canonical).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), canonical(v)))
                .collect(),
        ),
        Value::F32(f) => json!(f64::from(*f)),
        other => plexus_events::envelope::json::to_json(other),
    }
}

/// The decoded envelope in the vectors' notation: absent and empty fields left out.
fn described(e: &EventEnvelope) -> Json {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), json!(e.id));
    for (key, value) in [
        ("to", &e.to),
        ("from", &e.from),
        ("reply_to", &e.reply_to),
        ("trace_id", &e.trace_id),
        ("trace_path", &e.trace_path),
        ("span_id", &e.span_id),
        ("cid", &e.cid),
        ("stack", &e.stack),
        ("obj_type", &e.obj_type),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), json!(v));
        }
    }
    out.insert("status".into(), json!(e.status));
    if !e.headers.is_empty() {
        out.insert("headers".into(), json!(e.headers));
    }
    if !e.body.is_nil() {
        out.insert("body".into(), canonical(&e.body));
    }
    if !e.tags.is_empty() {
        out.insert("tags".into(), json!(e.tags));
    }
    if !e.annotations.is_empty() {
        let map = e
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), canonical(v)))
            .collect();
        out.insert("annotations".into(), Json::Object(map));
    }
    if let Some(b) = &e.exception {
        out.insert("exception".into(), json!({ "$bin": hex(b) }));
    }
    for (key, value) in [("exec_time", e.exec_time), ("round_trip", e.round_trip)] {
        if let Some(v) = value {
            out.insert(key.into(), json!(f64::from(v)));
        }
    }
    Json::Object(out)
}

#[test]
fn every_vector_decodes_and_round_trips_in_both_forms() {
    let file: Json = serde_json::from_str(include_str!("vectors/envelope.json")).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 10);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let bytes = unhex(vector["msgpack"].as_str().unwrap());
        let (event, format) =
            EventEnvelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let form = match format {
            Format::Standard => "standard",
            Format::Compact => "compact",
        };
        assert_eq!(form, vector["form"], "{name}: detected form");
        assert_eq!(described(&event), vector["expected"], "{name}");
        for format in [Format::Standard, Format::Compact] {
            let again = event.to_bytes_as(format);
            let (back, detected) = EventEnvelope::decode(&again).unwrap();
            assert_eq!(back, event, "{name}: re-encoded as {format:?}");
            assert_eq!(detected, format, "{name}");
        }
        // The standard form always carries headers, even when empty.
        let standard = rmpv::decode::read_value(&mut &event.to_bytes()[..]).unwrap();
        let keys: Vec<&str> = standard
            .as_map()
            .unwrap()
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .collect();
        assert!(keys.contains(&"headers"), "{name}: {keys:?}");
    }
}
