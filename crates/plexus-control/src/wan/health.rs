//! Another datacenter's health answer for a service, read by this server for its own answers
//! (a prepared query's `Failover`, DNS names under another datacenter's label).

use plexus_api::ServiceEntry;
use plexus_api::acl::SecretId;

use super::Federation;

/// The instances of `service` in `dc` (its `sidecars` with `connect`; only those carrying `tag`),
/// from `dc`'s health API with `token` (`None`: that datacenter's default token), or why not.
pub async fn instances(
    federation: &Federation,
    dc: &str,
    service: &str,
    connect: bool,
    tag: Option<&str>,
    token: Option<&SecretId>,
) -> Result<Vec<ServiceEntry>, String> {
    let client = match federation.client_for(dc) {
        Some(Ok(client)) => client,
        Some(Err(error)) => return Err(error.to_string()),
        None => return Err("no server of it is known".to_owned()),
    };
    let kind = if connect { "connect" } else { "service" };
    // Service names and tags are validated names: nothing in them needs escaping, and anything
    // else is refused here rather than sent.
    let safe = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !safe(service) || tag.is_some_and(|t| !safe(t)) {
        return Err(format!("{service:?} is not a service name"));
    }
    let path = match tag {
        Some(tag) => format!("/v1/health/{kind}/{service}?tag={tag}"),
        None => format!("/v1/health/{kind}/{service}"),
    };
    let answer = client
        .forward(reqwest::Method::GET, &path, None, Vec::new(), token)
        .await
        .map_err(|e| plexus_runtime::ErrorChain(&e).to_string())?;
    if !answer.status().is_success() {
        return Err(format!("its health answer was {}", answer.status()));
    }
    answer
        .json::<Vec<ServiceEntry>>()
        .await
        .map_err(|e| format!("its health answer did not decode: {e}"))
}
