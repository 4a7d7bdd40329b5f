//! Client calls for `/v1/acl/*` (what `plexus acl` runs) and the remote agent's token lookup.

use super::{Client, ClientError, QueryOptions, check_status, encode};
use crate::acl::SecretId;
use crate::acl::model::{Policy, PolicyWrite, ResolvedToken, Role, RoleWrite, Token, TokenWrite};

impl Client {
    /// `PUT /v1/acl/bootstrap`: the first management token (its SecretID included).
    pub async fn acl_bootstrap(&self) -> Result<Token, ClientError> {
        self.put_json::<(), _>("/v1/acl/bootstrap", None).await
    }

    /// `GET /v1/acl/token/self`: the token this client sends.
    pub async fn acl_token_self(&self) -> Result<Token, ClientError> {
        Ok(self
            .get("/v1/acl/token/self", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/acl/token`.
    pub async fn acl_token_create(&self, token: &TokenWrite) -> Result<Token, ClientError> {
        self.put_json("/v1/acl/token", Some(token)).await
    }

    /// `GET /v1/acl/token/:accessor`.
    pub async fn acl_token_read(&self, accessor_id: &str) -> Result<Token, ClientError> {
        let path = format!("/v1/acl/token/{}", encode(accessor_id));
        Ok(self.get(&path, QueryOptions::default(), &[]).await?.value)
    }

    /// `PUT /v1/acl/token/:accessor`.
    pub async fn acl_token_update(
        &self,
        accessor_id: &str,
        token: &TokenWrite,
    ) -> Result<Token, ClientError> {
        let path = format!("/v1/acl/token/{}", encode(accessor_id));
        self.put_json(&path, Some(token)).await
    }

    /// `DELETE /v1/acl/token/:accessor`.
    pub async fn acl_token_delete(&self, accessor_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/acl/token/{}", encode(accessor_id));
        self.send_bool(reqwest::Method::DELETE, &path, Vec::new())
            .await
            .map(|_| ())
    }

    /// `GET /v1/acl/tokens`.
    pub async fn acl_token_list(&self) -> Result<Vec<Token>, ClientError> {
        Ok(self
            .get("/v1/acl/tokens", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/acl/policy`.
    pub async fn acl_policy_create(&self, policy: &PolicyWrite) -> Result<Policy, ClientError> {
        self.put_json("/v1/acl/policy", Some(policy)).await
    }

    /// `GET /v1/acl/policy/:id`, or `/v1/acl/policy/name/:name` when `by_name`.
    pub async fn acl_policy_read(&self, id: &str, by_name: bool) -> Result<Policy, ClientError> {
        let path = if by_name {
            format!("/v1/acl/policy/name/{}", encode(id))
        } else {
            format!("/v1/acl/policy/{}", encode(id))
        };
        Ok(self.get(&path, QueryOptions::default(), &[]).await?.value)
    }

    /// `PUT /v1/acl/policy/:id`.
    pub async fn acl_policy_update(
        &self,
        id: &str,
        policy: &PolicyWrite,
    ) -> Result<Policy, ClientError> {
        let path = format!("/v1/acl/policy/{}", encode(id));
        self.put_json(&path, Some(policy)).await
    }

    /// `DELETE /v1/acl/policy/:id`.
    pub async fn acl_policy_delete(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/acl/policy/{}", encode(id));
        self.send_bool(reqwest::Method::DELETE, &path, Vec::new())
            .await
            .map(|_| ())
    }

    /// `GET /v1/acl/policies`.
    pub async fn acl_policy_list(&self) -> Result<Vec<Policy>, ClientError> {
        Ok(self
            .get("/v1/acl/policies", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/acl/role`.
    pub async fn acl_role_create(&self, role: &RoleWrite) -> Result<Role, ClientError> {
        self.put_json("/v1/acl/role", Some(role)).await
    }

    /// `GET /v1/acl/role/:id`, or `/v1/acl/role/name/:name` when `by_name`.
    pub async fn acl_role_read(&self, id: &str, by_name: bool) -> Result<Role, ClientError> {
        let path = if by_name {
            format!("/v1/acl/role/name/{}", encode(id))
        } else {
            format!("/v1/acl/role/{}", encode(id))
        };
        Ok(self.get(&path, QueryOptions::default(), &[]).await?.value)
    }

    /// `PUT /v1/acl/role/:id`.
    pub async fn acl_role_update(&self, id: &str, role: &RoleWrite) -> Result<Role, ClientError> {
        let path = format!("/v1/acl/role/{}", encode(id));
        self.put_json(&path, Some(role)).await
    }

    /// `DELETE /v1/acl/role/:id`.
    pub async fn acl_role_delete(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/acl/role/{}", encode(id));
        self.send_bool(reqwest::Method::DELETE, &path, Vec::new())
            .await
            .map(|_| ())
    }

    /// `GET /v1/acl/roles`.
    pub async fn acl_role_list(&self) -> Result<Vec<Role>, ClientError> {
        Ok(self
            .get("/v1/acl/roles", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET /v1/internal/acl/authorizer` with `token` (not this client's own): what that token
    /// may do, for an agent resolving its callers' tokens.
    pub async fn acl_resolve(
        &self,
        token: Option<&SecretId>,
    ) -> Result<ResolvedToken, ClientError> {
        const PATH: &str = "/v1/internal/acl/authorizer";
        let response = self
            .send_as(token, |base| {
                self.http
                    .get(format!("{base}{PATH}"))
                    .timeout(super::REQUEST_TIMEOUT)
            })
            .await?;
        let response = check_status("GET", PATH, response).await?;
        response.json().await.map_err(|source| ClientError::Decode {
            path: PATH.to_owned(),
            source,
        })
    }
}
