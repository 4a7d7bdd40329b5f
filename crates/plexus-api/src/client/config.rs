//! Client calls for config entries (`/v1/config*`) and the compiled chain
//! (`/v1/discovery-chain/:service`).

use super::{Client, ClientError, QueryOptions, encode};
use crate::catalog::Indexed;
use crate::config_entry::chain::DiscoveryChain;
use crate::config_entry::{ConfigEntry, Kind};

impl Client {
    /// `PUT /v1/config[?cas=N]`: true when stored (false: the `cas` did not hold). An invalid
    /// entry is a [`ClientError::Status`] 400 naming the field.
    pub async fn config_write(
        &self,
        entry: &ConfigEntry,
        cas: Option<u64>,
    ) -> Result<bool, ClientError> {
        let path = match cas {
            Some(cas) => format!("/v1/config?cas={cas}"),
            None => "/v1/config".to_owned(),
        };
        self.put_json(&path, Some(entry)).await
    }

    /// `GET /v1/config/:kind/:name` (blocking with `query`).
    pub async fn config_read(
        &self,
        kind: Kind,
        name: &str,
        query: QueryOptions,
    ) -> Result<Indexed<ConfigEntry>, ClientError> {
        let path = format!("/v1/config/{}/{}", kind.as_str(), encode(name));
        self.get(&path, query, &[]).await
    }

    /// `GET /v1/config/:kind` (blocking with `query`).
    pub async fn config_list(
        &self,
        kind: Kind,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ConfigEntry>>, ClientError> {
        self.get(&format!("/v1/config/{}", kind.as_str()), query, &[])
            .await
    }

    /// `DELETE /v1/config/:kind/:name`.
    pub async fn config_delete(&self, kind: Kind, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/config/{}/{}", kind.as_str(), encode(name));
        self.send_bool(reqwest::Method::DELETE, &path, Vec::new())
            .await
            .map(|_| ())
    }

    /// `GET /v1/discovery-chain/:service` (blocking with `query`): the compiled chain a sidecar
    /// applies to calls to `service`.
    pub async fn discovery_chain(
        &self,
        service: &str,
        query: QueryOptions,
    ) -> Result<Indexed<DiscoveryChain>, ClientError> {
        self.get(
            &format!("/v1/discovery-chain/{}", encode(service)),
            query,
            &[],
        )
        .await
    }
}
