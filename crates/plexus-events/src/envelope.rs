//! The event envelope and its MsgPack codec.
//!
//! On the wire an envelope is one MsgPack map. [`EventEnvelope::to_bytes`] writes the
//! language-neutral "standard" form with descriptive keys (`id`, `to`, `from`, `reply_to`,
//! `trace_id`, `trace_path`, `cid`, `status`, `headers`, `body`, `tags`, `exec_time`,
//! `round_trip`); [`EventEnvelope::from_bytes`] reads that form and also the compact form whose keys
//! are one character (`0` id, `1` exec time, `2` round trip, `7` tags, `T` to, `R` reply to, `F`
//! from, `S` status, `H` headers, `B` body, `t` trace id, `p` trace path, `X` correlation id).
//! Unknown keys are ignored; a known key with a value of the wrong type is an error naming the key.
//!
//! A status of 400 or more marks an error; its message is the body (a string).

use std::collections::BTreeMap;

use rmpv::Value;

/// Largest envelope the codec decodes (bytes); larger inputs are refused before parsing.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024 * 1024;
/// Deepest nesting of maps and arrays the decoder follows.
const MAX_DEPTH: usize = 64;

/// One event: addressing, tracing, status, headers and a MsgPack body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Unique event id.
    pub id: String,
    /// Destination: `route`, `route@origin` or `inbox@origin`.
    pub to: Option<String>,
    /// The route (or app) that sent the event.
    pub from: Option<String>,
    /// Where the reply goes (`inbox@origin` for an RPC).
    pub reply_to: Option<String>,
    /// Trace id, carried unchanged through every hop.
    pub trace_id: Option<String>,
    /// Trace path, e.g. `GET /api/hello`.
    pub trace_path: Option<String>,
    /// Correlation id: a reply carries its request's `cid`.
    pub cid: Option<String>,
    /// Status code; 200 when absent. 400 or more is an error.
    pub status: u16,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// The payload, any MsgPack value (`Nil` when absent).
    pub body: Value,
    /// Tags (string key-value pairs used by the platform itself, e.g. segmentation).
    pub tags: BTreeMap<String, String>,
    /// How long the function took, in milliseconds.
    pub exec_time: Option<f32>,
    /// Round trip seen by the caller, in milliseconds.
    pub round_trip: Option<f32>,
}

impl Default for EventEnvelope {
    fn default() -> Self {
        Self {
            id: new_id(),
            to: None,
            from: None,
            reply_to: None,
            trace_id: None,
            trace_path: None,
            cid: None,
            status: 200,
            headers: BTreeMap::new(),
            body: Value::Nil,
            tags: BTreeMap::new(),
            exec_time: None,
            round_trip: None,
        }
    }
}

/// A fresh event id (UUID v4 without dashes, like Mercury's).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

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

impl EventEnvelope {
    /// A new event to `to` with `body`.
    pub fn to(to: impl Into<String>, body: impl Into<Value>) -> Self {
        Self {
            to: Some(to.into()),
            body: body.into(),
            ..Self::default()
        }
    }

    /// An error reply: `status` with `message` as the body.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Value::from(message.into()),
            ..Self::default()
        }
    }

    /// True when the status is 400 or more.
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }

    /// The error message of an error envelope (its body as text), if any.
    pub fn error_message(&self) -> Option<String> {
        if !self.is_error() {
            return None;
        }
        Some(match &self.body {
            Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
            Value::Nil => String::new(),
            other => other.to_string(),
        })
    }

    /// Sets a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Encodes the standard form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut map: Vec<(Value, Value)> = Vec::with_capacity(13);
        let mut put = |k: &str, v: Value| map.push((Value::from(k), v));
        put("id", Value::from(self.id.as_str()));
        for (key, value) in [
            ("to", &self.to),
            ("from", &self.from),
            ("reply_to", &self.reply_to),
            ("trace_id", &self.trace_id),
            ("trace_path", &self.trace_path),
            ("cid", &self.cid),
        ] {
            if let Some(v) = value {
                put(key, Value::from(v.as_str()));
            }
        }
        put("status", Value::from(self.status));
        if !self.headers.is_empty() {
            put("headers", string_map(&self.headers));
        }
        if !self.body.is_nil() {
            put("body", self.body.clone());
        }
        if !self.tags.is_empty() {
            put("tags", string_map(&self.tags));
        }
        if let Some(t) = self.exec_time {
            put("exec_time", Value::F32(t));
        }
        if let Some(t) = self.round_trip {
            put("round_trip", Value::F32(t));
        }
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &Value::Map(map));
        out
    }

    /// Decodes the standard or the compact form (keys of both may even be mixed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut reader = bytes;
        let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
            .map_err(|e| DecodeError::MsgPack(e.to_string()))?;
        if !reader.is_empty() {
            return Err(DecodeError::Trailing(reader.len()));
        }
        let Value::Map(entries) = value else {
            return Err(DecodeError::NotAMap);
        };
        let mut event = EventEnvelope {
            id: String::new(),
            ..Self::default()
        };
        for (key, value) in entries {
            let Some(key) = key.as_str() else { continue };
            match key {
                "id" | "0" => event.id = text(key, value)?,
                "to" | "T" => event.to = Some(text(key, value)?),
                "from" | "F" => event.from = Some(text(key, value)?),
                "reply_to" | "R" => event.reply_to = Some(text(key, value)?),
                "trace_id" | "t" => event.trace_id = Some(text(key, value)?),
                "trace_path" | "p" => event.trace_path = Some(text(key, value)?),
                "cid" | "X" => event.cid = Some(text(key, value)?),
                "status" | "S" => event.status = status(key, &value)?,
                "headers" | "H" => event.headers = map_of_text(key, value)?,
                "body" | "B" => event.body = value,
                "tags" | "7" => event.tags = tags(key, value)?,
                "exec_time" | "1" => event.exec_time = Some(float(key, &value)?),
                "round_trip" | "2" => event.round_trip = Some(float(key, &value)?),
                _ => {}
            }
        }
        Ok(event)
    }
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    )
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

fn status(field: &str, value: &Value) -> Result<u16, DecodeError> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (100..=999).contains(n))
        .ok_or_else(|| wrong(field, "an integer status from 100 to 999"))
}

fn float(field: &str, value: &Value) -> Result<f32, DecodeError> {
    match value {
        Value::F32(f) => Ok(*f),
        #[allow(clippy::cast_possible_truncation)] // times in ms fit an f32
        Value::F64(f) => Ok(*f as f32),
        #[allow(clippy::cast_precision_loss)]
        Value::Integer(i) => i
            .as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| wrong(field, "a number")),
        _ => Err(wrong(field, "a number")),
    }
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

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
