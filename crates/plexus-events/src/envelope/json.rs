//! Envelopes as JSON objects with the standard keys (the compact keys are read too), for callers
//! that speak JSON (`POST /api/event` with `Content-Type: application/json`).
//!
//! MsgPack values map to JSON naturally; binary values (a binary body, `exception`) become base64
//! text, and a base64 `exception` is read back as binary. Map keys that are not strings are written
//! as their text; NaN and infinite floats become `null`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmpv::Value;
use serde_json::Value as Json;

use super::{DecodeError, EventEnvelope, Format};

/// A MsgPack value as JSON.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => {
            if let Some(n) = i.as_i64() {
                Json::from(n)
            } else if let Some(n) = i.as_u64() {
                Json::from(n)
            } else {
                Json::Null
            }
        }
        Value::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number)
        }
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.as_str().map_or_else(
            || String::from_utf8_lossy(s.as_bytes()).into_owned(),
            str::to_owned,
        )),
        Value::Binary(b) => Json::String(BASE64.encode(b)),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(..) => Json::Null,
    }
}

/// A JSON value as MsgPack.
pub fn from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or_default())
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        Json::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

impl EventEnvelope {
    /// The envelope as a JSON object with the standard keys.
    pub fn to_json(&self) -> Json {
        to_json(&self.to_value(Format::Standard))
    }

    /// Reads an envelope from a JSON object (standard or compact keys).
    pub fn from_json(json: &Json) -> Result<Self, DecodeError> {
        let mut value = from_json(json);
        if let Value::Map(entries) = &mut value {
            for (key, v) in entries.iter_mut() {
                if matches!(key.as_str(), Some("exception" | "4"))
                    && let Some(text) = v.as_str()
                {
                    let bytes = BASE64.decode(text).map_err(|_| DecodeError::Field {
                        field: key.as_str().unwrap_or_default().to_owned(),
                        expected: "base64 text",
                    })?;
                    *v = Value::Binary(bytes);
                }
            }
        }
        Self::from_value(value).map(|(event, _)| event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut e = EventEnvelope::to(
            "hello.world",
            Value::Map(vec![(Value::from("a"), Value::from(1))]),
        );
        e.cid = Some("c1".into());
        e.exception = Some(vec![0, 1, 2]);
        e.annotations.insert("k".into(), Value::from(true));
        e.exec_time = Some(1.5);
        let json = e.to_json();
        assert_eq!(json["headers"], serde_json::json!({}));
        assert_eq!(json["exception"], "AAEC");
        assert_eq!(EventEnvelope::from_json(&json).unwrap(), e);
    }

    #[test]
    fn json_errors_name_the_field() {
        let error = EventEnvelope::from_json(&serde_json::json!({"to": 5})).unwrap_err();
        assert!(error.to_string().contains("\"to\""), "{error}");
        let error = EventEnvelope::from_json(&serde_json::json!({"exception": "%%"})).unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
        assert_eq!(
            EventEnvelope::from_json(&serde_json::json!([1])),
            Err(DecodeError::NotAMap)
        );
    }
}
