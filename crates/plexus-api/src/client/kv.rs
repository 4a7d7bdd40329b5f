//! Client calls for the KV store (`/v1/kv/*`).

use super::{Client, ClientError, QueryOptions, REQUEST_TIMEOUT, check_status, encode, encode_key};
use crate::catalog::Indexed;
use crate::kv::KvPair;

impl Client {
    /// `GET /v1/kv/:key`: one key, `None` when absent (the index is still the store's, so a
    /// blocking query can wait for the key to appear).
    pub async fn kv_get(
        &self,
        key: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Option<KvPair>>, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let found = self.get_optional::<Vec<KvPair>>(&path, query, &[]).await?;
        Ok(Indexed {
            index: found.index,
            value: found.value.and_then(|pairs| pairs.into_iter().next()),
        })
    }

    /// `GET /v1/kv/:prefix?recurse`: every key under `prefix` (empty when none).
    pub async fn kv_list(
        &self,
        prefix: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(prefix));
        let found = self
            .get_optional::<Vec<KvPair>>(&path, query, &["recurse"])
            .await?;
        Ok(Indexed {
            index: found.index,
            value: found.value.unwrap_or_default(),
        })
    }

    /// `GET /v1/kv/:prefix?keys[&separator=]`: key names under `prefix` (empty when none).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(prefix));
        let separator = separator.map(|s| format!("separator={}", encode(s)));
        let mut flags = vec!["keys"];
        if let Some(separator) = &separator {
            flags.push(separator);
        }
        match self
            .get::<Vec<String>>(&path, QueryOptions::default(), &flags)
            .await
        {
            Ok(keys) => Ok(keys.value),
            Err(ClientError::Status { status: 404, .. }) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// `PUT /v1/kv/:key[?flags=][&cas=]`: true when written (false: the `cas` did not hold).
    pub async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<bool, ClientError> {
        let mut path = format!("/v1/kv/{}?flags={flags}", encode_key(key));
        if let Some(cas) = cas {
            path.push_str(&format!("&cas={cas}"));
        }
        self.send_bool(reqwest::Method::PUT, &path, value).await
    }

    /// `DELETE /v1/kv/:key[?recurse][&cas=]`: true when deleted (false: the `cas` did not hold).
    pub async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<bool, ClientError> {
        let mut params = Vec::new();
        if recurse {
            params.push("recurse".to_owned());
        }
        if let Some(cas) = cas {
            params.push(format!("cas={cas}"));
        }
        let mut path = format!("/v1/kv/{}", encode_key(key));
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        self.send_bool(reqwest::Method::DELETE, &path, Vec::new())
            .await
    }

    pub(crate) async fn send_bool(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<bool, ClientError> {
        let method_name = if method == reqwest::Method::PUT {
            "PUT"
        } else {
            "DELETE"
        };
        let response = self
            .send(|base| {
                self.http
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(REQUEST_TIMEOUT)
                    .body(body.clone())
            })
            .await?;
        let response = check_status(method_name, path, response).await?;
        response.json().await.map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }
}
