//! The route table, sans-IO: which compiled route a request takes ([`RouteTable::find`], first
//! match wins like Consul; the chain's last route matches everything).
//!
//! Regexes are compiled once, when the table is built from a
//! [`plexus_api::config_entry::chain::DiscoveryChain`]'s routes. Requests are seen through the
//! [`RequestView`] trait so the data path can hand in `http::request::Parts` (or anything else).

use plexus_api::config_entry::chain::{
    CompiledRoute, HeaderCriterion, PathMatch, QueryCriterion, RequestMatch, ValueMatch,
};
use plexus_runtime::http::query_value;
use regex::Regex;

/// What routing needs to know about a request.
pub trait RequestView {
    /// Method, e.g. `GET` (compared case-sensitively with uppercase route methods).
    fn method(&self) -> &str;
    /// Path without the query string.
    fn path(&self) -> &str;
    /// Raw query string (after `?`), if any.
    fn query(&self) -> Option<&str>;
    /// First value of a header, by lowercase name.
    fn header(&self, name: &str) -> Option<&str>;
}

/// A plain request, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// Headers, lowercase names.
    pub headers: Vec<(String, String)>,
}

#[cfg(test)]
impl RequestView for SimpleRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A path, header or query test with its regex compiled.
#[derive(Debug, Clone)]
enum Test {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl Test {
    fn new(v: &ValueMatch) -> Result<Self, regex::Error> {
        Self::folded(v, false)
    }

    /// With `ignore_case`, the literal is kept in lowercase (the value is lowercased before the
    /// test, [`Matcher::matches`]) and a regex is compiled case-insensitive.
    fn folded(v: &ValueMatch, ignore_case: bool) -> Result<Self, regex::Error> {
        let lit = |s: &String| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        Ok(match v {
            ValueMatch::Present => Self::Present,
            ValueMatch::Exact(s) => Self::Exact(lit(s)),
            ValueMatch::Prefix(s) => Self::Prefix(lit(s)),
            ValueMatch::Suffix(s) => Self::Suffix(lit(s)),
            ValueMatch::Contains(s) => Self::Contains(lit(s)),
            ValueMatch::Regex(r) if ignore_case => Self::Regex(whole(&format!("(?i:{r})"))?),
            ValueMatch::Regex(r) => Self::Regex(whole(r)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Contains(s) => value.contains(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// Anchored: the regex must match the whole value.
fn whole(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

/// A [`RequestMatch`] compiled: routes' and intention permissions' criteria.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    path: Option<Test>,
    /// Name, test, invert, ignore case.
    headers: Vec<(String, Test, bool, bool)>,
    query: Vec<(String, Test)>,
    methods: Vec<String>,
}

impl Matcher {
    /// Compiles `m`'s regexes.
    pub(crate) fn new(m: &RequestMatch) -> Result<Self, regex::Error> {
        let path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(Test::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => Some(Test::Prefix(p.clone())),
            Some(PathMatch::Regex(r)) => Some(Test::Regex(whole(r)?)),
        };
        let headers = m
            .headers
            .iter()
            .map(
                |HeaderCriterion {
                     name,
                     value,
                     invert,
                     ignore_case,
                 }| {
                    Ok((
                        name.to_ascii_lowercase(),
                        Test::folded(value, *ignore_case)?,
                        *invert,
                        *ignore_case,
                    ))
                },
            )
            .collect::<Result<_, regex::Error>>()?;
        let query = m
            .query
            .iter()
            .map(|QueryCriterion { name, value }| Ok((name.clone(), Test::new(value)?)))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Self {
            path,
            headers,
            query,
            methods: m.methods.clone(),
        })
    }

    /// A matcher that matches every request (`true`) or none.
    pub(crate) fn never_or_always(always: bool) -> Self {
        Self {
            path: None,
            headers: Vec::new(),
            query: Vec::new(),
            methods: if always {
                Vec::new()
            } else {
                vec![String::new()]
            },
        }
    }

    /// Whether `req` meets every criterion.
    pub(crate) fn matches(&self, req: &impl RequestView) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
        }
        if let Some(p) = &self.path
            && !p.matches(req.path())
        {
            return false;
        }
        for (name, test, invert, ignore_case) in &self.headers {
            let hit = req.header(name).is_some_and(|v| {
                if *ignore_case {
                    test.matches(&v.to_ascii_lowercase())
                } else {
                    test.matches(v)
                }
            });
            if hit == *invert {
                return false;
            }
        }
        for (name, test) in &self.query {
            let hit = query_value(req.query(), name).is_some_and(|v| test.matches(&v));
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Compiled routes of one chain.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(CompiledRoute, Matcher)>,
}

impl RouteTable {
    /// Compiles `routes` (a chain's, in order). Fails only on a regex the control plane should
    /// have refused.
    pub fn new(routes: &[CompiledRoute]) -> Result<Self, regex::Error> {
        let routes = routes
            .iter()
            .map(|r| Ok((r.clone(), Matcher::new(&r.matcher)?)))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Self { routes })
    }

    /// The first route `req` matches, with its index; `None` only when no route matches (a
    /// compiled chain always ends with a catch-all).
    pub fn find(&self, req: &impl RequestView) -> Option<(usize, &CompiledRoute)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, (_, m))| m.matches(req))
            .map(|(i, (r, _))| (i, r))
    }
}
