//! Decoding: bounded MsgPack parsing, then a field-by-field walk of the map.

use std::collections::BTreeMap;

use rmpv::Value;

use super::{EventEnvelope, Format, KEYS, MAX_ENVELOPE_BYTES};

/// Deepest nesting of maps and arrays the decoder follows.
const MAX_DEPTH: usize = 64;

/// Why bytes are not an envelope.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The input is larger than [`MAX_ENVELOPE_BYTES`].
    #[error("envelope of {0} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The bytes are not one complete MsgPack value.
    #[error("not valid MsgPack: {0}")]
    MsgPack(String),
    /// Bytes remain after the first value.
    #[error("{0} trailing bytes after the envelope")]
    Trailing(usize),
    /// The value is not a map.
    #[error("an envelope must be a MsgPack map")]
    NotAMap,
    /// A known key holds the wrong type.
    #[error("field {field:?}: expected {expected}")]
    Field {
        /// The key (as written, standard or compact).
        field: String,
        /// The expected type.
        expected: &'static str,
    },
}

pub(super) fn decode(bytes: &[u8]) -> Result<(EventEnvelope, Format), DecodeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| DecodeError::MsgPack(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::Trailing(reader.len()));
    }
    from_value(value)
}

pub(super) fn from_value(value: Value) -> Result<(EventEnvelope, Format), DecodeError> {
    let Value::Map(entries) = value else {
        return Err(DecodeError::NotAMap);
    };
    // Mercury's rule: the compact keys are all one character, the standard ones longer.
    let format = if entries
        .iter()
        .any(|(k, _)| k.as_str().is_some_and(|k| k.len() > 1))
    {
        Format::Standard
    } else {
        Format::Compact
    };
    let mut event = EventEnvelope {
        id: String::new(),
        ..EventEnvelope::default()
    };
    for (key, value) in entries {
        let Some(key) = key.as_str() else { continue };
        // Nil is the same as absent.
        if value.is_nil() {
            continue;
        }
        let Some(index) = KEYS
            .iter()
            .position(|(long, short)| key == *long || key == *short)
        else {
            continue;
        };
        let e = &mut event;
        match index {
            0 => e.id = text(key, value)?,
            1 => e.to = Some(text(key, value)?),
            2 => e.from = Some(text(key, value)?),
            3 => e.reply_to = Some(text(key, value)?),
            4 => e.trace_id = Some(text(key, value)?),
            5 => e.trace_path = Some(text(key, value)?),
            6 => e.span_id = Some(text(key, value)?),
            7 => e.cid = Some(text(key, value)?),
            8 => e.status = status(key, &value)?,
            9 => e.headers = map_of_text(key, value)?,
            10 => e.body = value,
            11 => e.tags = tags(key, value)?,
            12 => e.annotations = annotations(key, value)?,
            13 => e.exception = Some(binary(key, value)?),
            14 => e.stack = Some(text(key, value)?),
            15 => e.obj_type = Some(text(key, value)?),
            16 => e.exec_time = Some(float(key, &value)?),
            _ => e.round_trip = Some(float(key, &value)?),
        }
    }
    Ok((event, format))
}

fn wrong(field: &str, expected: &'static str) -> DecodeError {
    DecodeError::Field {
        field: field.to_owned(),
        expected,
    }
}

fn text(field: &str, value: Value) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => s.into_str().ok_or_else(|| wrong(field, "UTF-8 text")),
        _ => Err(wrong(field, "a string")),
    }
}

fn binary(field: &str, value: Value) -> Result<Vec<u8>, DecodeError> {
    match value {
        Value::Binary(b) => Ok(b),
        _ => Err(wrong(field, "binary (bin)")),
    }
}

/// An integer status; a numeric string is accepted too (Mercury reads the status as text).
fn status(field: &str, value: &Value) -> Result<u16, DecodeError> {
    let number = match value {
        Value::String(s) => s.as_str().and_then(|s| s.trim().parse::<u64>().ok()),
        other => other.as_u64(),
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (100..=999).contains(n))
        .ok_or_else(|| wrong(field, "an integer status from 100 to 999"))
}

/// A time in ms: float32, float64, an integer or a numeric string; negative values become 0.
fn float(field: &str, value: &Value) -> Result<f32, DecodeError> {
    #[allow(clippy::cast_possible_truncation)] // times in ms fit an f32
    let number = match value {
        Value::F32(f) => Some(*f),
        Value::F64(f) => Some(*f as f32),
        Value::Integer(i) => i.as_f64().map(|f| f as f32),
        Value::String(s) => s.as_str().and_then(|s| s.trim().parse::<f32>().ok()),
        _ => None,
    };
    number
        .filter(|f| f.is_finite())
        .map(|f| f.max(0.0))
        .ok_or_else(|| wrong(field, "a number"))
}

fn scalar_text(value: Value) -> Option<String> {
    match value {
        Value::String(s) => s.into_str(),
        Value::Integer(i) => Some(i.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::F32(f) => Some(f.to_string()),
        Value::F64(f) => Some(f.to_string()),
        Value::Nil => Some(String::new()),
        _ => None,
    }
}

fn map_of_text(field: &str, value: Value) -> Result<BTreeMap<String, String>, DecodeError> {
    let Value::Map(entries) = value else {
        return Err(wrong(field, "a map of strings"));
    };
    entries
        .into_iter()
        .map(|(k, v)| match (scalar_text(k), scalar_text(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(wrong(field, "a map of strings")),
        })
        .collect()
}

fn annotations(field: &str, value: Value) -> Result<BTreeMap<String, Value>, DecodeError> {
    let Value::Map(entries) = value else {
        return Err(wrong(field, "a map with string keys"));
    };
    entries
        .into_iter()
        .map(|(k, v)| {
            scalar_text(k)
                .map(|k| (k, v))
                .ok_or_else(|| wrong(field, "a map with string keys"))
        })
        .collect()
}

/// Tags: a map, or Mercury's compact text `k1=v1|k2|k3=v3`.
fn tags(field: &str, value: Value) -> Result<BTreeMap<String, String>, DecodeError> {
    if let Value::String(s) = &value {
        let text = s.as_str().ok_or_else(|| wrong(field, "UTF-8 text"))?;
        return Ok(text
            .split('|')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect());
    }
    map_of_text(field, value)
}
