//! Access control in Consul's shape: tokens, policies, roles, service and node identities, the
//! rule language, and the pure evaluation every endpoint's authorization comes down to.
//!
//! ```text
//!  token (X-Consul-Token / Bearer / ?token=) ─► resolve at the edge (store or server)
//!      ─► its policies' Rules + roles' + templated identities ─► Authorizer (compiled once)
//!      ─► handlers: authz.require_service_write("web")?   authz.can_read_service(name)
//! ```
//!
//! - [`access`]: [`Access`] (`read`/`list`/`write`/`deny`) and [`Resource`] kinds.
//! - [`rules`]: a policy's [`Rules`] and Consul's templated identity policies.
//! - [`parse`]: Consul's rule language (HCL or JSON) into [`Rules`], errors with lines.
//! - [`authorizer`]: [`Authorizer`] (exact beats prefix, longest prefix wins, deny wins ties,
//!   default policy last) and [`Denied`], Consul's 403 message.
//! - [`model`]: [`model::Token`], [`model::Policy`], [`model::Role`] in Consul's JSON shape.
//! - [`secret`]: [`SecretId`], a token secret that never prints and compares in constant time.
//!
//! This module does no I/O: the store and endpoints live in `plexus-control::acl`, the edge
//! middleware in `plexus-runtime::acl`.

pub mod access;
pub mod authorizer;
pub mod model;
pub mod parse;
pub mod rules;
pub mod secret;

pub use access::{Access, Resource};
pub use authorizer::{Authorizer, DefaultPolicy, Denied};
pub use parse::{RuleError, RuleErrors, parse_rules};
pub use rules::{Rules, SegmentRule};
pub use secret::SecretId;

/// The AccessorID of the anonymous token (what a request without a token is).
pub const ANONYMOUS_ACCESSOR_ID: &str = "00000000-0000-0000-0000-000000000002";
/// The SecretID of the anonymous token.
pub const ANONYMOUS_SECRET_ID: &str = "anonymous";
/// The ID of the built-in `global-management` policy.
pub const GLOBAL_MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
/// The name of the built-in management policy.
pub const GLOBAL_MANAGEMENT_POLICY_NAME: &str = "global-management";
/// The header Consul clients send their token in.
pub const TOKEN_HEADER: &str = "x-consul-token";
/// Set to `true` on a read whose answer left out what the token may not see.
pub const FILTERED_HEADER: &str = "x-consul-results-filtered-by-acls";
