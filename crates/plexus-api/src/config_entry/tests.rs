use std::path::Path;

use serde_json::json;

use super::chain::{FilterClause, RetryOn};
use super::compile::compile;
use super::validate::{check_references, validate};
use super::{ConfigEntry, Kind};

fn entry(v: serde_json::Value) -> ConfigEntry {
    ConfigEntry::from_json(v).unwrap()
}

fn fields(e: &ConfigEntry, stored: &[ConfigEntry]) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(errs) = validate(e) {
        out.extend(errs.0.into_iter().map(|e| e.field));
    }
    if let Err(errs) = check_references(e, stored) {
        out.extend(errs.0.into_iter().map(|e| e.field));
    }
    out
}

#[test]
fn unknown_kind_and_unknown_field_name_the_field() {
    let err = ConfigEntry::from_json(json!({"Kind": "service-nope", "Name": "web"})).unwrap_err();
    assert_eq!(err.field, "Kind");
    assert!(err.message.contains("service-nope"), "{err}");
    let err = ConfigEntry::from_json(
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [{"Wieght": 1}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "Splits[0].Wieght");
    assert!(err.message.contains("Wieght"), "{err}");
}

#[test]
fn snake_case_and_pascal_case_are_both_accepted() {
    let a = entry(
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
        "Limits": {"MaxConcurrentRequests": 3}}),
    );
    let b = entry(
        json!({"kind": "service-defaults", "name": "web", "protocol": "http",
        "limits": {"max_concurrent_requests": 3}}),
    );
    assert_eq!(a, b);
    assert_eq!(a.kind(), Kind::ServiceDefaults);
}

#[test]
fn splitter_weights_must_sum_to_100() {
    let e = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 90}, {"Weight": 9.5}]}));
    assert_eq!(fields(&e, &[]), ["Splits"]);
    let ok = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 90.005}, {"Weight": 9.995}]}));
    assert!(fields(&ok, &[]).is_empty());
    let neg = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 110}, {"Weight": -10}]}));
    assert_eq!(fields(&neg, &[]), ["Splits[0].Weight", "Splits[1].Weight"]);
}

#[test]
fn router_errors_name_their_field() {
    let e = entry(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathRegex": "(unclosed"}}},
        {"Match": {"HTTP": {"Header": [{"Name": "x", "Regex": "[z"}]}},
         "Destination": {"RetryOn": ["5xx", "sometimes"], "RetryOnStatusCodes": [503, 42]}}
    ]}));
    assert_eq!(
        fields(&e, &[]),
        [
            "Routes[0].Match.HTTP.PathRegex",
            "Routes[1].Match.HTTP.Header[0].Regex",
            "Routes[1].Destination.RetryOn[1]",
            "Routes[1].Destination.RetryOnStatusCodes[1]"
        ]
    );
}

#[test]
fn percentages_outside_0_100_are_refused() {
    let e = entry(json!({"Kind": "service-defaults", "Name": "web",
        "FaultInjection": {"Abort": {"HttpStatus": 503, "Percent": 101}, "Delay": {"Duration": "1s", "Percent": -1}},
        "Mirror": {"Service": "shadow", "Percent": 200},
        "PassiveHealthCheck": {"MaxEjectionPercent": 150}}));
    let mut f = fields(&e, &[]);
    f.sort();
    assert_eq!(
        f,
        [
            "FaultInjection.Abort.Percent",
            "FaultInjection.Delay.Percent",
            "Mirror.Percent",
            "PassiveHealthCheck.MaxEjectionPercent"
        ]
    );
}

#[test]
fn unknown_subset_is_refused_against_stored_resolver() {
    let resolver = entry(json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == \"v2\""}}}));
    let split = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v3"}]}));
    assert_eq!(
        fields(&split, std::slice::from_ref(&resolver)),
        ["Splits[1].ServiceSubset"]
    );
    assert_eq!(
        fields(&split, &[]),
        ["Splits[0].ServiceSubset", "Splits[1].ServiceSubset"]
    );
    let router = entry(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Destination": {"ServiceSubset": "v9"}}]}));
    assert_eq!(
        fields(&router, std::slice::from_ref(&resolver)),
        ["Routes[0].Destination.ServiceSubset"]
    );
    // A resolver that drops a subset a stored splitter uses is refused too.
    let ok_split = entry(json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 100, "ServiceSubset": "v2"}]}));
    let shrunk = entry(json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}));
    assert_eq!(fields(&shrunk, &[resolver, ok_split]), ["Subsets"]);
}

#[test]
fn filters_parse_into_clauses_and_bad_ones_are_refused() {
    let e = entry(json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"c": {"Filter": "\"canary\" in Service.Tags and Service.Meta.zone != b"},
                    "bad": {"Filter": "Service.Port > 3"}}}));
    assert_eq!(fields(&e, &[]), ["Subsets.bad.Filter"]);
    assert_eq!(
        super::filter::parse("\"canary\" in Service.Tags and Service.Meta.zone != b").unwrap(),
        [
            FilterClause::HasTag {
                tag: "canary".into()
            },
            FilterClause::MetaNotEquals {
                key: "zone".into(),
                value: "b".into()
            }
        ]
    );
    assert!(super::filter::parse("").unwrap().is_empty());
}

#[test]
fn hcl_and_json_files_parse_to_the_same_entry() {
    let hcl = r#"
Kind = "service-router"
Name = "web"
Routes = [
  {
    Match = { HTTP = { PathPrefix = "/admin", Methods = ["GET"] } }
    Destination = { Service = "admin", NumRetries = 2, RetryOn = ["5xx"] }
  },
]
"#;
    let json = r#"{"Kind": "service-router", "Name": "web", "Routes": [
      {"Match": {"HTTP": {"PathPrefix": "/admin", "Methods": ["GET"]}},
       "Destination": {"Service": "admin", "NumRetries": 2, "RetryOn": ["5xx"]}}]}"#;
    let a = ConfigEntry::parse_file_text(Path::new("r.hcl"), hcl).unwrap();
    let b = ConfigEntry::parse_file_text(Path::new("r.json"), json).unwrap();
    assert_eq!(a, b);
    assert!(ConfigEntry::parse_file_text(Path::new("r.yaml"), json).is_err());
}

#[test]
fn compile_expands_router_splitter_resolver() {
    let stored = vec![
        entry(
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "RateLimits": {"InstanceLevel": {"RequestsPerSecond": 5}}}),
        ),
        entry(
            json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
            "Failover": {"v2": {"ServiceSubset": "v1"}},
            "LoadBalancer": {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "X-User"}]}}),
        ),
        entry(json!({"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})),
        entry(json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Name": "canary", "Match": {"HTTP": {"Header": [{"Name": "X-Canary", "Exact": "1"}]}},
             "Destination": {"ServiceSubset": "v2", "NumRetries": 3, "RetryOnConnectFailure": true, "RequestTimeout": "2s"}}]})),
    ];
    let chain = compile("web", &stored);
    assert_eq!(chain.protocol, super::chain::Protocol::Http);
    assert_eq!(chain.routes.len(), 2);
    assert_eq!(chain.routes[0].name, "canary");
    assert_eq!(chain.routes[0].matcher.headers[0].name, "x-canary");
    assert_eq!(chain.routes[0].splits.len(), 1);
    assert_eq!(chain.routes[0].splits[0].target, "v2.web");
    assert_eq!(chain.routes[0].retry.num_retries, 3);
    assert_eq!(chain.routes[0].retry.retry_on, [RetryOn::ConnectFailure]);
    assert_eq!(chain.routes[1].name, "default");
    let weights: Vec<(f64, &str)> = chain.routes[1]
        .splits
        .iter()
        .map(|s| (s.weight, s.target.as_str()))
        .collect();
    assert_eq!(weights, [(90.0, "v1.web"), (10.0, "v2.web")]);
    assert_eq!(chain.targets["v2.web"].failover, ["v1.web"]);
    assert_eq!(
        chain.targets["v1.web"].filter_expression,
        "Service.Meta.version == v1"
    );
    assert_eq!(chain.policy.rate_limit.unwrap().burst, 5);
    // Without entries: tcp, one default route to the whole service.
    let bare = compile("db", &stored);
    assert_eq!(bare.protocol, super::chain::Protocol::Tcp);
    assert_eq!(bare.routes.len(), 1);
    assert_eq!(bare.routes[0].splits[0].target, "db");
}

#[test]
fn consul_style_hcl_with_nested_blocks_parses() {
    let hcl = r#"
Kind = "service-router"
Name = "web"
Routes = [
  {
    Match {
      HTTP {
        PathPrefix = "/admin"
        Header = [
          { Name = "x-debug", Present = true },
        ]
      }
    }
    Destination {
      Service     = "admin"
      RetryOn     = ["5xx", "gateway-error"]
    }
  },
]
"#;
    let e = ConfigEntry::parse_file_text(Path::new("r.hcl"), hcl).unwrap();
    let ConfigEntry::ServiceRouter(r) = e else {
        panic!("{e:?}")
    };
    let http = r.routes[0].r#match.as_ref().unwrap().http.as_ref().unwrap();
    assert_eq!(http.path_prefix.as_deref(), Some("/admin"));
    assert!(http.header[0].present);
    assert_eq!(
        r.routes[0].destination.as_ref().unwrap().retry_on,
        ["5xx", "gateway-error"]
    );
}

#[test]
fn hcl1_rewrite_leaves_strings_comments_and_attributes_alone() {
    let text = "A = \"x {\" # B {\nC = { D { E = 1 } }\n";
    assert_eq!(
        super::hcl1::blocks_to_attributes(text),
        "A = \"x {\" # B {\nC = { D = { E = 1 } }\n"
    );
}

#[test]
fn names_must_be_service_names() {
    let e = entry(json!({"Kind": "service-splitter", "Name": "web/x",
        "Splits": [{"Weight": 100, "Service": "a b"}]}));
    assert_eq!(fields(&e, &[]), ["Name", "Splits[0].Service"]);
    let e = entry(json!({"Kind": "service-defaults", "Name": ""}));
    assert_eq!(fields(&e, &[]), ["Name"]);
}

mod properties {
    //! Arbitrary config entries (issue 16's fuzzing on stable): JSON shaped like entries (known
    //! kinds and field names, values of any type), any text as an HCL or JSON file, any filter
    //! expression. Decoding, validation, reference checks and compilation never panic, and a
    //! refusal always says what is wrong.

    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::filter;
    use super::*;

    const FIELDS: &[&str] = &[
        "Kind",
        "Name",
        "Protocol",
        "DefaultSubset",
        "Subsets",
        "Filter",
        "OnlyPassing",
        "Redirect",
        "Failover",
        "Service",
        "ServiceSubset",
        "Splits",
        "Weight",
        "Routes",
        "Match",
        "HTTP",
        "PathPrefix",
        "PathExact",
        "PathRegex",
        "Header",
        "Methods",
        "Destination",
        "NumRetries",
        "RetryOnStatusCodes",
        "RequestTimeout",
        "Meta",
        "ConnectTimeout",
        "LoadBalancer",
        "Policy",
        "Targets",
        "Present",
        "Exact",
        "Invert",
        "PrefixRewrite",
        "RetryOn",
        "QueryParam",
        "Regex",
        "kind",
        "name",
    ];
    const KINDS: &[&str] = &[
        "service-defaults",
        "service-resolver",
        "service-splitter",
        "service-router",
        "ingress-gateway",
        "",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop::sample::select(KINDS).prop_map(Value::from),
            "[a-z0-9./*=\" -]{0,12}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..6).prop_map(
                    |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                ),
            ]
        })
    }

    /// An object with a known kind and a name, the rest arbitrary: gets past the first checks.
    fn entry_like() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(KINDS),
            "[a-z]{1,6}",
            prop::collection::btree_map(prop::sample::select(FIELDS), value(), 0..6),
        )
            .prop_map(|(kind, name, rest)| {
                let mut object: serde_json::Map<String, Value> =
                    rest.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                object.insert("Kind".into(), kind.into());
                object.insert("Name".into(), name.into());
                Value::Object(object)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_entry_json_decodes_validates_and_compiles_or_says_why(
            json in prop_oneof![entry_like(), value()],
            stored in prop::collection::vec(entry_like(), 0..3),
        ) {
            match ConfigEntry::from_json(json) {
                Err(error) => prop_assert!(!error.message.is_empty()),
                Ok(entry) => {
                    let stored: Vec<ConfigEntry> = stored
                        .into_iter()
                        .filter_map(|v| ConfigEntry::from_json(v).ok())
                        .filter(|e| validate(e).is_ok())
                        .collect();
                    match validate(&entry) {
                        Err(errors) => {
                            prop_assert!(!errors.0.is_empty());
                            prop_assert!(errors.0.iter().all(|e| !e.message.is_empty()));
                        }
                        Ok(()) => {
                            let _ = check_references(&entry, &stored);
                            let mut all = stored.clone();
                            all.push(entry.clone());
                            let _ = compile(entry.name(), &all);
                        }
                    }
                }
            }
        }

        #[test]
        fn any_file_text_parses_or_says_why(
            text in prop_oneof![".{0,200}", "[A-Za-z{}=\\[\\]\"# \n:,0-9.-]{0,200}"],
            json in any::<bool>(),
        ) {
            let file = if json { "e.json" } else { "e.hcl" };
            if let Err(error) = ConfigEntry::parse_file_text(Path::new(file), &text) {
                prop_assert!(!error.message.is_empty());
            }
        }

        #[test]
        fn any_filter_expression_parses_or_says_why(
            expr in prop_oneof![
                ".{0,60}",
                "(Service\\.(Meta\\.[a-z]{1,3}|Tags)|\"[a-z]{0,3}\"|==|!=|in|not|and|contains| ){0,12}",
            ]
        ) {
            if let Err(message) = filter::parse(&expr) {
                prop_assert!(!message.is_empty());
            }
        }
    }
}

#[test]
fn resolver_failover_to_datacenters_compiles_and_bad_names_are_refused() {
    let resolver = entry(json!({"Kind": "service-resolver", "Name": "echo",
        "Failover": {"*": {"Datacenters": ["dc2", "dc3"]}}}));
    assert!(fields(&resolver, &[]).is_empty());
    let chain = compile("echo", &[resolver]);
    let target = chain.targets.values().next().unwrap();
    assert_eq!(target.failover_datacenters, ["dc2", "dc3"]);
    assert!(target.failover.is_empty());
    let bad = entry(json!({"Kind": "service-resolver", "Name": "echo",
        "Failover": {"*": {"Datacenters": ["dc 2"]}}}));
    assert_eq!(fields(&bad, &[]), ["Failover.*.Datacenters[0]"]);
    let empty = entry(json!({"Kind": "service-resolver", "Name": "echo",
        "Failover": {"*": {}}}));
    assert_eq!(fields(&empty, &[]), ["Failover.*"]);
}

#[test]
fn route_and_split_header_changes_compile_and_bad_ones_name_their_field() {
    let splitter = entry(
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 50, "ServiceSubset": "v1", "ResponseHeaders": {"Add": {"x-version": "v1"}}},
        {"Weight": 50, "ServiceSubset": "v2",
         "RequestHeaders": {"Set": {"x-canary": "1"}, "Remove": ["x-debug"]}}]}),
    );
    let router = entry(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}},
         "Destination": {"ServiceSubset": "v1",
             "RequestHeaders": {"Add": {"x-route": "admin"}},
             "ResponseHeaders": {"Remove": ["server"]}}}]}));
    let resolver = entry(json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                    "v2": {"Filter": "Service.Meta.version == v2"}}}));
    for e in [&splitter, &router] {
        assert!(
            fields(e, std::slice::from_ref(&resolver)).is_empty(),
            "{e:?}"
        );
    }
    let chain = compile("web", &[resolver, splitter, router]);
    let admin = &chain.routes[0].headers;
    assert_eq!(admin.request.as_ref().unwrap().add["x-route"], "admin");
    assert_eq!(admin.response.as_ref().unwrap().remove, ["server"]);
    assert!(chain.routes[0].splits[0].headers.is_empty());
    let default = &chain.routes[1];
    assert!(default.headers.is_empty());
    assert_eq!(
        default.splits[0].headers.response.as_ref().unwrap().add["x-version"],
        "v1"
    );
    let canary = default.splits[1].headers.request.as_ref().unwrap();
    assert_eq!(
        (canary.set["x-canary"].as_str(), canary.remove.as_slice()),
        ("1", ["x-debug".to_owned()].as_slice())
    );
    // The chain's JSON carries them, and leaves them out when there are none.
    let json = serde_json::to_value(&chain).unwrap();
    assert_eq!(
        json["routes"][0]["headers"]["request"]["Add"]["x-route"],
        "admin"
    );
    assert!(json["routes"][1].get("headers").is_none());

    let bad = entry(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Destination": {"RequestHeaders": {"Set": {"bad name": "x"}},
                         "ResponseHeaders": {"Add": {"x-ok": "line\nbreak"}}}}]}));
    assert_eq!(
        fields(&bad, &[]),
        [
            "Routes[0].Destination.RequestHeaders.Set",
            "Routes[0].Destination.ResponseHeaders"
        ]
    );
    let bad = entry(
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 100, "RequestHeaders": {"Remove": [""]}}]}),
    );
    assert_eq!(fields(&bad, &[]), ["Splits[0].RequestHeaders.Remove"]);
    let err = ConfigEntry::from_json(json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Destination": {"RequestHeaders": {"Append": {"x": "1"}}}}]}))
    .unwrap_err();
    assert!(err.to_string().contains("Append"), "{err}");
}

#[test]
fn resolver_redirects_compile_to_their_target_and_bad_ones_name_their_field() {
    let resolver = |name: &str, extra: serde_json::Value| {
        let mut v = json!({"Kind": "service-resolver", "Name": name});
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        entry(v)
    };
    let v2 = json!({"Subsets": {"v2": {"Filter": "Service.Meta.version == v2"}}});
    // web → web-next (its default subset), which → itself's v2: two redirects, one target.
    let stored = vec![
        resolver("web", json!({"Redirect": {"Service": "web-next"}})),
        resolver(
            "web-next",
            json!({"Subsets": v2["Subsets"], "Redirect": {"Service": "web-next", "ServiceSubset": "v2"}}),
        ),
    ];
    for e in &stored {
        assert!(
            fields(e, &stored).is_empty(),
            "{e:?}: {:?}",
            fields(e, &stored)
        );
    }
    let chain = compile("web", &stored);
    let targets: Vec<_> = chain.targets.values().collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].service, "web-next");
    assert_eq!(targets[0].subset.as_deref(), Some("v2"));
    assert_eq!(
        chain.routes[0].splits[0].target,
        chain.targets.keys().next().cloned().unwrap()
    );
    // A loop is refused where it closes, and compiling one anyway still ends.
    let looped = vec![
        resolver("a", json!({"Redirect": {"Service": "b"}})),
        resolver("b", json!({"Redirect": {"Service": "a"}})),
    ];
    assert_eq!(fields(&looped[1], &looped[..1]), ["Redirect.Service"]);
    assert_eq!(compile("a", &looped).targets.len(), 1);

    for (extra, field) in [
        (json!({"Redirect": {}}), "Redirect"),
        (
            json!({"Redirect": {"ServiceSubset": "v2"}}),
            "Redirect.ServiceSubset",
        ),
        (json!({"Redirect": {"Service": "web"}}), "Redirect.Service"),
        (
            json!({"Redirect": {"Service": "web", "ServiceSubset": "v9"}}),
            "Redirect.ServiceSubset",
        ),
        (
            json!({"Redirect": {"Service": "api", "Datacenter": "dc2"}}),
            "Redirect.Datacenter",
        ),
        (
            json!({"Redirect": {"Service": "api", "Namespace": "team"}}),
            "Redirect.Namespace",
        ),
        (json!({"Redirect": {"Service": "a b"}}), "Redirect.Service"),
        (
            json!({"Redirect": {"Service": "api"}, "Failover": {"*": {"Service": "db"}}}),
            "Redirect",
        ),
    ] {
        assert_eq!(
            fields(&resolver("web", extra.clone()), &[]),
            [field],
            "{extra}"
        );
    }
    // The subset of another service must exist in its resolver.
    let to_missing = resolver(
        "web",
        json!({"Redirect": {"Service": "api", "ServiceSubset": "v2"}}),
    );
    assert_eq!(fields(&to_missing, &[]), ["Redirect.ServiceSubset"]);
    let api = resolver("api", v2);
    assert!(fields(&to_missing, std::slice::from_ref(&api)).is_empty());
}

#[test]
fn a_split_to_a_service_with_a_splitter_goes_through_it() {
    let web = entry(
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 50, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-from": "web"}}},
            {"Weight": 50, "Service": "web-next",
                "RequestHeaders": {"Set": {"x-from": "web", "x-outer": "1"}, "Remove": ["a"]}},
        ]}),
    );
    let next = entry(
        json!({"Kind": "service-splitter", "Name": "web-next", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-from": "next"}, "Remove": ["b"]}},
            {"Weight": 20, "ServiceSubset": "v2"},
        ]}),
    );
    let resolvers = [
        entry(json!({"Kind": "service-resolver", "Name": "web",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}})),
        entry(json!({"Kind": "service-resolver", "Name": "web-next",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                        "v2": {"Filter": "Service.Meta.version == v2"}}})),
    ];
    let mut entries = vec![web, next];
    entries.extend(resolvers);
    let chain = compile("web", &entries);
    let splits: Vec<(f64, String)> = chain.routes[0]
        .splits
        .iter()
        .map(|s| (s.weight, s.target.clone()))
        .collect();
    assert_eq!(
        splits,
        [
            (50.0, "v1.web".to_owned()),
            (40.0, "v1.web-next".to_owned()),
            (10.0, "v2.web-next".to_owned())
        ]
    );
    // The inner split's changes after the outer's: its Set wins, removes add up.
    let inner = chain.routes[0].splits[1].headers.request.clone().unwrap();
    assert_eq!(inner.set["x-from"], "next");
    assert_eq!(inner.set["x-outer"], "1");
    assert_eq!(inner.remove, ["a", "b"]);
    let plain = chain.routes[0].splits[2].headers.request.clone().unwrap();
    assert_eq!(plain.set["x-from"], "web");

    // Splitters naming each other end: the second visit is a plain target.
    let a = entry(json!({"Kind": "service-splitter", "Name": "a", "Splits": [
        {"Weight": 100, "Service": "b"}]}));
    let b = entry(json!({"Kind": "service-splitter", "Name": "b", "Splits": [
        {"Weight": 100, "Service": "a"}]}));
    let chain = compile("a", &[a, b]);
    assert_eq!(chain.routes[0].splits.len(), 1);
    assert_eq!(chain.routes[0].splits[0].weight, 100.0);
}
