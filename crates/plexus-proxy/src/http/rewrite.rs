//! A route's `PrefixRewrite`: the part of the path its match named is replaced before the
//! request goes upstream, as Consul does — with `PathPrefix` that prefix, with `PathExact` the
//! whole path, with no path criterion the leading `/`. A route matching by `PathRegex` keeps
//! the path (Consul requires a prefix or exact match for a rewrite). The query is kept.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use plexus_api::config_entry::chain::{CompiledRoute, PathMatch};
use tower::{Layer, Service};

use super::stack::{AnswerFuture, HttpService};
use super::{Body, HttpError};

/// A route's rewrite: the part of the path it matched and what replaces it (set by the route
/// layer for routes with a `PrefixRewrite`).
#[derive(Debug, Clone)]
pub(crate) struct PrefixRewrite(Arc<(String, String)>);

impl PrefixRewrite {
    /// The rewrite of `route` (`None`: it has none, or matches by regex).
    pub(crate) fn of(route: &CompiledRoute) -> Option<Self> {
        let replacement = route.prefix_rewrite.as_deref()?;
        let matched = match &route.matcher.path {
            Some(PathMatch::Prefix(prefix)) => prefix.as_str(),
            Some(PathMatch::Exact(exact)) => exact.as_str(),
            Some(PathMatch::Regex(_)) => return None,
            None => "/",
        };
        Some(Self(Arc::new((matched.to_owned(), replacement.to_owned()))))
    }

    /// `uri` after the rewrite (`None`: unchanged).
    pub(crate) fn apply(&self, uri: &Uri) -> Option<Uri> {
        let (matched, replacement) = &*self.0;
        prefix_rewrite(matched, replacement, uri)
    }
}

/// The URI with `matched` (a prefix of its path) replaced by `replacement` (`None`: the path
/// does not start with it).
fn prefix_rewrite(matched: &str, replacement: &str, uri: &Uri) -> Option<Uri> {
    let rest = uri.path().strip_prefix(matched)?;
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

/// Adds [`Rewrite`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RewriteLayer;

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;
    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite { inner }
    }
}

/// Rewrites the path of a request with a [`PrefixRewrite`].
#[derive(Debug, Clone)]
pub(crate) struct Rewrite<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Rewrite<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        if let Some(rewrite) = request.extensions_mut().remove::<PrefixRewrite>()
            && let Some(uri) = rewrite.apply(request.uri())
        {
            *request.uri_mut() = uri;
        }
        self.inner.call(request)
    }
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
            headers: Default::default(),
        }
    }

    fn rewrite(route: &CompiledRoute, uri: &str) -> Option<String> {
        PrefixRewrite::of(route)?
            .apply(&uri.parse().unwrap())
            .map(|uri| uri.to_string())
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
