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
        vec![0x84],
        s("id"),
        s("e3"),
        s("to"),
        s("hello.world"),
        s("status"),
        vec![0xcc, 200],
        s("body"),
        vec![0x01],
    ]);
    assert_eq!(bytes, expected);
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

fn arb_envelope() -> impl Strategy<Value = EventEnvelope> {
    (
        arb_text(),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        100u16..=999,
        proptest::collection::btree_map(arb_text(), arb_text(), 0..4),
        proptest::option::of(any::<i64>()),
        proptest::collection::btree_map(arb_text(), arb_text(), 0..3),
        proptest::option::of(0f32..1e6),
    )
        .prop_map(
            |(id, to, reply_to, trace_id, status, headers, body, tags, exec_time)| EventEnvelope {
                id,
                to,
                reply_to,
                trace_id,
                status,
                headers,
                body: body.map(Value::from).unwrap_or(Value::Nil),
                tags,
                exec_time,
                ..EventEnvelope::default()
            },
        )
}

proptest! {
    #[test]
    fn round_trips(e in arb_envelope()) {
        let back = EventEnvelope::from_bytes(&e.to_bytes()).unwrap();
        prop_assert_eq!(back, e);
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
