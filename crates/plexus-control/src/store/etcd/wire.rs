//! etcd's v3 JSON gateway shapes (grpc-gateway: bytes are base64, 64-bit integers are strings,
//! false/zero/empty fields are left out).

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Base64 of raw bytes, as the gateway wants them.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes a base64 field; `None` when it is not base64.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`): the prefix with
/// its last byte below 0xff incremented; `\0` (everything) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A string-encoded (or plain) unsigned integer.
pub fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Text(String),
        Plain(u64),
    }
    match Num::deserialize(d)? {
        Num::Plain(n) => Ok(n),
        Num::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

/// A string-encoded signed integer (lease ids and TTLs may be negative: -1 means expired).
pub fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Text(String),
        Plain(i64),
    }
    match Num::deserialize(d)? {
        Num::Plain(n) => Ok(n),
        Num::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

/// Every response's header.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    /// The store revision the response reflects.
    #[serde(default, deserialize_with = "de_u64")]
    pub revision: u64,
    /// The member that answered.
    #[serde(default, deserialize_with = "de_u64")]
    pub member_id: u64,
}

/// A stored key.
#[derive(Debug, Clone, Deserialize)]
pub struct Kv {
    /// Base64 key.
    pub key: String,
    /// Base64 value (absent when empty).
    #[serde(default)]
    pub value: String,
    /// Creating revision.
    #[serde(default, deserialize_with = "de_u64")]
    pub create_revision: u64,
    /// Last modifying revision.
    #[serde(default, deserialize_with = "de_u64")]
    pub mod_revision: u64,
    /// The lease the key is bound to (0: none).
    #[serde(default, deserialize_with = "de_i64")]
    pub lease: i64,
}

/// `/v3/kv/range` answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeResponse {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// Keys (absent when none).
    #[serde(default)]
    pub kvs: Vec<Kv>,
}

/// `/v3/kv/txn` answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TxnResponse {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// True when the compares held (absent: false).
    #[serde(default)]
    pub succeeded: bool,
}

/// A response with only a header worth reading.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeaderOnly {
    /// Header.
    #[serde(default)]
    pub header: Header,
}

/// An error the gateway answers with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayError {
    /// etcd's message.
    #[serde(default)]
    pub error: String,
    /// gRPC status code.
    #[serde(default)]
    pub code: i32,
}

/// One message of a `/v3/watch` stream.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchMessage {
    /// The watch response (absent on a stream error).
    #[serde(default)]
    pub result: Option<WatchResult>,
    /// A stream-level error.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// A watch response.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchResult {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// The watch was created.
    #[serde(default)]
    pub created: bool,
    /// The watch was cancelled (e.g. its start revision was compacted).
    #[serde(default)]
    pub canceled: bool,
    /// When compacted: the oldest revision still available.
    #[serde(default, deserialize_with = "de_u64")]
    pub compact_revision: u64,
    /// Changes.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One change in a watch response.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// `PUT` (absent: the default) or `DELETE`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The key after the change (for deletes: key and mod_revision of the delete).
    pub kv: Kv,
}

/// `/v3/lease/grant` and `/v3/lease/keepalive` answers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LeaseResponse {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// The lease id.
    #[serde(default, rename = "ID", deserialize_with = "de_i64")]
    pub id: i64,
    /// Remaining TTL in seconds (0 or absent after keep-alive of an expired lease).
    #[serde(default, rename = "TTL", deserialize_with = "de_i64")]
    pub ttl: i64,
}

/// `/v3/lease/keepalive` answer (one message of the stream).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeepAliveMessage {
    /// The keep-alive response.
    #[serde(default)]
    pub result: Option<LeaseResponse>,
}

/// A member of the etcd cluster.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Member {
    /// Member id.
    #[serde(default, rename = "ID", deserialize_with = "de_u64")]
    pub id: u64,
    /// Member name.
    #[serde(default)]
    pub name: String,
    /// Client URLs.
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
}

/// `/v3/cluster/member/list` answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MemberList {
    /// Members.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// `/v3/maintenance/status` answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// etcd's version.
    #[serde(default)]
    pub version: String,
    /// The leader's member id.
    #[serde(default, deserialize_with = "de_u64")]
    pub leader: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn gateway_shapes_decode() {
        let text =
            r#"{"result":{"header":{"revision":"7"},"canceled":true,"compact_revision":"5"}}"#;
        let m: WatchMessage = serde_json::from_str(text).unwrap();
        let r = m.result.unwrap();
        assert!(r.canceled);
        assert_eq!((r.header.revision, r.compact_revision), (7, 5));
        let text = r#"{"header":{"revision":"2"}}"#;
        let t: TxnResponse = serde_json::from_str(text).unwrap();
        assert!(!t.succeeded);
        let text = r#"{"header":{"revision":"3"},"kvs":[{"key":"YQ==","create_revision":"2","mod_revision":"3","version":"2"}]}"#;
        let r: RangeResponse = serde_json::from_str(text).unwrap();
        assert_eq!(r.kvs[0].value, "");
        assert_eq!(r.kvs[0].mod_revision, 3);
    }
}
