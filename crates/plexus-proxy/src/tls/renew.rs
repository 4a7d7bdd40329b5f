//! When to renew a leaf certificate: the pure decision lives in `plexus-api`, shared with the
//! xDS server.

pub(crate) use plexus_api::connect::renew::{renew_at, retry_after};
