//! The decision, its precedence rules (property-tested against a brute force), L7 rules and
//! their validation, and Consul's JSON forms.

use super::*;
use proptest::prelude::*;

fn intention(id: &str, source: &str, destination: &str, action: IntentionAction) -> IntentionInput {
    IntentionInput::l4(id, source, destination, action)
}

use IntentionAction::{Allow, Deny};

#[test]
fn exact_beats_wildcard_and_default_applies_otherwise() {
    let set = [
        intention("a", "*", "db", Deny),
        intention("b", "web", "db", Allow),
        intention("c", "*", "*", Deny),
    ];
    let d = decide(&set, "web", "db", DefaultPolicy::Allow);
    assert!(d.allowed);
    assert_eq!(d.matched.as_deref(), Some("b"));
    let d = decide(&set, "api", "db", DefaultPolicy::Allow);
    assert!(!d.allowed);
    assert_eq!(d.matched.as_deref(), Some("a"));
    let d = decide(&set, "api", "cache", DefaultPolicy::Allow);
    assert_eq!(d.matched.as_deref(), Some("c"));
    let d = decide(&[], "api", "cache", DefaultPolicy::Deny);
    assert!(!d.allowed);
    assert!(d.reason.contains("default intention policy: deny"));
    // Wildcard source with exact destination beats exact source with wildcard destination.
    let set = [
        intention("s", "web", "*", Allow),
        intention("d", "*", "db", Deny),
    ];
    assert_eq!(
        decide(&set, "web", "db", DefaultPolicy::Allow)
            .matched
            .as_deref(),
        Some("d")
    );
}

#[test]
fn deny_wins_a_tie() {
    let set = [
        intention("x", "web", "db", Allow),
        intention("y", "web", "db", Deny),
    ];
    assert!(!decide(&set, "web", "db", DefaultPolicy::Allow).allowed);
    let reversed = [set[1].clone(), set[0].clone()];
    assert!(!decide(&reversed, "web", "db", DefaultPolicy::Allow).allowed);
}

fn l7(id: &str, source: &str, destination: &str) -> IntentionInput {
    IntentionInput {
        action: None,
        permissions: vec![IntentionPermission {
            action: Allow,
            http: Some(IntentionHttpPermission {
                path_prefix: "/v2".into(),
                ..Default::default()
            }),
        }],
        ..IntentionInput::l4(id, source, destination, Allow)
    }
}

#[test]
fn an_l7_intention_governs_by_precedence_and_denies_without_a_request() {
    let set = [l7("l7", "web", "db"), intention("all", "*", "db", Allow)];
    let winner = governing(&set, "web", "db").expect("a match");
    assert_eq!(winner.id, "l7");
    let d = decide(&set, "web", "db", DefaultPolicy::Allow);
    assert!(!d.allowed, "a connection cannot satisfy permissions");
    assert_eq!(d.matched.as_deref(), Some("l7"));
    assert!(d.reason.contains("Matched L7 intention"), "{}", d.reason);
    // Other sources still get the wildcard's L4 allow.
    assert!(decide(&set, "api", "db", DefaultPolicy::Deny).allowed);
    // A more precise L4 intention beats a wildcard L7 one.
    let set = [l7("l7", "*", "db"), intention("exact", "web", "db", Allow)];
    assert_eq!(
        governing(&set, "web", "db").map(|i| i.id.as_str()),
        Some("exact")
    );
    assert_eq!(
        governing(&set, "api", "db").map(|i| i.id.as_str()),
        Some("l7")
    );
}

#[test]
fn action_reads_as_consul_clients_write_it() {
    let read = |action: serde_json::Value| {
        serde_json::from_value::<Intention>(serde_json::json!({
            "SourceName": "web", "DestinationName": "db", "Action": action,
        }))
    };
    assert_eq!(read("allow".into()).unwrap().action, Some(Allow));
    assert_eq!(read("".into()).unwrap().action, None);
    assert_eq!(read(serde_json::Value::Null).unwrap().action, None);
    let error = read("permit".into()).unwrap_err().to_string();
    assert!(error.contains("\"permit\""), "{error}");
    // Written back without an Action when it has none.
    let mut l7 = read("".into()).unwrap();
    l7.permissions = vec![IntentionPermission {
        action: Deny,
        http: Some(IntentionHttpPermission {
            methods: vec!["DELETE".into()],
            ..Default::default()
        }),
    }];
    let json = serde_json::to_value(&l7).unwrap();
    assert!(json.get("Action").is_none(), "{json}");
    assert_eq!(json["Permissions"][0]["HTTP"]["Methods"][0], "DELETE");
    assert_eq!(serde_json::from_value::<Intention>(json).unwrap(), l7);
}

#[test]
fn invalid_rules_name_the_field() {
    let http = |h: IntentionHttpPermission| IntentionPermission {
        action: Allow,
        http: Some(h),
    };
    let header = |h: IntentionHttpHeaderPermission| IntentionHttpPermission {
        header: vec![h],
        ..Default::default()
    };
    let cases: Vec<(
        Option<IntentionAction>,
        Vec<IntentionPermission>,
        &str,
        &str,
    )> = vec![
        (None, vec![], "Action", "required"),
        (
            Some(Allow),
            vec![http(IntentionHttpPermission {
                path_exact: "/a".into(),
                ..Default::default()
            })],
            "Action",
            "omitted",
        ),
        (
            None,
            vec![IntentionPermission {
                action: Allow,
                http: None,
            }],
            "Permissions[0].HTTP",
            "required",
        ),
        (
            None,
            vec![http(IntentionHttpPermission::default())],
            "Permissions[0].HTTP",
            "path, a header or a method",
        ),
        (
            None,
            vec![http(IntentionHttpPermission {
                path_exact: "/a".into(),
                path_prefix: "/b".into(),
                ..Default::default()
            })],
            "Permissions[0].HTTP.PathPrefix",
            "at most one",
        ),
        (
            None,
            vec![http(IntentionHttpPermission {
                path_prefix: "v2".into(),
                ..Default::default()
            })],
            "Permissions[0].HTTP.PathPrefix",
            "begin with '/'",
        ),
        (
            None,
            vec![http(IntentionHttpPermission {
                path_regex: "(".into(),
                ..Default::default()
            })],
            "Permissions[0].HTTP.PathRegex",
            "invalid regex",
        ),
        (
            None,
            vec![http(header(IntentionHttpHeaderPermission {
                name: "x y".into(),
                present: true,
                ..Default::default()
            }))],
            "Permissions[0].HTTP.Header[0].Name",
            "not a header name",
        ),
        (
            None,
            vec![http(header(IntentionHttpHeaderPermission {
                name: "x".into(),
                ..Default::default()
            }))],
            "Permissions[0].HTTP.Header[0]",
            "exactly one",
        ),
        (
            None,
            vec![http(header(IntentionHttpHeaderPermission {
                name: "x".into(),
                exact: "a".into(),
                prefix: "b".into(),
                ..Default::default()
            }))],
            "Permissions[0].HTTP.Header[0]",
            "exactly one",
        ),
        (
            None,
            vec![http(header(IntentionHttpHeaderPermission {
                name: "x".into(),
                regex: "[".into(),
                ..Default::default()
            }))],
            "Permissions[0].HTTP.Header[0].Regex",
            "invalid regex",
        ),
        (
            None,
            vec![
                http(IntentionHttpPermission {
                    path_exact: "/".into(),
                    ..Default::default()
                }),
                http(IntentionHttpPermission {
                    methods: vec!["get".into()],
                    ..Default::default()
                }),
            ],
            "Permissions[1].HTTP.Methods[0]",
            "is not one of",
        ),
        (
            None,
            vec![http(IntentionHttpPermission {
                methods: vec!["GET".into(), "GET".into()],
                ..Default::default()
            })],
            "Permissions[0].HTTP.Methods[1]",
            "twice",
        ),
    ];
    for (action, permissions, field, words) in cases {
        let (got_field, message) = validate_rule(action, &permissions).unwrap_err();
        assert_eq!(got_field, field, "{message}");
        assert!(message.contains(words), "{field}: {message}");
    }
    let contains = IntentionHttpHeaderPermission {
        name: "x".into(),
        contains: "a".into(),
        ignore_case: true,
        ..Default::default()
    };
    validate_rule(None, &[http(header(contains.clone()))]).unwrap();
    let m = header(contains).request_match();
    assert_eq!(m.headers[0].value, ValueMatch::Contains("a".into()));
    assert!(m.headers[0].ignore_case);
    let two = IntentionHttpHeaderPermission {
        name: "x".into(),
        contains: "a".into(),
        suffix: "b".into(),
        ..Default::default()
    };
    let (field, _) = validate_rule(None, &[http(header(two))]).unwrap_err();
    assert_eq!(field, "Permissions[0].HTTP.Header[0]");
    let good = http(IntentionHttpPermission {
        path_regex: "/v[0-9]+/.*".into(),
        header: vec![IntentionHttpHeaderPermission {
            name: "X-Role".into(),
            exact: "admin".into(),
            invert: true,
            ..Default::default()
        }],
        methods: vec!["GET".into(), "HEAD".into()],
        ..Default::default()
    });
    validate_rule(None, std::slice::from_ref(&good)).unwrap();
    let m = good.http.unwrap().request_match();
    assert_eq!(m.path, Some(PathMatch::Regex("/v[0-9]+/.*".into())));
    assert_eq!(m.headers[0].name, "x-role");
    assert_eq!(m.headers[0].value, ValueMatch::Exact("admin".into()));
    assert!(m.headers[0].invert);
    assert_eq!(m.methods, ["GET", "HEAD"]);
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("*".to_owned()), "[a-c]".prop_map(|s| s)]
}

fn action() -> impl Strategy<Value = IntentionAction> {
    prop_oneof![Just(Allow), Just(Deny)]
}

fn intentions() -> impl Strategy<Value = Vec<IntentionInput>> {
    proptest::collection::vec((name(), name(), action()), 0..8).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (s, d, a))| intention(&i.to_string(), &s, &d, a))
            .collect()
    })
}

proptest! {
    /// The order intentions are listed in never changes the outcome.
    #[test]
    fn order_does_not_matter(set in intentions(), src in "[a-c]", dst in "[a-c]", deny_default: bool) {
        let default = if deny_default { DefaultPolicy::Deny } else { DefaultPolicy::Allow };
        let forward = decide(&set, &src, &dst, default).allowed;
        let mut reversed = set.clone();
        reversed.reverse();
        prop_assert_eq!(forward, decide(&reversed, &src, &dst, default).allowed);
    }

    /// The decision equals the action of the highest-precedence match (deny if any deny at
    /// that precedence), or the default when nothing matches: checked against a brute force.
    #[test]
    fn matches_the_specification(set in intentions(), src in "[a-c]", dst in "[a-c]", deny_default: bool) {
        let default = if deny_default { DefaultPolicy::Deny } else { DefaultPolicy::Allow };
        let matching: Vec<_> = set.iter()
            .filter(|i| (i.source == "*" || i.source == src) && (i.destination == "*" || i.destination == dst))
            .collect();
        let expected = match matching.iter().map(|i| precedence(&i.source, &i.destination)).max() {
            None => default == DefaultPolicy::Allow,
            Some(top) => !matching.iter().any(|i| precedence(&i.source, &i.destination) == top && i.action == Some(Deny)),
        };
        let decision = decide(&set, &src, &dst, default);
        prop_assert_eq!(decision.allowed, expected);
        prop_assert_eq!(decision.matched.is_none(), matching.is_empty());
    }

    /// Adding an exact deny for the pair always denies; adding an exact allow always allows
    /// unless an exact deny for the pair exists.
    #[test]
    fn an_exact_intention_decides(set in intentions(), src in "[a-c]", dst in "[a-c]") {
        let mut with_deny = set.clone();
        with_deny.push(intention("deny", &src, &dst, Deny));
        prop_assert!(!decide(&with_deny, &src, &dst, DefaultPolicy::Allow).allowed);
        let exact_deny = set.iter().any(|i| i.source == src && i.destination == dst && i.action == Some(Deny));
        let mut with_allow = set.clone();
        with_allow.push(intention("allow", &src, &dst, Allow));
        prop_assert_eq!(decide(&with_allow, &src, &dst, DefaultPolicy::Deny).allowed, !exact_deny);
    }
}
