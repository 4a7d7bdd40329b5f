//! Bulkheads of one HTTP upstream (`service-defaults` `Limits`), so that a saturated upstream
//! cannot take the sidecar's capacity from the others:
//!
//! - `MaxConcurrentRequests`: requests in flight to the upstream (HTTP/2 streams over the pooled
//!   connections, retries included in the request's slot). Without `MaxPendingRequests` a
//!   request beyond it fails at once (503 `concurrency_limit`).
//! - `MaxPendingRequests`: requests allowed to wait, first come first served, for a slot
//!   of `MaxConcurrentRequests`; one more fails at once (503 `concurrency_limit`). A waiting
//!   request is bounded by its route's `RequestTimeout` (504 `timeout`) and leaves the queue
//!   when its client goes away. Only meaningful with `MaxConcurrentRequests`.
//! - `MaxConnections`: pooled HTTP/2 connections the sidecar keeps open to the upstream's
//!   endpoints (see [`ConnectionBudget`]). As in Envoy for HTTP/2, streams are not bounded by
//!   it (one connection carries many): `MaxConcurrentRequests` bounds them.
//!
//! Each upstream has its own bulkhead; rejections are counted in
//! `plexus_proxy_http_bulkhead_rejections_total{upstream, limit}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use plexus_api::config_entry::chain::LimitsPolicy;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::metrics::Observe;
use super::stack::{AnswerFuture, HttpService, take};
use super::{Body, HttpError, Reason};

/// Which limit refused a request (the `limit` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `MaxConcurrentRequests` with no queue.
    ConcurrentRequests,
    /// `MaxPendingRequests` already waiting.
    PendingRequests,
    /// `MaxConnections` open and none usable.
    Connections,
}

impl Limit {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ConcurrentRequests => "max_concurrent_requests",
            Self::PendingRequests => "max_pending_requests",
            Self::Connections => "max_connections",
        }
    }
}

/// `MaxConcurrentRequests` slots with a bounded queue of `MaxPendingRequests` in front.
#[derive(Debug)]
pub(crate) struct Bulkhead {
    /// `None`: no limit.
    slots: Option<Arc<Semaphore>>,
    max_pending: u32,
    pending: AtomicU32,
}

/// A request's slot; dropping it frees the slot for the next waiting request.
#[derive(Debug)]
pub(crate) struct RequestSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Bulkhead {
    /// The bulkhead for `limits`.
    pub(crate) fn new(limits: &LimitsPolicy) -> Self {
        Self {
            slots: limits
                .max_concurrent_requests
                .map(|max| Arc::new(Semaphore::new(max as usize))),
            max_pending: limits.max_pending_requests.unwrap_or(0),
            pending: AtomicU32::new(0),
        }
    }

    /// A slot: at once if one is free, after waiting in the queue if there is room in it, or
    /// the limit that refused.
    pub(crate) async fn acquire(&self) -> Result<RequestSlot, Limit> {
        let Some(slots) = &self.slots else {
            return Ok(RequestSlot { _permit: None });
        };
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Ok(RequestSlot {
                _permit: Some(permit),
            });
        }
        if self.max_pending == 0 {
            return Err(Limit::ConcurrentRequests);
        }
        let max = self.max_pending;
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Limit::PendingRequests)?;
        let _waiting = Waiting(&self.pending);
        // The semaphore is never closed, so this only ends with a permit.
        Arc::clone(slots)
            .acquire_owned()
            .await
            .map(|permit| RequestSlot {
                _permit: Some(permit),
            })
            .map_err(|_| Limit::ConcurrentRequests)
    }

    /// [`Bulkhead::acquire`], the wait bounded by the route's `timeout` (504); a refusal is
    /// counted and becomes 503 `concurrency_limit`.
    pub(crate) async fn admit(
        &self,
        timeout: Option<Duration>,
        observe: &Observe,
    ) -> Result<RequestSlot, HttpError> {
        let acquired = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, self.acquire())
                .await
                .map_err(|_| HttpError::new(Reason::Timeout))?,
            None => self.acquire().await,
        };
        acquired.map_err(|limit| {
            observe.bulkhead_rejected(limit.label());
            HttpError::new(Reason::ConcurrencyLimit)
        })
    }

    /// Requests waiting for a slot right now.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }
}

/// Counts a request in the queue while it waits (also when its client goes away).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's way through the upstream's bulkhead (set by the route layer when the policy has
/// `MaxConcurrentRequests`).
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    /// The upstream's bulkhead.
    pub bulkhead: Arc<Bulkhead>,
    /// The longest wait in its queue: the route's `RequestTimeout`.
    pub wait: Option<Duration>,
}

/// Adds [`Bulkheaded`].
#[derive(Debug, Clone)]
pub(crate) struct BulkheadLayer {
    observe: Observe,
}

impl BulkheadLayer {
    /// Rejections counted in `observe`'s metrics.
    pub(crate) fn new(observe: Observe) -> Self {
        Self { observe }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkheaded<S>;
    fn layer(&self, inner: S) -> Bulkheaded<S> {
        Bulkheaded {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// Holds a slot of the bulkhead for the request (with an [`Admission`]) until its response
/// headers arrive.
#[derive(Debug, Clone)]
pub(crate) struct Bulkheaded<S> {
    inner: S,
    observe: Observe,
}

impl<S: HttpService> Service<Request<Body>> for Bulkheaded<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let Some(admission) = request.extensions_mut().remove::<Admission>() else {
            return self.inner.call(request);
        };
        let mut inner = take(&mut self.inner);
        let observe = self.observe.clone();
        Box::pin(async move {
            let _slot = admission.bulkhead.admit(admission.wait, &observe).await?;
            inner.call(request).await
        })
    }
}

/// `MaxConnections`: open pooled connections to the upstream's endpoints, counted from the
/// moment one is being opened until it has closed. Shared by every policy of the upstream
/// (connections outlive a chain change); the maximum is the current policy's.
#[derive(Debug)]
pub(crate) struct ConnectionBudget {
    open: AtomicU32,
    /// `u32::MAX`: no limit.
    max: AtomicU32,
}

impl Default for ConnectionBudget {
    fn default() -> Self {
        Self {
            open: AtomicU32::new(0),
            max: AtomicU32::new(u32::MAX),
        }
    }
}

/// One counted connection; dropping it (when the connection ends, or its opening failed)
/// returns it to the budget.
#[derive(Debug)]
pub(crate) struct ConnectionPermit(Arc<ConnectionBudget>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionBudget {
    /// Sets the maximum from the current policy (`None`: no limit).
    pub(crate) fn set_max(&self, max: Option<u32>) {
        self.max.store(max.unwrap_or(u32::MAX), Ordering::Release);
    }

    /// Counts one more connection if fewer than the maximum are open.
    pub(crate) fn try_open(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionPermit(Arc::clone(self)))
    }

    /// Connections open (or being opened) right now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(concurrent: Option<u32>, pending: Option<u32>) -> LimitsPolicy {
        LimitsPolicy {
            max_connections: None,
            max_pending_requests: pending,
            max_concurrent_requests: concurrent,
        }
    }

    #[tokio::test]
    async fn without_a_queue_the_next_request_fails_at_once() {
        let bulkhead = Bulkhead::new(&limits(Some(2), None));
        let (a, b) = (bulkhead.acquire().await, bulkhead.acquire().await);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            bulkhead.acquire().await.unwrap_err(),
            Limit::ConcurrentRequests
        );
        drop(a);
        assert!(bulkhead.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn no_limit_admits_everything() {
        let bulkhead = Bulkhead::new(&limits(None, Some(1)));
        let held: Vec<_> = futures_admit(&bulkhead, 1000).await;
        assert_eq!(held.len(), 1000);
    }

    async fn futures_admit(bulkhead: &Bulkhead, n: usize) -> Vec<RequestSlot> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(bulkhead.acquire().await.unwrap());
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_are_bounded_and_served_in_order() {
        let bulkhead = Arc::new(Bulkhead::new(&limits(Some(1), Some(2))));
        let first = bulkhead.acquire().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..2 {
            let (waiter, tx) = (Arc::clone(&bulkhead), tx.clone());
            tokio::spawn(async move {
                let slot = waiter.acquire().await;
                tx.send((i, slot.is_ok())).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
            // Let it enter the queue before the next one.
            while bulkhead.pending() <= i {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(bulkhead.pending(), 2);
        // The queue is full: refused at once.
        assert_eq!(
            bulkhead.acquire().await.unwrap_err(),
            Limit::PendingRequests
        );
        drop(first);
        assert_eq!(rx.recv().await, Some((0, true)));
        assert_eq!(rx.recv().await, Some((1, true)));
        assert_eq!(bulkhead.pending(), 0);
    }

    #[tokio::test]
    async fn a_client_that_leaves_the_queue_frees_its_place() {
        let bulkhead = Bulkhead::new(&limits(Some(1), Some(1)));
        let _held = bulkhead.acquire().await.unwrap();
        {
            let waiting = bulkhead.acquire();
            tokio::pin!(waiting);
            assert!(futures_poll_once(waiting.as_mut()).await.is_none());
            assert_eq!(bulkhead.pending(), 1);
        }
        assert_eq!(bulkhead.pending(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::ZERO, future).await.ok()
    }

    #[test]
    fn connection_budget_counts_open_connections() {
        let budget = Arc::new(ConnectionBudget::default());
        budget.set_max(Some(2));
        let a = budget.try_open().unwrap();
        let _b = budget.try_open().unwrap();
        assert!(budget.try_open().is_none());
        assert_eq!(budget.open(), 2);
        drop(a);
        let _c = budget.try_open().unwrap();
        budget.set_max(None);
        assert!(budget.try_open().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_at_most_the_route_timeout() {
        let bulkhead = Bulkhead::new(&limits(Some(1), Some(1)));
        let observe = Observe::new(super::super::HttpMetrics::default(), "web");
        let _held = bulkhead.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        let waited = bulkhead.admit(Some(Duration::from_secs(2)), &observe).await;
        assert_eq!(waited.unwrap_err().reason(), Reason::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(bulkhead.pending(), 0);
    }
}
