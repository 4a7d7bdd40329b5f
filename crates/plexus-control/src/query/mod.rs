//! Consul's prepared queries (`/v1/query`): a stored, named health query that clients execute by
//! ID or name.
//!
//! ```text
//! POST   /v1/query                         create (query:write on Name) → {"ID"}
//! GET    /v1/query                         list (filtered by query:read)
//! GET    /v1/query/{id}                    one, as a list
//! PUT    /v1/query/{id}                    replace
//! DELETE /v1/query/{id}                    delete
//! GET    /v1/query/{id-or-name}/execute    healthy instances (`?limit=N`: at most N) → {Service, Nodes, DNS, Datacenter, Failovers}
//! GET    /v1/query/{id-or-name}/explain    the query that would run
//! ```
//!
//! A query is a store record `queries/<id>`. Execution reads the service's health answer and keeps
//! instances that are not critical (or, with `OnlyPassing`, passing), ignoring `IgnoreCheckIDs`,
//! carrying every `Tags` entry (`!tag`: not carrying it), and matching `NodeMeta` and
//! `ServiceMeta`; the order is shuffled, as Consul's is without `Near`. A token given in the
//! query is stored but read back as `<hidden>`. When no instance here passes, `Failover` runs the
//! query in other datacenters in turn ([`failover`]; `Datacenter` and `Failovers` say where it
//! was answered and how many were tried). Templates
//! (`name_prefix_match`) answer every name their `Name` prefixes; field names match
//! case-insensitively, as Consul's Go decoder does (py-consul sends lower case).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, decode_json, indexed_json, read_body};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::api::{ErrorChain, path_error};
use crate::store::{Compare, Op, Store, StoreError, Txn};

/// Store prefix of prepared queries.
pub const PREFIX: &str = "queries/";
/// What a stored token reads back as.
const HIDDEN: &str = "<hidden>";

/// A prepared query in Consul's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct PreparedQuery {
    /// UUID, chosen at create.
    #[serde(rename = "ID")]
    pub id: String,
    /// Unique name (may be empty: then only the ID finds it).
    pub name: String,
    /// A session the query lives as long as (stored; not enforced).
    pub session: String,
    /// The token the query executes with (stored; reads show `<hidden>`).
    pub token: String,
    /// What to look up.
    pub service: QueryService,
    /// DNS settings.
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    /// A template: the query answers every name its `Name` prefixes.
    pub template: QueryTemplate,
    /// The store revision that created it.
    pub create_index: u64,
    /// Last write.
    pub modify_index: u64,
}

/// The service part of a query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryService {
    /// Service name (required).
    pub service: String,
    /// Other datacenters to try when no instance here passes.
    pub failover: QueryFailover,
    /// Only instances whose checks all pass (otherwise: all but critical).
    pub only_passing: bool,
    /// Checks that do not count.
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Vec<String>,
    /// Sort near this node (`_agent`); accepted, no coordinates.
    pub near: String,
    /// Tags every instance must carry (`!tag`: must not carry).
    pub tags: Vec<String>,
    /// Node meta that must match.
    pub node_meta: BTreeMap<String, String>,
    /// Service meta that must match.
    pub service_meta: BTreeMap<String, String>,
    /// Namespace (always empty).
    pub namespace: String,
    /// Peer (always empty).
    pub peer: String,
    /// Connect: return the proxies of the service.
    pub connect: bool,
}

/// Failover targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryFailover {
    /// How many nearest datacenters to try.
    pub nearest_n: u32,
    /// Datacenters to try, in order.
    pub datacenters: Vec<String>,
}

/// A query template (`Type = "name_prefix_match"`): executing any name that starts with the
/// query's `Name` runs it, with `${name.full}`, `${name.prefix}`, `${name.suffix}` and
/// `${match(N)}` (groups of `Regexp` on the full name) replaced in the service and tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryTemplate {
    /// `""` (not a template) or `name_prefix_match`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Regular expression on the executed name, for `${match(N)}`.
    pub regexp: String,
    /// Drop tags that interpolated to nothing.
    pub remove_empty_tags: bool,
}

/// DNS settings of a query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryDns {
    /// TTL of answers (`10s`).
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// The answer to execute.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Executed {
    service: String,
    nodes: Vec<serde_json::Value>,
    #[serde(rename = "DNS")]
    dns: QueryDns,
    datacenter: String,
    failovers: u32,
}

/// What the handlers share: the queries and how they run.
type QueryState = Arc<Queries>;

/// The prepared-query routes (`queries.federation`: where `Failover` finds other datacenters).
pub fn router(queries: Arc<Queries>) -> Router {
    Router::new()
        .route("/v1/query", get(list).post(create))
        .route("/v1/query/{id}", get(read).put(update).delete(remove))
        .route("/v1/query/{id}/execute", get(execute))
        .route("/v1/query/{id}/explain", get(explain))
        .with_state(queries)
}

/// Field names of a query body in Consul's spelling: Consul decodes with Go's case-insensitive
/// matching, and py-consul sends `name`, `service`, `onlypassing`, `dns`, `template`.
const FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Session",
    "Token",
    "Service",
    "DNS",
    "Template",
    "CreateIndex",
    "ModifyIndex",
    "Failover",
    "OnlyPassing",
    "IgnoreCheckIDs",
    "Near",
    "Tags",
    "NodeMeta",
    "ServiceMeta",
    "Namespace",
    "Peer",
    "Connect",
    "NearestN",
    "Datacenters",
    "TTL",
    "Type",
    "Regexp",
    "RemoveEmptyTags",
];

/// Maps every object key (not the keys of the meta maps) onto [`FIELDS`]' spelling.
fn canonical(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let key = FIELDS
                        .iter()
                        .find(|f| f.eq_ignore_ascii_case(&key))
                        .map_or(key, |f| (*f).to_owned());
                    let value = if key == "NodeMeta" || key == "ServiceMeta" {
                        value
                    } else {
                        canonical(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        other => other,
    }
}

/// Decodes a query body, field names matched case-insensitively.
async fn body(request: Request) -> Result<PreparedQuery, ApiError> {
    let bytes = read_body(request).await?;
    let value: serde_json::Value = decode_json(&bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        ));
    }
    decode_json(canonical(value).to_string().as_bytes())
}

fn store_error(error: StoreError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "prepared query store operation failed");
    ApiError::unavailable("the prepared query store is unavailable")
}

/// Every stored query, with the store revision.
async fn all(store: &Arc<dyn Store>) -> Result<(Vec<PreparedQuery>, u64), ApiError> {
    let (records, revision) = store.range(PREFIX).await.map_err(store_error)?;
    let mut queries: Vec<PreparedQuery> = records
        .iter()
        .filter_map(|r| {
            let mut q: PreparedQuery = serde_json::from_slice(&r.value).ok()?;
            q.create_index = r.create_revision;
            q.modify_index = r.mod_revision;
            Some(q)
        })
        .collect();
    queries.sort_by_key(|q| q.create_index);
    Ok((queries, revision))
}

/// The query with this ID, or else this name, or else the template whose name is the longest
/// prefix of it (rendered for the name).
async fn find(store: &Arc<dyn Store>, id_or_name: &str) -> Result<PreparedQuery, ApiError> {
    let (queries, _) = all(store).await?;
    let exact = queries.iter().find(|q| q.id == id_or_name).or_else(|| {
        queries
            .iter()
            .find(|q| !q.name.is_empty() && q.name == id_or_name && q.template.kind.is_empty())
    });
    if let Some(query) = exact {
        return Ok(query.clone());
    }
    queries
        .iter()
        .filter(|q| !q.template.kind.is_empty() && id_or_name.starts_with(&q.name))
        .max_by_key(|q| q.name.len())
        .map(|q| render(q, id_or_name))
        .ok_or_else(|| ApiError::not_found(format!("no prepared query {id_or_name:?}")))
}

/// A template rendered for the executed `name`.
fn render(template: &PreparedQuery, name: &str) -> PreparedQuery {
    let suffix = name
        .strip_prefix(template.name.as_str())
        .unwrap_or_default();
    let groups: Vec<String> = regex::Regex::new(&template.template.regexp)
        .ok()
        .filter(|_| !template.template.regexp.is_empty())
        .and_then(|re| {
            re.captures(name).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| m.as_str().to_owned()).unwrap_or_default())
                    .collect()
            })
        })
        .unwrap_or_default();
    let fill = |text: &str| -> String {
        let mut out = text
            .replace("${name.full}", name)
            .replace("${name.prefix}", &template.name)
            .replace("${name.suffix}", suffix);
        for (i, group) in groups.iter().enumerate() {
            out = out.replace(&format!("${{match({i})}}"), group);
        }
        out
    };
    let mut query = template.clone();
    query.service.service = fill(&template.service.service);
    query.service.tags = template
        .service
        .tags
        .iter()
        .map(|t| fill(t))
        .filter(|t| !(template.template.remove_empty_tags && t.is_empty()))
        .collect();
    query
}

/// Checks a query before it is stored; `others` are the other stored queries.
fn validate(query: &PreparedQuery, others: &[PreparedQuery]) -> Result<(), ApiError> {
    if query.service.service.trim().is_empty() {
        return Err(ApiError::invalid_field(
            "Service.Service",
            "a prepared query needs the service to look up",
        ));
    }
    if !query.name.is_empty() {
        if others.iter().any(|q| q.name == query.name) {
            return Err(ApiError::invalid_field(
                "Name",
                format!("a prepared query named {:?} exists", query.name),
            ));
        }
        if others.iter().any(|q| q.id == query.name) {
            return Err(ApiError::invalid_field(
                "Name",
                "a name may not be another query's ID",
            ));
        }
    }
    if !query.dns.ttl.is_empty() && plexus_api::duration::GoDuration::parse(&query.dns.ttl).is_err()
    {
        return Err(ApiError::invalid_field(
            "DNS.TTL",
            format!("invalid duration {:?}", query.dns.ttl),
        ));
    }
    match query.template.kind.as_str() {
        "" => {}
        "name_prefix_match" => {
            if !query.template.regexp.is_empty()
                && let Err(e) = regex::Regex::new(&query.template.regexp)
            {
                return Err(ApiError::invalid_field(
                    "Template.Regexp",
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
        other => {
            return Err(ApiError::invalid_field(
                "Template.Type",
                format!("unknown template type {other:?}; expected name_prefix_match"),
            ));
        }
    }
    if query.service.tags.iter().any(|t| t.is_empty() || t == "!") {
        return Err(ApiError::invalid_field(
            "Service.Tags",
            "tags must not be empty",
        ));
    }
    Ok(())
}

/// A query as reads show it: the token hidden.
fn shown(mut query: PreparedQuery) -> PreparedQuery {
    if !query.token.is_empty() {
        query.token = HIDDEN.to_owned();
    }
    query
}

async fn list(
    State(state): State<QueryState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    query.block(state.store.revision_watch()).await;
    let (mut queries, revision) = all(&state.store).await?;
    let filtered = filter(&mut queries, |q| authz.can_read_query(&q.name));
    let queries: Vec<PreparedQuery> = queries.into_iter().map(shown).collect();
    let mut response = indexed_json(revision, &queries);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

async fn create(
    State(state): State<QueryState>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    let mut query = body(request).await?;
    authz.require_query_write(&query.name)?;
    let (others, _) = all(&state.store).await?;
    validate(&query, &others)?;
    query.id = crate::acl::new_uuid();
    query.create_index = 0;
    query.modify_index = 0;
    let key = format!("{PREFIX}{}", query.id);
    let result = state
        .store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision: 0,
            }],
            ops: vec![Op::Put {
                key,
                value: serde_json::to_vec(&query).unwrap_or_default(),
            }],
        })
        .await
        .map_err(store_error)?;
    tracing::info!(query = %query.id, name = %query.name, "prepared query created");
    Ok(indexed_json(
        result.revision,
        &serde_json::json!({ "ID": query.id }),
    ))
}

async fn read(
    State(state): State<QueryState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let (queries, revision) = all(&state.store).await?;
    let query = queries
        .into_iter()
        .find(|q| q.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no prepared query {id:?}")))?;
    authz.require_query_read(&query.name)?;
    Ok(indexed_json(revision, &[shown(query)]))
}

async fn update(
    State(state): State<QueryState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let mut query = body(request).await?;
    let (queries, _) = all(&state.store).await?;
    let Some(current) = queries.iter().find(|q| q.id == id) else {
        return Err(ApiError::not_found(format!("no prepared query {id:?}")));
    };
    authz.require_query_write(&current.name)?;
    authz.require_query_write(&query.name)?;
    if !query.id.is_empty() && query.id != id {
        return Err(ApiError::invalid_field(
            "ID",
            "the body's ID differs from the path's",
        ));
    }
    let others: Vec<PreparedQuery> = queries.iter().filter(|q| q.id != id).cloned().collect();
    validate(&query, &others)?;
    if query.token == HIDDEN {
        query.token = current.token.clone();
    }
    query.id = id.clone();
    query.create_index = 0;
    query.modify_index = 0;
    let result = state
        .store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: format!("{PREFIX}{id}"),
                value: serde_json::to_vec(&query).unwrap_or_default(),
            }],
        })
        .await
        .map_err(store_error)?;
    Ok(indexed_json(result.revision, &serde_json::Value::Null))
}

async fn remove(
    State(state): State<QueryState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let (queries, _) = all(&state.store).await?;
    let Some(current) = queries.iter().find(|q| q.id == id) else {
        return Err(ApiError::not_found(format!("no prepared query {id:?}")));
    };
    authz.require_query_write(&current.name)?;
    let result = state
        .store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Delete {
                key: format!("{PREFIX}{id}"),
            }],
        })
        .await
        .map_err(store_error)?;
    Ok(indexed_json(result.revision, &serde_json::Value::Null))
}

async fn explain(
    State(state): State<QueryState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let query = find(&state.store, &id).await?;
    authz.require_query_read(&query.name)?;
    Ok(indexed_json(
        0,
        &serde_json::json!({ "Query": shown(query) }),
    ))
}

async fn execute(
    State(state): State<QueryState>,
    authz: Authz,
    headers: axum::http::HeaderMap,
    params: plexus_runtime::http::QueryParams,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    // `?limit=N`: at most N instances (Consul's), after the shuffle.
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        None => usize::MAX,
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::invalid_field(
                "limit",
                format!("invalid limit {text:?}: expected a non-negative integer"),
            )
        })?,
    };
    let token = plexus_runtime::acl::token_of(&headers, None);
    let ran = state.run(&id, &authz, token.as_ref()).await?;
    let mut nodes: Vec<serde_json::Value> = ran
        .entries
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    nodes.shuffle(&mut rand::rng());
    nodes.truncate(limit);
    let executed = Executed {
        service: ran.query.service.service.clone(),
        nodes,
        dns: ran.query.dns.clone(),
        datacenter: ran.datacenter,
        failovers: ran.failovers,
    };
    Ok(indexed_json(ran.index, &executed))
}

mod failover;
mod run;

pub use run::{Queries, Ran};
#[cfg(test)]
mod tests;
