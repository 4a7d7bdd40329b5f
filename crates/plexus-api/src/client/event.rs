//! Client calls for user events (`/v1/event/*`).

use super::{Client, ClientError, encode};

/// Filters of a fired event (regular expressions; empty: none).
#[derive(Debug, Clone, Default)]
pub struct EventFilters {
    /// On node names.
    pub node: String,
    /// On service names.
    pub service: String,
    /// On tags (needs `service`).
    pub tag: String,
}

impl Client {
    /// `PUT /v1/event/fire/:name`: the event's ID.
    pub async fn event_fire(
        &self,
        name: &str,
        payload: Vec<u8>,
        filters: &EventFilters,
    ) -> Result<String, ClientError> {
        let mut params = Vec::new();
        for (key, value) in [
            ("node", &filters.node),
            ("service", &filters.service),
            ("tag", &filters.tag),
        ] {
            if !value.is_empty() {
                params.push(format!("{key}={}", encode(value)));
            }
        }
        let mut path = format!("/v1/event/fire/{}", encode(name));
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        let response = self
            .send(|base| {
                self.http
                    .put(format!("{base}{path}"))
                    .timeout(super::REQUEST_TIMEOUT)
                    .body(payload.clone())
            })
            .await?;
        let response = super::check_status("PUT", &path, response).await?;
        let event: serde_json::Value =
            response
                .json()
                .await
                .map_err(|source| ClientError::Decode {
                    path: path.clone(),
                    source,
                })?;
        Ok(event["ID"].as_str().unwrap_or_default().to_owned())
    }
}
