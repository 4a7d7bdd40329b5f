//! Header changes: an ingress service's, and a route's or split's `RequestHeaders` and
//! `ResponseHeaders` (service-router destinations, service-splitter splits).
//!
//! The route layer names the route's changes ([`RouteHeaders`]), the split layer the picked
//! split's ([`SplitHeaders`]); this layer, right below the split, applies them to the request
//! before it goes on (so every retry carries them) and to the upstream's response: a split's
//! first, then its route's, as Envoy orders a weighted cluster's and a route's (the route's
//! `Set` wins). A local answer (a 503 of the sidecar's own, a 504) gets no response changes.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use plexus_api::config_entry::chain;
use tower::{Layer, Service};

use super::stack::{AnswerFuture, HttpService};
use super::{Body, HttpError};

/// Header changes, parsed: `Add` appends, `Set` replaces, `Remove` deletes.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderChanges {
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Replacing.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderChanges {
    /// Parses the entry's changes (validated by the control plane; anything unusable is left
    /// out).
    pub(crate) fn parse(
        modifiers: Option<&plexus_api::config_entry::gateway::HeaderModifiers>,
    ) -> Self {
        let Some(m) = modifiers else {
            return Self::default();
        };
        let pair = |(name, value): (&String, &String)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        };
        Self {
            add: m.add.iter().filter_map(pair).collect(),
            set: m.set.iter().filter_map(pair).collect(),
            remove: m
                .remove
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies the changes to `headers`: removals, then replacements, then additions.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The changes of one route or split, parsed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// To the request sent upstream.
    pub request: HeaderChanges,
    /// To the response returned.
    pub response: HeaderChanges,
}

impl Changes {
    /// `headers` parsed; `None` when it changes nothing.
    pub(crate) fn of(headers: &chain::Headers) -> Option<Arc<Self>> {
        (!headers.is_empty()).then(|| {
            Arc::new(Self {
                request: HeaderChanges::parse(headers.request.as_ref()),
                response: HeaderChanges::parse(headers.response.as_ref()),
            })
        })
    }
}

/// The changes of the route a request took (set by the route layer).
#[derive(Debug, Clone)]
pub(crate) struct RouteHeaders(pub Arc<Changes>);

/// The changes of the split a request was sent to (set by the split layer).
#[derive(Debug, Clone)]
pub(crate) struct SplitHeaders(pub Arc<Changes>);

/// Adds [`Headers`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeadersLayer;

impl<S> Layer<S> for HeadersLayer {
    type Service = Headers<S>;
    fn layer(&self, inner: S) -> Headers<S> {
        Headers { inner }
    }
}

/// Applies a request's [`SplitHeaders`] and [`RouteHeaders`].
#[derive(Debug, Clone)]
pub(crate) struct Headers<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Headers<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let split = request.extensions_mut().remove::<SplitHeaders>();
        let route = request.extensions_mut().remove::<RouteHeaders>();
        if split.is_none() && route.is_none() {
            return self.inner.call(request);
        }
        let changes: Vec<Arc<Changes>> = split
            .map(|SplitHeaders(c)| c)
            .into_iter()
            .chain(route.map(|RouteHeaders(c)| c))
            .collect();
        for change in &changes {
            change.request.apply(request.headers_mut());
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            for change in &changes {
                change.response.apply(response.headers_mut());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use plexus_api::config_entry::chain::HeaderModifiers;
    use tower::ServiceExt;

    use super::*;

    /// Keeps the request headers it got; answers 200 with `x-app: 1` and `x-drop: 1`.
    #[derive(Clone, Default)]
    struct Upstream(Arc<Mutex<Option<HeaderMap>>>);

    impl Service<Request<Body>> for Upstream {
        type Response = Response<Body>;
        type Error = HttpError;
        type Future = AnswerFuture;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> AnswerFuture {
            *self.0.lock().unwrap() = Some(request.headers().clone());
            Box::pin(async {
                let mut response = Response::new(crate::http::empty());
                let headers = response.headers_mut();
                headers.insert("x-app", HeaderValue::from_static("1"));
                headers.insert("x-drop", HeaderValue::from_static("1"));
                Ok(response)
            })
        }
    }

    fn changes(request: HeaderModifiers, response: HeaderModifiers) -> Arc<Changes> {
        Changes::of(&chain::Headers {
            request: Some(request),
            response: Some(response),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_splits_changes_then_its_routes_reach_the_request_and_the_response() {
        let upstream = Upstream::default();
        let mut request = Request::new(crate::http::empty());
        request
            .headers_mut()
            .insert("x-client", HeaderValue::from_static("secret"));
        request.extensions_mut().insert(SplitHeaders(changes(
            HeaderModifiers::of(&[("x-split", "v2")], &[("x-env", "split")], &[]),
            HeaderModifiers::of(&[("x-served-by", "v2")], &[], &[]),
        )));
        request.extensions_mut().insert(RouteHeaders(changes(
            HeaderModifiers::of(&[], &[("x-env", "route")], &["x-client"]),
            HeaderModifiers::of(&[], &[("x-app", "route")], &["x-drop"]),
        )));
        let response = HeadersLayer
            .layer(upstream.clone())
            .oneshot(request)
            .await
            .unwrap();
        let sent = upstream.0.lock().unwrap().clone().unwrap();
        assert_eq!(sent["x-split"], "v2");
        assert_eq!(sent["x-env"], "route", "the route's Set applies last");
        assert!(!sent.contains_key("x-client"));
        let headers = response.headers();
        assert_eq!(headers["x-served-by"], "v2");
        assert_eq!(headers["x-app"], "route");
        assert!(!headers.contains_key("x-drop"));
    }

    #[tokio::test]
    async fn a_request_without_changes_passes_as_it_is() {
        let upstream = Upstream::default();
        let response = HeadersLayer
            .layer(upstream.clone())
            .oneshot(Request::new(crate::http::empty()))
            .await
            .unwrap();
        assert!(upstream.0.lock().unwrap().as_ref().unwrap().is_empty());
        assert_eq!(response.headers().len(), 2);
        assert!(
            Changes::of(&chain::Headers::default()).is_none(),
            "nothing to apply: no extension"
        );
    }

    #[test]
    fn header_changes_remove_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-gone", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("old"));
        let changes = HeaderChanges {
            add: vec![(
                HeaderName::from_static("x-set"),
                HeaderValue::from_static("more"),
            )],
            set: vec![(
                HeaderName::from_static("x-set"),
                HeaderValue::from_static("new"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        changes.apply(&mut headers);
        assert!(!headers.contains_key("x-gone"));
        let values: Vec<_> = headers.get_all("x-set").iter().collect();
        assert_eq!(values, ["new", "more"]);
    }
}
