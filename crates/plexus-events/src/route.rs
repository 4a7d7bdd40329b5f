//! Route names and addresses.
//!
//! A route name is lowercase letters, digits, `.`, `-` and `_`, with at least one dot, not starting
//! or ending with a dot (`hello.world`). An address is `route` (any instance, local first),
//! `route@origin` (that instance) or `inbox.<key>@origin` (the reply inbox of one waiting request
//! of an instance; the key matches the reply to its request, so the envelope's `cid` stays the
//! caller's own). Route names starting with `inbox` are reserved.

use std::fmt;

/// The reserved route name of an instance's reply inbox (`inbox.<key>@origin`).
pub const INBOX: &str = "inbox";

/// The reply address of the request waiting under `key` on instance `origin`.
pub fn inbox_address(key: &str, origin: &str) -> String {
    format!("{INBOX}.{key}@{origin}")
}

/// True for route names an app may not register (`inbox`, `inbox.*`).
pub fn is_reserved(route: &str) -> bool {
    route == INBOX || route.starts_with("inbox.")
}

/// Why a route name or address is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route name breaks the naming rule.
    #[error(
        "invalid route name {0:?}: use lowercase letters, digits, '.', '-', '_' with at least one dot, not at either end"
    )]
    Name(String),
    /// The origin after `@` is empty or has characters other than letters, digits, `-`, `_`.
    #[error("invalid origin in address {0:?}")]
    Origin(String),
}

/// Checks a route name.
pub fn validate_route(name: &str) -> Result<(), RouteError> {
    if plexus_api::presence::valid_route_name(name) {
        Ok(())
    } else {
        Err(RouteError::Name(name.to_owned()))
    }
}

/// Checks an origin (an instance id).
pub fn validate_origin(origin: &str) -> bool {
    plexus_api::presence::valid_origin(origin)
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The route name, or [`INBOX`].
    pub route: String,
    /// The instance, when the address names one.
    pub origin: Option<String>,
}

impl Address {
    /// Parses `route`, `route@origin` or `inbox[.<key>]@origin`.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let (route, origin) = match text.split_once('@') {
            Some((route, origin)) => {
                if !validate_origin(origin) {
                    return Err(RouteError::Origin(text.to_owned()));
                }
                (route, Some(origin.to_owned()))
            }
            None => (text, None),
        };
        if is_reserved(route) {
            if origin.is_none() {
                return Err(RouteError::Origin(text.to_owned()));
            }
            if route != INBOX {
                validate_route(route)?;
            }
        } else {
            validate_route(route)?;
        }
        Ok(Self {
            route: route.to_owned(),
            origin,
        })
    }

    /// True for an inbox address.
    pub fn is_inbox(&self) -> bool {
        is_reserved(&self.route)
    }

    /// The waiting request's key of an inbox address (`""` for a bare `inbox@origin`).
    pub fn inbox_key(&self) -> Option<&str> {
        if self.route == INBOX {
            return Some("");
        }
        self.route.strip_prefix("inbox.")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{}@{origin}", self.route),
            None => f.write_str(&self.route),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn route_names() {
        for good in ["hello.world", "a.b", "v1.hello-world_x", "x.y.z"] {
            assert!(validate_route(good).is_ok(), "{good}");
        }
        for bad in [
            "hello",
            "Hello.world",
            ".a",
            "a.",
            "a..b",
            "a b.c",
            "",
            "a.b/c",
            "é.x",
        ] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        let a = Address::parse("hello.world@o1").unwrap();
        assert_eq!(a.route, "hello.world");
        assert_eq!(a.origin.as_deref(), Some("o1"));
        assert!(Address::parse("inbox@o1").unwrap().is_inbox());
        let inbox = Address::parse(&inbox_address("k1", "o1")).unwrap();
        assert_eq!(inbox.inbox_key(), Some("k1"));
        assert!(Address::parse("inbox.k1").is_err());
        assert!(is_reserved("inbox.x") && !is_reserved("inboxes.x"));
        assert!(Address::parse("inbox").is_err());
        assert!(Address::parse("hello.world@").is_err());
        assert!(Address::parse("hello.world@a.b").is_err());
        assert_eq!(Address::parse("a.b").unwrap().to_string(), "a.b");
    }
}
