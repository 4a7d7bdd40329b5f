//! A route's `PrefixRewrite`: the part of the path its match named is replaced before the
//! request goes upstream, as Consul does — with `PathPrefix` that prefix, with `PathExact` the
//! whole path, with no path criterion the leading `/`. A route matching by `PathRegex` keeps
//! the path (Consul requires a prefix or exact match for a rewrite). The query is kept.

use http::Uri;
use http::uri::PathAndQuery;
use plexus_api::config_entry::chain::{CompiledRoute, PathMatch};

/// The request's URI after the route's rewrite (`None`: unchanged).
pub(crate) fn prefix_rewrite(route: &CompiledRoute, uri: &Uri) -> Option<Uri> {
    let replacement = route.prefix_rewrite.as_deref()?;
    let path = uri.path();
    let matched = match &route.matcher.path {
        Some(PathMatch::Prefix(prefix)) => prefix.as_str(),
        Some(PathMatch::Exact(exact)) => exact.as_str(),
        Some(PathMatch::Regex(_)) => return None,
        None => "/",
    };
    let rest = path.strip_prefix(matched)?;
    let mut rewritten = format!("{replacement}{rest}");
    if rewritten.is_empty() {
        rewritten.push('/');
    }
    if let Some(query) = uri.query() {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(rewritten).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use plexus_api::config_entry::chain::{RequestMatch, RetryPolicy};

    use super::*;

    fn route(path: Option<PathMatch>, rewrite: &str) -> CompiledRoute {
        CompiledRoute {
            name: "r".into(),
            matcher: RequestMatch {
                path,
                ..RequestMatch::default()
            },
            splits: Vec::new(),
            prefix_rewrite: Some(rewrite.into()),
            request_timeout: None,
            idle_timeout: None,
            retry: RetryPolicy::default(),
        }
    }

    fn rewrite(route: &CompiledRoute, uri: &str) -> Option<String> {
        prefix_rewrite(route, &uri.parse().unwrap()).map(|uri| uri.to_string())
    }

    #[test]
    fn prefix_is_replaced_and_query_kept() {
        let r = route(Some(PathMatch::Prefix("/api/v1".into())), "/v1");
        assert_eq!(
            rewrite(&r, "http://web/api/v1/users?id=3").as_deref(),
            Some("http://web/v1/users?id=3")
        );
        let r = route(Some(PathMatch::Prefix("/old/".into())), "/");
        assert_eq!(rewrite(&r, "/old/x").as_deref(), Some("/x"));
        let r = route(Some(PathMatch::Prefix("/api".into())), "");
        assert_eq!(rewrite(&r, "/api").as_deref(), Some("/"));
    }

    #[test]
    fn exact_replaces_the_whole_path_and_regex_keeps_it() {
        let r = route(Some(PathMatch::Exact("/status".into())), "/health");
        assert_eq!(rewrite(&r, "/status").as_deref(), Some("/health"));
        let r = route(Some(PathMatch::Regex("/a.*".into())), "/b");
        assert_eq!(rewrite(&r, "/abc"), None);
        let r = route(None, "/root/");
        assert_eq!(rewrite(&r, "/x").as_deref(), Some("/root/x"));
    }
}
