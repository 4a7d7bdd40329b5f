//! Client calls for sessions (`/v1/session/*`) and KV locks (`?acquire=`, `?release=`).

use serde::Serialize;

use super::{Client, ClientError, encode, encode_key};

/// The body of `PUT /v1/session/create` (Consul's field names; empty fields are left out).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionCreate {
    /// Free-form name.
    #[serde(rename = "Name", skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The node (default: the server's own).
    #[serde(rename = "Node", skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// `release` or `delete`.
    #[serde(rename = "Behavior", skip_serializing_if = "String::is_empty")]
    pub behavior: String,
    /// A Go duration, e.g. `15s`.
    #[serde(rename = "TTL", skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    /// A Go duration, e.g. `15s`.
    #[serde(rename = "LockDelay", skip_serializing_if = "String::is_empty")]
    pub lock_delay: String,
}

#[derive(serde::Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl Client {
    /// `PUT /v1/session/create`: the new session's ID.
    pub async fn session_create(&self, body: &SessionCreate) -> Result<String, ClientError> {
        let created: Created = self.put_json("/v1/session/create", Some(body)).await?;
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/:id`: false when the session is gone (404).
    pub async fn session_renew(&self, id: &str) -> Result<bool, ClientError> {
        let path = format!("/v1/session/renew/{}", encode(id));
        match self.put_json::<(), serde_json::Value>(&path, None).await {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `PUT /v1/session/destroy/:id`.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/session/destroy/{}", encode(id));
        self.put_json::<(), serde_json::Value>(&path, None)
            .await
            .map(|_| ())
    }

    /// `PUT /v1/kv/:key?acquire=:session`: true when the session now holds the lock.
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: Vec<u8>,
        session: &str,
    ) -> Result<bool, ClientError> {
        let path = format!("/v1/kv/{}?acquire={}", encode_key(key), encode(session));
        self.send_bool(reqwest::Method::PUT, &path, value).await
    }

    /// `PUT /v1/kv/:key?release=:session`: true when the session held the lock and freed it.
    pub async fn kv_release(
        &self,
        key: &str,
        value: Vec<u8>,
        session: &str,
    ) -> Result<bool, ClientError> {
        let path = format!("/v1/kv/{}?release={}", encode_key(key), encode(session));
        self.send_bool(reqwest::Method::PUT, &path, value).await
    }
}
