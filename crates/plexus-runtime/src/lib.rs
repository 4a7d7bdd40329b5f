//! Process plumbing shared by every Plexus daemon: tracing set-up, shutdown, the HTTP serving loop,
//! the JSON error shape and blocking-query helpers, and the small helpers every crate needs once:
//! reconnect backoff, error-chain display and poison-free locking.
//!
//! Main types: [`shutdown::Shutdown`] (cancellation token + task tracker + signals),
//! [`http::ApiError`] (the one error response shape), [`http::JsonBody`] (a bounded JSON body
//! extractor whose errors name the field), [`http::BlockingQuery`] (`?index=&wait=`),
//! [`Backoff`] (bounded, jittered exponential retry delays), [`ErrorChain`] (an error and its
//! causes on one line), [`lock`] (`std::sync` locks without poison).
//! [`acl`] is the ACL edge: one authorizer per request, resolved before any handler runs.
//! [`private_fs`] creates data directories `0700` and files `0600`.
//! [`tls`] builds rustls configurations (aws-lc-rs) from PEM files or CA-issued material and
//! serves the HTTP API over TLS.
//! [`connections`] bounds every HTTP listener's connections (total, per client, header-read
//! and idle timeouts).
//! It does not know about services, checks or proxies.

pub mod acl;
pub mod backoff;
pub mod connections;
pub mod error_chain;
pub mod http;
pub mod lock;
pub mod private_fs;
pub mod row_filter;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use backoff::Backoff;
pub use error_chain::ErrorChain;
pub use shutdown::Shutdown;
