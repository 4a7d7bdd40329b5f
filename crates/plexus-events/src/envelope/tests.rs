#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// MsgPack str of up to 31 bytes (fixstr).
fn s(text: &str) -> Vec<u8> {
    assert!(text.len() < 32);
    let mut out = vec![0xa0 | u8::try_from(text.len()).unwrap()];
    out.extend_from_slice(text.as_bytes());
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Compact form, written byte by byte from the published one-letter keys.
#[test]
fn decodes_compact_vector() {
    let bytes = cat(&[
        vec![0x8b], // fixmap, 11 entries
        s("0"),
        s("e1"),
        s("T"),
        s("hello.world"),
        s("R"),
        s("inbox@o1"),
        s("F"),
        s("hello.caller"),
        s("S"),
        vec![0xcc, 200],
        s("H"),
        cat(&[vec![0x81], s("k"), s("v")]),
        s("B"),
        s("hi"),
        s("t"),
        s("trace-1"),
        s("p"),
        s("GET /x"),
        s("X"),
        s("c1"),
        s("7"),
        s("a=1|b"),
    ]);
    let e = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(e.id, "e1");
    assert_eq!(e.to.as_deref(), Some("hello.world"));
    assert_eq!(e.reply_to.as_deref(), Some("inbox@o1"));
    assert_eq!(e.from.as_deref(), Some("hello.caller"));
    assert_eq!(e.status, 200);
    assert_eq!(e.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(e.body, Value::from("hi"));
    assert_eq!(e.trace_id.as_deref(), Some("trace-1"));
    assert_eq!(e.trace_path.as_deref(), Some("GET /x"));
    assert_eq!(e.cid.as_deref(), Some("c1"));
    assert_eq!(e.tags.get("a").map(String::as_str), Some("1"));
    assert_eq!(e.tags.get("b").map(String::as_str), Some(""));
}

/// Standard form with an error status and an unknown key, written byte by byte.
#[test]
fn decodes_standard_vector_ignoring_unknown_keys() {
    let bytes = cat(&[
        vec![0x86],
        s("id"),
        s("e2"),
        s("status"),
        vec![0xcd, 0x01, 0x94], // 404
        s("body"),
        s("route not found"),
        s("future_field"),
        vec![0x92, 0x01, 0x02],
        s("exec_time"),
        vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], // 1.5 as f64
        s("tags"),
        cat(&[vec![0x81], s("x"), vec![0x07]]),
    ]);
    let e = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(e.id, "e2");
    assert_eq!(e.status, 404);
    assert!(e.is_error());
    assert_eq!(e.error_message().as_deref(), Some("route not found"));
    assert_eq!(e.exec_time, Some(1.5));
    assert_eq!(e.tags.get("x").map(String::as_str), Some("7"));
}

#[test]
fn encodes_standard_keys() {
    let e = EventEnvelope {
        id: "e3".into(),
        to: Some("hello.world".into()),
        status: 200,
        body: Value::from(1),
        ..EventEnvelope::default()
    };
    let bytes = e.to_bytes();
    let expected = cat(&[
        vec![0x85],
        s("id"),
        s("e3"),
        s("to"),
        s("hello.world"),
        s("status"),
        vec![0xcc, 200],
        s("headers"), // always written, even when empty
        vec![0x80],
        s("body"),
        vec![0x01],
    ]);
    assert_eq!(bytes, expected);
    // The compact form leaves the empty headers out, like Mercury's Java encoder.
    let compact = cat(&[
        vec![0x84],
        s("0"),
        s("e3"),
        s("T"),
        s("hello.world"),
        s("S"),
        vec![0xcc, 200],
        s("B"),
        vec![0x01],
    ]);
    assert_eq!(e.to_bytes_as(Format::Compact), compact);
    assert_eq!(
        EventEnvelope::decode(&compact).unwrap(),
        (e.clone(), Format::Compact)
    );
    assert_eq!(
        EventEnvelope::decode(&bytes).unwrap(),
        (e, Format::Standard)
    );
}

#[test]
fn nil_is_absent_and_numbers_may_be_text() {
    let bytes = cat(&[
        vec![0x86],
        s("id"),
        s("e4"),
        s("to"),
        vec![0xc0],
        s("cid"),
        vec![0xc0],
        s("status"),
        s("404"),
        s("exec_time"),
        s("2.5"),
        s("headers"),
        vec![0xc0],
    ]);
    let e = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!((e.to, e.cid, e.status), (None, None, 404));
    assert_eq!(e.exec_time, Some(2.5));
    assert!(e.headers.is_empty());
}

#[test]
fn refuses_wrong_types_naming_the_field() {
    let bytes = cat(&[vec![0x81], s("status"), s("ok")]);
    let error = EventEnvelope::from_bytes(&bytes).unwrap_err();
    assert!(error.to_string().contains("\"status\""), "{error}");
    assert_eq!(
        EventEnvelope::from_bytes(&[0x91, 0x01]),
        Err(DecodeError::NotAMap)
    );
    assert!(matches!(
        EventEnvelope::from_bytes(&[0x82, 0xa1]),
        Err(DecodeError::MsgPack(_))
    ));
    assert_eq!(
        EventEnvelope::from_bytes(&[0x80, 0x00]),
        Err(DecodeError::Trailing(1))
    );
}

fn arb_text() -> impl Strategy<Value = String> {
    "[a-z0-9.@_-]{0,20}"
}

fn arb_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::from),
        arb_text().prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Binary),
        proptest::collection::btree_map(arb_text(), any::<i32>(), 0..3).prop_map(|m| {
            Value::Map(
                m.into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v)))
                    .collect(),
            )
        }),
    ]
}

fn arb_envelope() -> impl Strategy<Value = EventEnvelope> {
    let addressing = (
        arb_text(),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
    );
    let content = (
        100u16..=999,
        proptest::collection::btree_map(arb_text(), arb_text(), 0..4),
        arb_body(),
        proptest::collection::btree_map(arb_text(), arb_text(), 0..3),
        proptest::collection::btree_map(arb_text(), any::<bool>(), 0..3),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(0f32..1e6),
        proptest::option::of(0f32..1e6),
    );
    (addressing, content).prop_map(
        |(
            (id, to, from, reply_to, trace_id, trace_path, span_id, cid),
            (
                status,
                headers,
                body,
                tags,
                annotations,
                exception,
                stack,
                obj_type,
                exec_time,
                round_trip,
            ),
        )| EventEnvelope {
            id,
            to,
            from,
            reply_to,
            trace_id,
            trace_path,
            span_id,
            cid,
            status,
            headers,
            body,
            tags,
            annotations: annotations
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect(),
            exception,
            stack,
            obj_type,
            exec_time,
            round_trip,
        },
    )
}

proptest! {
    #[test]
    fn round_trips_in_both_forms(e in arb_envelope()) {
        let back = EventEnvelope::from_bytes(&e.to_bytes()).unwrap();
        prop_assert_eq!(&back, &e);
        let back = EventEnvelope::from_bytes(&e.to_bytes_as(Format::Compact)).unwrap();
        prop_assert_eq!(&back, &e);
        let back = EventEnvelope::from_json(&e.to_json()).unwrap();
        prop_assert_eq!(back.body.is_nil(), e.body.is_nil());
    }

    #[test]
    fn never_panics_on_arbitrary_msgpack_maps(
        entries in proptest::collection::vec(
            (prop_oneof![
                Just("id"), Just("to"), Just("status"), Just("S"), Just("headers"), Just("H"),
                Just("tags"), Just("7"), Just("annotations"), Just("exception"), Just("exec_time"),
                Just("1"), Just("body"), Just("x"),
            ], arb_body()),
            0..8,
        )
    ) {
        let map = Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &map).unwrap();
        let _ = EventEnvelope::from_bytes(&bytes);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = EventEnvelope::from_bytes(&bytes);
    }

    #[test]
    fn never_panics_on_truncated_envelopes(e in arb_envelope(), cut in 0usize..200) {
        let bytes = e.to_bytes();
        let cut = cut.min(bytes.len());
        let _ = EventEnvelope::from_bytes(&bytes[..cut]);
    }
}
