//! Client calls for the CA and intentions (`/v1/connect/*`, `/v1/agent/connect/*`).

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Client, ClientError, QueryOptions, REQUEST_TIMEOUT, check_status, encode};
use crate::catalog::Indexed;
use crate::connect::{
    AuthorizeRequest, AuthorizeResponse, CaConfiguration, CaRoots, DefaultPolicy, Intention,
    IssuedCert, SignRequest,
};

/// Intentions with the server's default policy (from `X-Plexus-Default-Intention-Policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IntentionSet {
    /// The store index the list reflects.
    pub index: u64,
    /// The intentions.
    pub intentions: Vec<Intention>,
    /// The server's default policy; `None` when the server did not say.
    pub default_policy: Option<DefaultPolicy>,
}

impl Client {
    pub(super) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self
            .send(|base| {
                let request = self
                    .http
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(REQUEST_TIMEOUT);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        let name = match method {
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            _ => "GET",
        };
        check_status(name, path, response)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })
    }

    /// `GET /v1/connect/ca/roots` (blocking with `query`).
    pub async fn connect_ca_roots(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<CaRoots>, ClientError> {
        self.get("/v1/connect/ca/roots", query, &[]).await
    }

    /// `GET /v1/connect/ca/configuration`.
    pub async fn connect_ca_configuration(&self) -> Result<CaConfiguration, ClientError> {
        Ok(self
            .get("/v1/connect/ca/configuration", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/connect/ca/configuration`.
    pub async fn set_connect_ca_configuration(
        &self,
        config: &CaConfiguration,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(Method::PUT, "/v1/connect/ca/configuration", Some(config))
            .await
            .map(|_| ())
    }

    /// `POST /v1/connect/ca/rotate`: a new root; returns the roots after the rotation.
    pub async fn connect_ca_rotate(&self) -> Result<CaRoots, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/connect/ca/rotate", None)
            .await
    }

    /// `POST /v1/connect/ca/sign`.
    pub async fn connect_ca_sign(&self, request: &SignRequest) -> Result<IssuedCert, ClientError> {
        self.call(Method::POST, "/v1/connect/ca/sign", Some(request))
            .await
    }

    /// `POST /v1/internal/auto-encrypt/sign`: an agent's certificate (`auto_encrypt`).
    pub async fn auto_encrypt_sign(
        &self,
        request: &crate::auto_encrypt::SignRequest,
    ) -> Result<crate::auto_encrypt::SignResponse, ClientError> {
        self.call(Method::POST, crate::auto_encrypt::SIGN_PATH, Some(request))
            .await
    }

    /// `GET /v1/agent/connect/ca/leaf/:service`.
    pub async fn agent_connect_leaf(&self, service: &str) -> Result<IssuedCert, ClientError> {
        Ok(self
            .get(
                &format!("/v1/agent/connect/ca/leaf/{}", encode(service)),
                QueryOptions::default(),
                &[],
            )
            .await?
            .value)
    }

    /// `GET /v1/connect/intentions`.
    pub async fn intentions(&self) -> Result<Vec<Intention>, ClientError> {
        Ok(self
            .get("/v1/connect/intentions", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `POST /v1/connect/intentions`: returns the new intention's id.
    pub async fn create_intention(&self, intention: &Intention) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = self
            .call(Method::POST, "/v1/connect/intentions", Some(intention))
            .await?;
        Ok(created.id)
    }

    /// `GET /v1/connect/intentions/exact?source=&destination=`.
    pub async fn intention_exact(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<Intention, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!(
                "/v1/connect/intentions/exact?source={}&destination={}",
                encode(source),
                encode(destination)
            ),
            None,
        )
        .await
    }

    /// `DELETE /v1/connect/intentions/:id`.
    pub async fn delete_intention(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/connect/intentions/{}", encode(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// `GET /v1/connect/intentions/check?source=&destination=`: whether it is allowed.
    pub async fn intention_check(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<bool, ClientError> {
        #[derive(serde::Deserialize)]
        struct Checked {
            #[serde(rename = "Allowed")]
            allowed: bool,
        }
        let checked: Checked = self
            .call::<(), _>(
                Method::GET,
                &format!(
                    "/v1/connect/intentions/check?source={}&destination={}",
                    encode(source),
                    encode(destination)
                ),
                None,
            )
            .await?;
        Ok(checked.allowed)
    }

    /// `GET /v1/connect/intentions/match?by=destination&name=` (blocking with `query`), with
    /// the server's default policy.
    pub async fn intentions_for_destination(
        &self,
        destination: &str,
        query: QueryOptions,
    ) -> Result<IntentionSet, ClientError> {
        let path = format!(
            "/v1/connect/intentions/match?by=destination&name={}",
            encode(destination)
        );
        let (indexed, headers) = self
            .get_with_headers::<std::collections::BTreeMap<String, Vec<Intention>>>(&path, query)
            .await?;
        let default_policy = headers
            .get("x-plexus-default-intention-policy")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut by_name = indexed.value;
        Ok(IntentionSet {
            index: indexed.index,
            intentions: by_name.remove(destination).unwrap_or_default(),
            default_policy,
        })
    }

    /// `POST /v1/agent/connect/authorize`.
    pub async fn agent_connect_authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<AuthorizeResponse, ClientError> {
        self.call(Method::POST, "/v1/agent/connect/authorize", Some(request))
            .await
    }
}
