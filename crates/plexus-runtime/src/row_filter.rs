//! `?filter=` on list endpoints (catalog, health, agent): Consul's filter language
//! ([`plexus_api::filter`]) applied to each row of the answer, after the ACL filtering.

use plexus_api::filter::Filter;
use serde::Serialize;

use crate::http::{ApiError, QueryParams};

/// The request's `?filter=`, with every selector checked against `fields` (the rows' top-level
/// JSON names): 400 `invalid_field` (`filter`) naming the column of what is wrong.
pub fn from_params(params: &QueryParams, fields: &[String]) -> Result<Option<Filter>, ApiError> {
    let Some(text) = params.get("filter") else {
        return Ok(None);
    };
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    Filter::parse(text)
        .and_then(|filter| filter.check_fields(&fields).map(|()| filter))
        .map(Some)
        .map_err(|e| ApiError::invalid_field("filter", format!("invalid filter expression: {e}")))
}

/// Keeps the rows `filter` matches (all without one).
pub fn keep<T: Serialize>(rows: &mut Vec<T>, filter: Option<&Filter>) {
    if let Some(filter) = filter {
        rows.retain(|row| serde_json::to_value(row).is_ok_and(|value| filter.matches(&value)));
    }
}

/// The same for a map's values (`/v1/agent/services`, `/v1/agent/checks`).
pub fn keep_values<K: Ord, T: Serialize>(
    rows: &mut std::collections::BTreeMap<K, T>,
    filter: Option<&Filter>,
) {
    if let Some(filter) = filter {
        rows.retain(|_, row| serde_json::to_value(row).is_ok_and(|value| filter.matches(&value)));
    }
}

/// The request's `?node-meta=key:value`, or 400 naming `node-meta`.
pub fn node_meta(params: &QueryParams) -> Result<Option<(String, String)>, ApiError> {
    let Some(text) = params.get("node-meta") else {
        return Ok(None);
    };
    match text.split_once(':') {
        Some((key, value)) if !key.is_empty() => Ok(Some((key.to_owned(), value.to_owned()))),
        _ => Err(ApiError::invalid_field(
            "node-meta",
            format!("invalid node-meta {text:?}: expected key:value"),
        )),
    }
}

/// Keeps the rows whose node meta (the JSON object at `path`) has `key` = `value`.
pub fn keep_node_meta<T: Serialize>(
    rows: &mut Vec<T>,
    path: &[&str],
    wanted: Option<&(String, String)>,
) {
    if let Some((key, value)) = wanted {
        rows.retain(|row| {
            serde_json::to_value(row).is_ok_and(|row| {
                let meta = path.iter().fold(&row, |v, k| &v[*k]);
                meta[key.as_str()].as_str() == Some(value.as_str())
            })
        });
    }
}

/// `?near=` (any value): Plexus keeps no network coordinates, so rows are sorted by node name,
/// as the issue documents (Consul without coordinates leaves them in its own order).
pub fn sort_near<T: Serialize>(rows: &mut [T], params: &QueryParams, node: &[&str]) {
    if params.get("near").is_none() {
        return;
    }
    let name = |row: &T| -> String {
        serde_json::to_value(row)
            .ok()
            .and_then(|v| {
                node.iter()
                    .try_fold(&v, |v, k| v.get(*k))
                    .and_then(|n| n.as_str().map(str::to_owned))
            })
            .unwrap_or_default()
    };
    rows.sort_by_cached_key(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_a_400_naming_the_column() {
        let params = QueryParams::parse("filter=Service.Name%20%3D%3D");
        let error = from_params(&params, &["Service".to_owned()]).unwrap_err();
        let text = format!("{error:?}");
        assert!(
            text.contains("filter") && text.contains("column 16"),
            "{text}"
        );
        let params = QueryParams::parse("filter=Nope%20%3D%3D%20x");
        let error = from_params(&params, &["Service".to_owned()]).unwrap_err();
        assert!(format!("{error:?}").contains("unknown selector"));
        let mut rows = vec![
            serde_json::json!({"Service": "a"}),
            serde_json::json!({"Service": "b"}),
        ];
        let params = QueryParams::parse("filter=Service%20%3D%3D%20b");
        let filter = from_params(&params, &["Service".to_owned()]).unwrap();
        keep(&mut rows, filter.as_ref());
        assert_eq!(rows, [serde_json::json!({"Service": "b"})]);
        assert!(from_params(&QueryParams::parse(""), &[]).unwrap().is_none());
    }
}
