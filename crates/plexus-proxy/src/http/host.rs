//! Host routing: the first stage of an ingress gateway's HTTP listener after the edge checks.
//!
//! A request's `Host` (HTTP/1.1) or `:authority` (HTTP/2), port removed and lowercased, picks
//! the service ([`pick`]: a listed host first, then a `*.`-wildcard one, then the default
//! `<service>.ingress.*`); the request then enters that service's own outbound stack (route,
//! split, retry, timeout… from its discovery chain; mTLS to its sidecars with the gateway's
//! identity, so the destination's intentions see the gateway as the source). The service's
//! `RequestHeaders` are applied before, its `ResponseHeaders` after. A host no service claims
//! is answered 404 with `x-plexus-error: unknown_host`.
//!
//! Services behind the wildcard `*` get their stack on first use, at most
//! [`MAX_WILDCARD_SERVICES`] of them (more: 404), so outside clients cannot make the gateway
//! grow without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Request;
use http::header;
use tower::Service;

use super::headers::HeaderChanges;
use super::stack::{AnswerFuture, BoxStack, fail};
use super::{Body, HttpError, Reason};

/// Services the wildcard `*` may open stacks for, per listener.
pub const MAX_WILDCARD_SERVICES: usize = 256;

/// One service of an ingress listener.
#[derive(Clone)]
pub(crate) struct HostRoute {
    /// The service.
    pub service: String,
    /// Its listed hosts (lowercase).
    pub hosts: Vec<String>,
    /// Its outbound stack.
    pub stack: BoxStack,
    /// `RequestHeaders`.
    pub request: Arc<HeaderChanges>,
    /// `ResponseHeaders`.
    pub response: Arc<HeaderChanges>,
}

/// Builds the stack of a service named through the wildcard `*`.
pub(crate) type MakeStack = Arc<dyn Fn(&str) -> Option<BoxStack> + Send + Sync>;

/// The services of one listener, by host.
#[derive(Clone)]
pub(crate) struct HostRouter {
    routes: Arc<Vec<HostRoute>>,
    /// The wildcard `*` (with its header changes), if listed.
    wildcard: Option<(MakeStack, Arc<HeaderChanges>, Arc<HeaderChanges>)>,
    /// Stacks opened through the wildcard.
    opened: Arc<Mutex<HashMap<String, BoxStack>>>,
}

impl HostRouter {
    /// A router over `routes`, and the wildcard's stack maker and header changes.
    pub(crate) fn new(
        routes: Vec<HostRoute>,
        wildcard: Option<(MakeStack, Arc<HeaderChanges>, Arc<HeaderChanges>)>,
    ) -> Self {
        Self {
            routes: Arc::new(routes),
            wildcard,
            opened: Arc::default(),
        }
    }

    /// The stack and header changes for `host`.
    fn find(&self, host: &str) -> Option<(BoxStack, Arc<HeaderChanges>, Arc<HeaderChanges>)> {
        let listed: Vec<(&str, &[String])> = self
            .routes
            .iter()
            .map(|r| (r.service.as_str(), r.hosts.as_slice()))
            .collect();
        if let Some(i) = pick(&listed, host) {
            let route = &self.routes[i];
            return Some((
                route.stack.clone(),
                Arc::clone(&route.request),
                Arc::clone(&route.response),
            ));
        }
        let (make, request, response) = self.wildcard.as_ref()?;
        let service = default_host_service(host)?;
        let mut opened = plexus_runtime::lock::lock(&self.opened);
        if let Some(stack) = opened.get(service) {
            return Some((stack.clone(), Arc::clone(request), Arc::clone(response)));
        }
        if opened.len() >= MAX_WILDCARD_SERVICES {
            return None;
        }
        let stack = make(service)?;
        opened.insert(service.to_owned(), stack.clone());
        Some((stack, Arc::clone(request), Arc::clone(response)))
    }
}

/// The request's host: `Host`, else the URI's authority; port removed, lowercased.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))?;
    let host = match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => raw.as_str(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The service of a default host `<service>.ingress.<domain>`.
fn default_host_service(host: &str) -> Option<&str> {
    let (service, rest) = host.split_once('.')?;
    let domain = rest.strip_prefix("ingress.")?;
    (!service.is_empty() && !domain.is_empty()).then_some(service)
}

/// Which of `routes` (service, listed hosts) serves `host` (lowercase, no port): an exact
/// listed host, else the longest matching `*.`-wildcard host, else the service whose default
/// host `<service>.ingress.*` it is.
pub(crate) fn pick(routes: &[(&str, &[String])], host: &str) -> Option<usize> {
    use plexus_api::config_entry::gateway::host_matches;
    let exact = routes.iter().position(|(_, hosts)| {
        hosts
            .iter()
            .any(|h| !h.starts_with("*.") && h.eq_ignore_ascii_case(host))
    });
    if exact.is_some() {
        return exact;
    }
    let wildcard = routes
        .iter()
        .enumerate()
        .flat_map(|(i, (_, hosts))| hosts.iter().map(move |h| (i, h)))
        .filter(|(_, h)| h.starts_with("*.") && host_matches(h, host))
        .max_by_key(|(_, h)| h.len())
        .map(|(i, _)| i);
    if wildcard.is_some() {
        return wildcard;
    }
    let service = default_host_service(host)?;
    routes.iter().position(|(name, _)| *name == service)
}

impl Service<Request<Body>> for HostRouter {
    type Response = http::Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let found = request_host(&request).and_then(|host| self.find(&host));
        let Some((stack, on_request, on_response)) = found else {
            return fail(HttpError::new(Reason::UnknownHost));
        };
        on_request.apply(request.headers_mut());
        let answer = stack.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            on_response.apply(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_pick_listed_then_wildcard_then_default() {
        let web = vec!["web.example.com".to_owned(), "*.example.com".to_owned()];
        let api = vec!["*.api.example.com".to_owned()];
        let routes: Vec<(&str, &[String])> = vec![("web", &web), ("api", &api), ("db", &[])];
        assert_eq!(pick(&routes, "web.example.com"), Some(0));
        assert_eq!(pick(&routes, "x.api.example.com"), Some(1));
        assert_eq!(pick(&routes, "other.example.com"), Some(0));
        assert_eq!(pick(&routes, "db.ingress.consul"), Some(2));
        assert_eq!(pick(&routes, "api.ingress.example.org"), Some(1));
        assert_eq!(pick(&routes, "nope.test"), None);
        assert_eq!(pick(&routes, "unknown.ingress.consul"), None);
    }

    #[test]
    fn the_host_comes_without_port_and_in_lowercase() {
        let request = Request::builder()
            .uri("/")
            .header("host", "Web.Example.COM:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&request).as_deref(), Some("web.example.com"));
        let h2 = Request::builder()
            .uri("https://api.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("api.example.com"));
    }
}
