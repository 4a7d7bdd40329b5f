//! The language connector's frames: binary WebSocket messages, each one MsgPack map with a
//! `type`. Wire maps are turned into [`ClientFrame`] values here (errors name the field), and
//! [`ServerFrame`] values into maps; nothing else in the node sees MsgPack maps.
//!
//! | app → node | fields |
//! | --- | --- |
//! | `hello` | `protocol` (1), `app`, `token`? |
//! | `register` | `ref`, `route`, `workers`? (1–1000, default 10), `private`? (default false) |
//! | `unregister` | `ref`, `route` |
//! | `send`, `broadcast` | `ref`, `event` (bin: an encoded envelope) |
//! | `request` | `ref`, `event`, `timeout_ms`? (1–600000, default 10000) |
//! | `result` | `id` (of a `deliver`), `event` (the reply envelope) |
//!
//! | node → app | fields |
//! | --- | --- |
//! | `welcome` | `protocol`, `origin`, `app` (the node's), `max_frame_bytes`, `max_event_bytes`, `max_in_flight` |
//! | `ack` | `ref` |
//! | `reply` | `ref`, `event` |
//! | `error` | `ref`? (absent when the frame had none), `status`, `message` |
//! | `deliver` | `id`, `route`, `event` |
//!
//! `ref` is any string or integer the app chooses; the node echoes it. An `event` larger than a
//! frame is sent as several frames of the same type and `ref`/`id`, each carrying one segment
//! envelope (tags `_seg`, `_n`, `_of`: the brokers' segmentation).

use std::time::Duration;

use rmpv::Value;

/// The protocol version this node speaks.
pub const PROTOCOL: u64 = 1;
/// Default workers of a registered route.
pub const DEFAULT_WORKERS: usize = 10;
/// Most workers one route may ask for.
pub const MAX_WORKERS: usize = 1000;
/// Default timeout of a `request`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout of a `request`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// A frame's reference, chosen by the app and echoed by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// An integer reference.
    Int(i64),
    /// A text reference.
    Text(String),
}

impl Ref {
    fn to_value(&self) -> Value {
        match self {
            Self::Int(n) => Value::from(*n),
            Self::Text(t) => Value::from(t.as_str()),
        }
    }
}

/// A frame from the app.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// First frame: who the app is, its token.
    Hello {
        /// The app's name (logs, ownership messages).
        app: String,
        /// The token, when the node requires one.
        token: Option<String>,
    },
    /// Serve `route` from this connection.
    Register {
        /// Reference.
        reference: Ref,
        /// Route name.
        route: String,
        /// Concurrent deliveries (the route's bulkhead).
        workers: usize,
        /// Private: callable only through this node.
        private: bool,
    },
    /// Stop serving `route`.
    Unregister {
        /// Reference.
        reference: Ref,
        /// Route name.
        route: String,
    },
    /// Send, request or broadcast an event (or one segment of it).
    Call {
        /// Reference.
        reference: Ref,
        /// Which call.
        kind: CallKind,
        /// The encoded envelope (or segment).
        event: Vec<u8>,
    },
    /// The reply to a `deliver` (or one segment of it).
    Result {
        /// The delivery id.
        id: String,
        /// The encoded reply envelope (or segment).
        event: Vec<u8>,
    },
}

/// The calls an app makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Fire and forget.
    Send,
    /// Every instance serving the route.
    Broadcast,
    /// Wait for the reply, up to the timeout.
    Request(Duration),
}

/// A frame to the app.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The app is connected.
    Welcome {
        /// This node's origin (instance id).
        origin: String,
        /// This node's app name.
        app: String,
        /// Largest frame the node reads; larger events must be segmented.
        max_frame_bytes: usize,
        /// Largest event (after reassembly).
        max_event_bytes: usize,
        /// Most calls one connection may have waiting at once.
        max_in_flight: usize,
    },
    /// A command succeeded.
    Ack {
        /// Its reference.
        reference: Ref,
    },
    /// The reply to a `request` (or one segment of it).
    Reply {
        /// Its reference.
        reference: Ref,
        /// The encoded envelope.
        event: Vec<u8>,
    },
    /// A frame was refused.
    Error {
        /// Its reference, when it had one.
        reference: Option<Ref>,
        /// HTTP-style status.
        status: u16,
        /// Why.
        message: String,
    },
    /// An event for a route this connection serves (or one segment of it).
    Deliver {
        /// Delivery id, to answer with `result`.
        id: String,
        /// The route.
        route: String,
        /// The encoded envelope.
        event: Vec<u8>,
    },
}

/// Why a frame was refused: a status, the frame's reference when it could be read, a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// HTTP-style status.
    pub status: u16,
    /// The frame's `ref`, when it was readable.
    pub reference: Option<Ref>,
    /// What was wrong.
    pub message: String,
}

fn bad(reference: Option<Ref>, message: impl Into<String>) -> FrameError {
    FrameError {
        status: 400,
        reference,
        message: message.into(),
    }
}

/// The fields of one frame.
struct Fields {
    kind: String,
    entries: Vec<(Value, Value)>,
    reference: Option<Ref>,
}

impl Fields {
    fn get(&self, name: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil())
    }

    fn fail(&self, message: String) -> FrameError {
        bad(self.reference.clone(), message)
    }

    fn text(&self, name: &str) -> Result<String, FrameError> {
        match self.get(name) {
            Some(Value::String(s)) => s
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.fail(format!("{} frame: {name}: not UTF-8", self.kind))),
            Some(_) => Err(self.fail(format!("{} frame: {name}: expected a string", self.kind))),
            None => Err(self.fail(format!("{} frame: {name} is required", self.kind))),
        }
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, FrameError> {
        match self.get(name) {
            Some(Value::Binary(b)) => Ok(b.clone()),
            Some(_) => Err(self.fail(format!(
                "{} frame: {name}: expected binary (an encoded envelope)",
                self.kind
            ))),
            None => Err(self.fail(format!("{} frame: {name} is required", self.kind))),
        }
    }

    fn number(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, FrameError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    self.fail(format!(
                        "{} frame: {name}: expected an integer from {min} to {max}",
                        self.kind
                    ))
                }),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, FrameError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(self.fail(format!(
                "{} frame: {name}: expected true or false",
                self.kind
            ))),
        }
    }

    fn reference(&self) -> Result<Ref, FrameError> {
        self.reference
            .clone()
            .ok_or_else(|| self.fail(format!("{} frame: ref is required", self.kind)))
    }
}

fn read_ref(entries: &[(Value, Value)]) -> Option<Ref> {
    let value = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("ref"))
        .map(|(_, v)| v)?;
    match value {
        Value::Integer(i) => i.as_i64().map(Ref::Int),
        Value::String(s) => s.as_str().map(|s| Ref::Text(s.to_owned())),
        _ => None,
    }
}

/// Reads one frame. Nesting is bounded (frames hold envelopes as bytes, so they are shallow).
pub fn decode(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, 8)
        .map_err(|e| bad(None, format!("frame is not MsgPack: {e}")))?;
    if !reader.is_empty() {
        return Err(bad(
            None,
            format!("{} trailing bytes after the frame", reader.len()),
        ));
    }
    let Value::Map(entries) = value else {
        return Err(bad(None, "a frame must be a MsgPack map with a type"));
    };
    let reference = read_ref(&entries);
    let kind = match entries.iter().find(|(k, _)| k.as_str() == Some("type")) {
        Some((_, Value::String(s))) => s.as_str().unwrap_or_default().to_owned(),
        _ => return Err(bad(reference, "frame: type is required (a string)")),
    };
    let f = Fields {
        kind,
        entries,
        reference,
    };
    let call = |kind| -> Result<ClientFrame, FrameError> {
        Ok(ClientFrame::Call {
            reference: f.reference()?,
            kind,
            event: f.bytes("event")?,
        })
    };
    match f.kind.as_str() {
        "hello" => {
            let protocol = f.number("protocol", 0, u64::MAX)?;
            if protocol != Some(PROTOCOL) {
                return Err(f.fail(format!(
                    "hello frame: protocol: this node speaks protocol {PROTOCOL}, got {protocol:?}"
                )));
            }
            let app = f.text("app")?;
            if app.trim().is_empty() || app.len() > 128 {
                return Err(f.fail("hello frame: app: 1 to 128 characters".into()));
            }
            let token = match f.get("token") {
                None => None,
                Some(_) => Some(f.text("token")?),
            };
            Ok(ClientFrame::Hello { app, token })
        }
        "register" => Ok(ClientFrame::Register {
            reference: f.reference()?,
            route: f.text("route")?,
            workers: f
                .number("workers", 1, MAX_WORKERS as u64)?
                .map_or(DEFAULT_WORKERS, |n| usize::try_from(n).unwrap_or(MAX_WORKERS)),
            private: f.flag("private")?,
        }),
        "unregister" => Ok(ClientFrame::Unregister {
            reference: f.reference()?,
            route: f.text("route")?,
        }),
        "send" => call(CallKind::Send),
        "broadcast" => call(CallKind::Broadcast),
        "request" => {
            let max = u64::try_from(MAX_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            let timeout = f
                .number("timeout_ms", 1, max)?
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
            call(CallKind::Request(timeout))
        }
        "result" => Ok(ClientFrame::Result {
            id: f.text("id")?,
            event: f.bytes("event")?,
        }),
        other => Err(f.fail(format!(
            "unknown frame type {other:?}: expected hello, register, unregister, send, request, broadcast or result"
        ))),
    }
}

/// Writes one frame.
pub fn encode(frame: &ServerFrame) -> Vec<u8> {
    let entries: Vec<(&str, Value)> = match frame {
        ServerFrame::Welcome {
            origin,
            app,
            max_frame_bytes,
            max_event_bytes,
            max_in_flight,
        } => vec![
            ("type", Value::from("welcome")),
            ("protocol", Value::from(PROTOCOL)),
            ("origin", Value::from(origin.as_str())),
            ("app", Value::from(app.as_str())),
            ("max_frame_bytes", Value::from(*max_frame_bytes as u64)),
            ("max_event_bytes", Value::from(*max_event_bytes as u64)),
            ("max_in_flight", Value::from(*max_in_flight as u64)),
        ],
        ServerFrame::Ack { reference } => {
            vec![("type", Value::from("ack")), ("ref", reference.to_value())]
        }
        ServerFrame::Reply { reference, event } => vec![
            ("type", Value::from("reply")),
            ("ref", reference.to_value()),
            ("event", Value::Binary(event.clone())),
        ],
        ServerFrame::Error {
            reference,
            status,
            message,
        } => {
            let mut out = vec![("type", Value::from("error"))];
            if let Some(r) = reference {
                out.push(("ref", r.to_value()));
            }
            out.push(("status", Value::from(*status)));
            out.push(("message", Value::from(message.as_str())));
            out
        }
        ServerFrame::Deliver { id, route, event } => vec![
            ("type", Value::from("deliver")),
            ("id", Value::from(id.as_str())),
            ("route", Value::from(route.as_str())),
            ("event", Value::Binary(event.clone())),
        ],
    };
    let map = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    );
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &map);
    out
}

impl ServerFrame {
    /// The same frame carrying `event` instead (for segments); frames without an event are
    /// returned unchanged.
    pub fn with_event(&self, event: Vec<u8>) -> Self {
        match self {
            Self::Reply { reference, .. } => Self::Reply {
                reference: reference.clone(),
                event,
            },
            Self::Deliver { id, route, .. } => Self::Deliver {
                id: id.clone(),
                route: route.clone(),
                event,
            },
            other => other.clone(),
        }
    }

    /// The encoded envelope this frame carries, if any.
    pub fn event(&self) -> Option<&[u8]> {
        match self {
            Self::Reply { event, .. } | Self::Deliver { event, .. } => Some(event),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn frame(entries: &[(&str, Value)]) -> Vec<u8> {
        let map = Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        );
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &map).unwrap();
        out
    }

    #[test]
    fn reads_every_client_frame() {
        let hello = frame(&[
            ("type", "hello".into()),
            ("protocol", 1.into()),
            ("app", "py".into()),
            ("token", "t".into()),
        ]);
        assert_eq!(
            decode(&hello).unwrap(),
            ClientFrame::Hello {
                app: "py".into(),
                token: Some("t".into())
            }
        );
        let register = frame(&[
            ("type", "register".into()),
            ("ref", 7.into()),
            ("route", "a.b".into()),
            ("private", true.into()),
        ]);
        assert_eq!(
            decode(&register).unwrap(),
            ClientFrame::Register {
                reference: Ref::Int(7),
                route: "a.b".into(),
                workers: DEFAULT_WORKERS,
                private: true
            }
        );
        let request = frame(&[
            ("type", "request".into()),
            ("ref", "r1".into()),
            ("event", Value::Binary(vec![0x80])),
            ("timeout_ms", 250.into()),
        ]);
        assert_eq!(
            decode(&request).unwrap(),
            ClientFrame::Call {
                reference: Ref::Text("r1".into()),
                kind: CallKind::Request(Duration::from_millis(250)),
                event: vec![0x80]
            }
        );
    }

    #[test]
    fn refusals_name_the_field_and_keep_the_ref() {
        for (entries, expected) in [
            (
                vec![("type", Value::from("bogus")), ("ref", 1.into())],
                "unknown frame type \"bogus\"",
            ),
            (vec![("ref", 1.into())], "type is required"),
            (
                vec![("type", "register".into()), ("ref", 1.into())],
                "register frame: route is required",
            ),
            (
                vec![
                    ("type", "register".into()),
                    ("ref", 1.into()),
                    ("route", "a.b".into()),
                    ("workers", 0.into()),
                ],
                "workers: expected an integer from 1 to 1000",
            ),
            (
                vec![
                    ("type", "send".into()),
                    ("ref", 1.into()),
                    ("event", "text".into()),
                ],
                "event: expected binary",
            ),
            (
                vec![
                    ("type", "request".into()),
                    ("ref", 1.into()),
                    ("event", Value::Binary(vec![])),
                    ("timeout_ms", (-1).into()),
                ],
                "timeout_ms",
            ),
            (
                vec![
                    ("type", "hello".into()),
                    ("protocol", 9.into()),
                    ("app", "x".into()),
                ],
                "protocol 1",
            ),
        ] {
            let error = decode(&frame(&entries)).unwrap_err();
            assert!(
                error.message.contains(expected),
                "{} vs {expected}",
                error.message
            );
            assert_eq!(error.status, 400);
            if expected != "protocol 1" {
                assert_eq!(error.reference, Some(Ref::Int(1)), "{expected}");
            }
        }
        assert!(
            decode(b"\x82\xa1")
                .unwrap_err()
                .message
                .contains("not MsgPack")
        );
        assert!(
            decode(&[0x91, 0x01])
                .unwrap_err()
                .message
                .contains("MsgPack map")
        );
    }

    #[test]
    fn server_frames_are_maps_with_a_type() {
        let bytes = encode(&ServerFrame::Error {
            reference: Some(Ref::Text("x".into())),
            status: 409,
            message: "taken".into(),
        });
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(value["type"], Value::from("error"));
        assert_eq!(value["ref"], Value::from("x"));
        assert_eq!(value["status"], Value::from(409));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
