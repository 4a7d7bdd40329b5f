//! Client call for the compiled discovery chain (`/v1/discovery-chain/:service`).

use super::{Client, ClientError, QueryOptions, encode};
use crate::catalog::Indexed;
use crate::config_entry::chain::DiscoveryChain;

impl Client {
    /// `GET /v1/discovery-chain/:service`: the compiled chain a sidecar routes `service` by
    /// (blocking query on the config entries' index).
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
