//! Route names and addresses.
//!
//! A route name is lowercase letters, digits, `.`, `-` and `_`, with at least one dot, not starting
//! or ending with a dot (`hello.world`). An address is `route` (any instance, local first),
//! `route@origin` (that instance) or `inbox@origin` (the RPC inbox of an instance).

use std::fmt;

/// The reserved route name of an instance's reply inbox.
pub const INBOX: &str = "inbox";

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
    /// Parses `route`, `route@origin` or `inbox@origin`.
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
        if route == INBOX {
            if origin.is_none() {
                return Err(RouteError::Origin(text.to_owned()));
            }
        } else {
            validate_route(route)?;
        }
        Ok(Self {
            route: route.to_owned(),
            origin,
        })
    }

    /// True for `inbox@origin`.
    pub fn is_inbox(&self) -> bool {
        self.route == INBOX
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
        assert!(Address::parse("inbox").is_err());
        assert!(Address::parse("hello.world@").is_err());
        assert!(Address::parse("hello.world@a.b").is_err());
        assert_eq!(Address::parse("a.b").unwrap().to_string(), "a.b");
    }
}
