//! Client calls for operators and proxies' acknowledgements (`/v1/operator/*`, `/v1/internal/proxy*`).

use super::{Client, ClientError, QueryOptions, encode};

impl Client {
    /// `GET /v1/operator/plexus`: servers, store and members, proxies' acknowledged revisions.
    pub async fn operator(&self) -> Result<crate::operator::OperatorView, ClientError> {
        Ok(self
            .get("/v1/operator/plexus", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/internal/proxy/:id/ack?revision=N`: this proxy applied configuration `revision`.
    pub async fn proxy_ack(&self, proxy_id: &str, revision: u64) -> Result<(), ClientError> {
        let path = format!(
            "/v1/internal/proxy/{}/ack?revision={revision}",
            encode(proxy_id)
        );
        self.send_put::<()>(&path, None).await
    }

    /// `PUT /v1/internal/proxies/xds`: what the Envoys served by this xDS server accepted or
    /// rejected, several proxies in one write.
    pub async fn proxies_xds_status(
        &self,
        statuses: &[crate::operator::ProxyAck],
    ) -> Result<(), ClientError> {
        self.send_put("/v1/internal/proxies/xds", Some(&statuses))
            .await
    }

    /// `PUT /v1/internal/proxy/:id/ack?revision=N&admin=ADDR`: this proxy applied configuration
    /// `revision`, and serves its metrics on `admin`.
    pub async fn proxy_ack_with_admin(
        &self,
        proxy_id: &str,
        revision: u64,
        admin: std::net::SocketAddr,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/v1/internal/proxy/{}/ack?revision={revision}&admin={}",
            encode(proxy_id),
            encode(&admin.to_string())
        );
        self.send_put::<()>(&path, None).await
    }
}
