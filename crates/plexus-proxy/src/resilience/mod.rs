//! Resilience decisions, sans-IO: no clock reads, no tasks, no sockets. The caller passes the
//! time (`now: Instant`) and random draws in, and acts on the answers.
//!
//! - [`retry`]: which outcomes may be retried ([`retry::should_retry`]), backoff with full
//!   jitter ([`retry::backoff`]), and the [`retry::RetryBudget`] capping retries in flight;
//! - [`outlier`]: the [`outlier::OutlierDetector`] (consecutive failures → ejection for
//!   base × times ejected, never above the max ejection percent, readmitted after the time);
//! - [`rate`]: the [`rate::TokenBucket`] local rate limiter;
//! - [`concurrency`]: the [`concurrency::ConcurrencyLimiter`] (bulkhead) with RAII permits;
//! - [`fault`]: fault injection ([`fault::decide`]) from random draws.

pub mod concurrency;
pub mod fault;
pub mod outlier;
pub mod rate;
pub mod retry;
