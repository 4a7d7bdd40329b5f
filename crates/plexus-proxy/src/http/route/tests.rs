use plexus_api::config_entry::ConfigEntry;
use plexus_api::config_entry::compile::compile;
use proptest::prelude::*;
use serde_json::json;

use super::table::{RouteTable, SimpleRequest};

fn req(method: &str, path: &str, query: Option<&str>, headers: &[(&str, &str)]) -> SimpleRequest {
    SimpleRequest {
        method: method.into(),
        path: path.into(),
        query: query.map(Into::into),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    }
}

fn table() -> RouteTable {
    let router = ConfigEntry::from_json(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Name": "admin", "Match": {"HTTP": {"PathPrefix": "/admin", "Methods": ["GET", "POST"]}}},
        {"Name": "canary", "Match": {"HTTP": {"Header": [{"Name": "X-Canary", "Exact": "1"}]}}},
        {"Name": "not-mobile", "Match": {"HTTP": {"PathExact": "/m", "Header": [{"Name": "user-agent", "Suffix": "Mobile", "Invert": true}]}}},
        {"Name": "items", "Match": {"HTTP": {"PathRegex": "/items/[0-9]+", "QueryParam": [{"Name": "v", "Exact": "2 b"}]}}},
        {"Name": "debug", "Match": {"HTTP": {"QueryParam": [{"Name": "debug", "Present": true}]}}}
    ]}))
    .unwrap();
    RouteTable::new(&compile("web", &[router]).routes).unwrap()
}

fn name(t: &RouteTable, r: &SimpleRequest) -> String {
    t.find(r).unwrap().1.name.clone()
}

#[test]
fn first_match_wins_across_criteria() {
    let t = table();
    assert_eq!(
        name(&t, &req("GET", "/admin/x", None, &[("x-canary", "1")])),
        "admin"
    );
    assert_eq!(
        name(&t, &req("DELETE", "/admin/x", None, &[("x-canary", "1")])),
        "canary"
    );
    assert_eq!(
        name(&t, &req("GET", "/m", None, &[("user-agent", "Foo Mobile")])),
        "default"
    );
    assert_eq!(
        name(&t, &req("GET", "/m", None, &[("user-agent", "Desktop")])),
        "not-mobile"
    );
    assert_eq!(name(&t, &req("GET", "/m", None, &[])), "not-mobile");
    assert_eq!(
        name(&t, &req("GET", "/items/42", Some("a=1&v=2+b"), &[])),
        "items"
    );
    assert_eq!(
        name(&t, &req("GET", "/items/42x", Some("v=2%20b"), &[])),
        "default"
    );
    assert_eq!(
        name(&t, &req("GET", "/items/42", Some("v=2%20b"), &[])),
        "items"
    );
    assert_eq!(name(&t, &req("GET", "/", Some("debug"), &[])), "debug");
    assert_eq!(name(&t, &req("GET", "/", None, &[])), "default");
}

proptest! {
    #[test]
    fn prefix_route_matches_exactly_the_paths_with_the_prefix(prefix in "/[a-z]{1,4}", path in "/[a-z/]{0,8}") {
        let router = ConfigEntry::from_json(json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Name": "p", "Match": {"HTTP": {"PathPrefix": prefix}}}]})).unwrap();
        let t = RouteTable::new(&compile("web", &[router]).routes).unwrap();
        let got = name(&t, &req("GET", &path, None, &[]));
        prop_assert_eq!(got == "p", path.starts_with(&prefix));
    }
}

/// L7 intentions' header tests: `Contains`, and `IgnoreCase` on each kind of test.
#[test]
fn contains_and_ignore_case_header_tests() {
    use plexus_api::config_entry::chain::{HeaderCriterion, RequestMatch, ValueMatch};

    use super::table::Matcher;
    let matcher = |value: ValueMatch, ignore_case: bool| {
        Matcher::new(&RequestMatch {
            headers: vec![HeaderCriterion {
                name: "x-role".into(),
                value,
                invert: false,
                ignore_case,
            }],
            ..Default::default()
        })
        .unwrap()
    };
    let role = |v: &str| req("GET", "/", None, &[("x-role", v)]);
    let contains = matcher(ValueMatch::Contains("Ops".into()), false);
    assert!(contains.matches(&role("devOps")));
    assert!(!contains.matches(&role("devops")));
    let folded = matcher(ValueMatch::Contains("Ops".into()), true);
    assert!(folded.matches(&role("DEVOPS")) && folded.matches(&role("devops")));
    assert!(!folded.matches(&role("dev")));
    for (value, hit) in [
        (ValueMatch::Exact("Admin".into()), "aDMIN"),
        (ValueMatch::Prefix("Ad".into()), "aDMIN"),
        (ValueMatch::Suffix("IN".into()), "admin"),
        (ValueMatch::Regex("ad[a-z]+".into()), "ADMIN"),
    ] {
        assert!(
            matcher(value.clone(), true).matches(&role(hit)),
            "{value:?}"
        );
        assert!(
            !matcher(value.clone(), false).matches(&role(hit)),
            "{value:?}"
        );
    }
}
