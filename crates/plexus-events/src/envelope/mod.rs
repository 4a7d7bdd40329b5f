//! The event envelope and its MsgPack codec, wire-compatible with Mercury's `EventEnvelope`.
//!
//! On the wire an envelope is one MsgPack map with string keys, in one of two forms:
//!
//! | field | standard key | compact key | type |
//! | --- | --- | --- | --- |
//! | id | `id` | `0` | str (always written) |
//! | to | `to` | `T` | str |
//! | from | `from` | `F` | str |
//! | reply to | `reply_to` | `R` | str |
//! | trace id | `trace_id` | `t` | str |
//! | trace path | `trace_path` | `p` | str |
//! | span id | `span_id` | `s` | str |
//! | correlation id | `cid` | `X` | str |
//! | status | `status` | `S` | int (200 when absent) |
//! | headers | `headers` | `H` | map str → str (always written in the standard form) |
//! | body | `body` | `B` | any value (absent = nil) |
//! | tags | `tags` | `7` | map str → str (compact text `k=v\|k` also read) |
//! | annotations | `annotations` | `6` | map str → any |
//! | exception | `exception` | `4` | bin (language-native, carried opaquely) |
//! | stack | `stack` | `5` | str |
//! | payload type | `obj_type` | `O` | str |
//! | exec time | `exec_time` | `1` | float, ms |
//! | round trip | `round_trip` | `2` | float, ms |
//!
//! [`EventEnvelope::to_bytes`] writes the standard form, [`EventEnvelope::to_bytes_as`] either
//! form; [`EventEnvelope::decode`] reads both (keys of both may even be mixed) and says which form
//! the sender used ([`Format`]: standard as soon as one key is longer than one character, like
//! Mercury), so a reply can be written in the caller's form. Nil is the same as an absent field;
//! unknown keys are ignored; a known key with a value of the wrong type is an error naming the key.
//! [`json`] maps envelopes to and from JSON objects with the standard keys.
//!
//! A status of 400 or more marks an error; its message is the body (a string).

mod decode;
pub mod json;

use std::collections::BTreeMap;

use rmpv::Value;

pub use decode::DecodeError;

/// Largest envelope the codec decodes (bytes); larger inputs are refused before parsing.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024 * 1024;

/// The two key forms of an encoded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Descriptive keys (`id`, `reply_to`, …): the language-neutral form.
    #[default]
    Standard,
    /// One-character keys (`0`, `R`, …): Mercury's classic Java-to-Java form.
    Compact,
}

/// One event: addressing, tracing, status, headers and a MsgPack body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Unique event id.
    pub id: String,
    /// Destination: `route`, `route@origin` or an inbox `inbox.<key>@origin`.
    pub to: Option<String>,
    /// The route (or app) that sent the event.
    pub from: Option<String>,
    /// Where the reply goes (an inbox for an RPC).
    pub reply_to: Option<String>,
    /// Trace id, carried unchanged through every hop.
    pub trace_id: Option<String>,
    /// Trace path, e.g. `GET /api/hello`.
    pub trace_path: Option<String>,
    /// The sender's span id (the receiver's parent span).
    pub span_id: Option<String>,
    /// Business correlation id, preserved end to end: a reply carries its request's `cid`.
    pub cid: Option<String>,
    /// Status code; 200 when absent. 400 or more is an error.
    pub status: u16,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// The payload, any MsgPack value (`Nil` when absent).
    pub body: Value,
    /// Tags (string key-value pairs used by the platform itself, e.g. segmentation).
    pub tags: BTreeMap<String, String>,
    /// Trace annotations recorded by the sender.
    pub annotations: BTreeMap<String, Value>,
    /// A language-native serialised exception (Java's), carried but never interpreted.
    pub exception: Option<Vec<u8>>,
    /// Stack trace text: the portable error detail next to status and body.
    pub stack: Option<String>,
    /// Language-specific payload type hint (a Java class name); advisory only.
    pub obj_type: Option<String>,
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
            span_id: None,
            cid: None,
            status: 200,
            headers: BTreeMap::new(),
            body: Value::Nil,
            tags: BTreeMap::new(),
            annotations: BTreeMap::new(),
            exception: None,
            stack: None,
            obj_type: None,
            exec_time: None,
            round_trip: None,
        }
    }
}

/// A fresh event id (UUID v4 without dashes, like Mercury's).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Key of each field in the standard and the compact form, in writing order.
pub(crate) const KEYS: [(&str, &str); 18] = [
    ("id", "0"),
    ("to", "T"),
    ("from", "F"),
    ("reply_to", "R"),
    ("trace_id", "t"),
    ("trace_path", "p"),
    ("span_id", "s"),
    ("cid", "X"),
    ("status", "S"),
    ("headers", "H"),
    ("body", "B"),
    ("tags", "7"),
    ("annotations", "6"),
    ("exception", "4"),
    ("stack", "5"),
    ("obj_type", "O"),
    ("exec_time", "1"),
    ("round_trip", "2"),
];

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
        self.to_bytes_as(Format::Standard)
    }

    /// Encodes in `format`. The standard form always carries `headers` (an empty map when
    /// there are none), as Mercury's contract requires; the compact form leaves empty maps out,
    /// as Mercury's Java encoder does.
    pub fn to_bytes_as(&self, format: Format) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &self.to_value(format));
        out
    }

    /// The envelope as one MsgPack map in `format`.
    pub fn to_value(&self, format: Format) -> Value {
        let standard = format == Format::Standard;
        let mut map: Vec<(Value, Value)> = Vec::with_capacity(KEYS.len());
        let mut put = |index: usize, v: Value| {
            let (long, short) = KEYS[index];
            map.push((Value::from(if standard { long } else { short }), v));
        };
        put(0, Value::from(self.id.as_str()));
        for (index, value) in [
            (1, &self.to),
            (2, &self.from),
            (3, &self.reply_to),
            (4, &self.trace_id),
            (5, &self.trace_path),
            (6, &self.span_id),
            (7, &self.cid),
        ] {
            if let Some(v) = value {
                put(index, Value::from(v.as_str()));
            }
        }
        put(8, Value::from(self.status));
        if standard || !self.headers.is_empty() {
            put(9, string_map(&self.headers));
        }
        if !self.body.is_nil() {
            put(10, self.body.clone());
        }
        if !self.tags.is_empty() {
            put(11, string_map(&self.tags));
        }
        if !self.annotations.is_empty() {
            put(
                12,
                Value::Map(
                    self.annotations
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), v.clone()))
                        .collect(),
                ),
            );
        }
        if let Some(bytes) = &self.exception {
            put(13, Value::Binary(bytes.clone()));
        }
        if let Some(stack) = &self.stack {
            put(14, Value::from(stack.as_str()));
        }
        if let Some(kind) = &self.obj_type {
            put(15, Value::from(kind.as_str()));
        }
        if let Some(t) = self.exec_time {
            put(16, Value::F32(t.max(0.0)));
        }
        if let Some(t) = self.round_trip {
            put(17, Value::F32(t.max(0.0)));
        }
        Value::Map(map)
    }

    /// Decodes the standard or the compact form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes).map(|(event, _)| event)
    }

    /// Decodes the standard or the compact form and says which one the sender used.
    pub fn decode(bytes: &[u8]) -> Result<(Self, Format), DecodeError> {
        decode::decode(bytes)
    }

    /// Reads an envelope from an already decoded MsgPack map.
    pub fn from_value(value: Value) -> Result<(Self, Format), DecodeError> {
        decode::from_value(value)
    }
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
