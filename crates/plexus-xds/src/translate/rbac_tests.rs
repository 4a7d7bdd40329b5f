//! L7 intentions as RBAC: the rules Envoy gets, evaluated here as Envoy evaluates them, decide
//! every request as first-match-wins over the permissions does.

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, path_matcher, string_matcher};
use plexus_api::connect::{
    DefaultPolicy, Intention, IntentionAction, IntentionHttpHeaderPermission,
    IntentionHttpPermission, IntentionPermission,
};

use super::super::tests::{http_rules, inputs, intention, network_rules};
use super::super::translate;

/// A request as the rules see it.
struct Request<'a> {
    source: &'a str,
    method: &'a str,
    path: &'a str,
    role: Option<&'a str>,
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    if m.ignore_case {
        let folded = StringMatcher {
            ignore_case: false,
            match_pattern: m.match_pattern.as_ref().map(|p| match p {
                string_matcher::MatchPattern::Exact(e) => {
                    string_matcher::MatchPattern::Exact(e.to_ascii_lowercase())
                }
                string_matcher::MatchPattern::Contains(c) => {
                    string_matcher::MatchPattern::Contains(c.to_ascii_lowercase())
                }
                other => other.clone(),
            }),
        };
        return string_matches(&folded, &value.to_ascii_lowercase());
    }
    match m.match_pattern.as_ref().expect("a pattern") {
        string_matcher::MatchPattern::Contains(c) => value.contains(c.as_str()),
        string_matcher::MatchPattern::Exact(e) => value == e,
        string_matcher::MatchPattern::Prefix(p) => value.starts_with(p.as_str()),
        string_matcher::MatchPattern::Suffix(s) => value.ends_with(s.as_str()),
        string_matcher::MatchPattern::SafeRegex(r) => {
            regex::Regex::new(&format!("^(?:{})$", r.regex))
                .expect("a regex")
                .is_match(value)
        }
        other => panic!("not used by the translation: {other:?}"),
    }
}

fn header_matches(h: &HeaderMatcher, request: &Request<'_>) -> bool {
    let value = match h.name.as_str() {
        ":method" => Some(request.method),
        "x-role" => request.role,
        _ => None,
    };
    let hit = match (h.header_match_specifier.as_ref().expect("a test"), value) {
        (_, None) => false,
        (header_matcher::HeaderMatchSpecifier::PresentMatch(p), Some(_)) => *p,
        (header_matcher::HeaderMatchSpecifier::StringMatch(m), Some(v)) => string_matches(m, v),
        (other, _) => panic!("not used by the translation: {other:?}"),
    };
    hit != h.invert_match
}

fn permits(p: &Permission, request: &Request<'_>) -> bool {
    match p.rule.as_ref().expect("a rule") {
        permission::Rule::Any(any) => *any,
        permission::Rule::NotRule(inner) => !permits(inner, request),
        permission::Rule::AndRules(set) => set.rules.iter().all(|r| permits(r, request)),
        permission::Rule::OrRules(set) => set.rules.iter().any(|r| permits(r, request)),
        permission::Rule::UrlPath(path) => {
            let Some(path_matcher::Rule::Path(m)) = &path.rule else {
                panic!("a path matcher")
            };
            string_matches(m, request.path)
        }
        permission::Rule::Header(h) => header_matches(h, request),
        other => panic!("not used by the translation: {other:?}"),
    }
}

fn is(p: &Principal, source: &str) -> bool {
    match p.identifier.as_ref().expect("an identifier") {
        principal::Identifier::Any(any) => *any,
        principal::Identifier::NotId(inner) => !is(inner, source),
        principal::Identifier::AndIds(set) => set.ids.iter().all(|id| is(id, source)),
        principal::Identifier::Authenticated(a) => string_matches(
            a.principal_name.as_ref().expect("a name"),
            &format!("spiffe://td.plexus/ns/default/dc/dc1/svc/{source}"),
        ),
        other => panic!("not used by the translation: {other:?}"),
    }
}

/// Envoy's RBAC: ALLOW lets through what some policy matches, DENY what none does.
fn envoy_allows(rules: &Rbac, request: &Request<'_>) -> bool {
    let matched = rules.policies.values().any(|policy| {
        policy.principals.iter().any(|p| is(p, request.source))
            && policy.permissions.iter().any(|p| permits(p, request))
    });
    if rules.action == rbac::Action::Allow as i32 {
        matched
    } else {
        !matched
    }
}

fn l7(
    id: &str,
    source: &str,
    permissions: Vec<(IntentionAction, IntentionHttpPermission)>,
) -> Intention {
    let mut intention = intention(id, source, "web", IntentionAction::Allow);
    intention.action = None;
    intention.permissions = permissions
        .into_iter()
        .map(|(action, http)| IntentionPermission {
            action,
            http: Some(http),
        })
        .collect();
    intention
}

/// The intentions of the tests: `client` by permissions (deny `/admin…`, allow GET under `/v2/`,
/// allow an `x-role` containing `ops` in any case), everyone else by a wildcard L7 intention
/// (allow `/health` exactly), `db` denied outright, `ops` allowed outright.
fn intentions() -> Vec<Intention> {
    use IntentionAction::{Allow, Deny};
    vec![
        l7(
            "c",
            "client",
            vec![
                (
                    Deny,
                    IntentionHttpPermission {
                        path_prefix: "/admin".into(),
                        ..Default::default()
                    },
                ),
                (
                    Allow,
                    IntentionHttpPermission {
                        path_regex: "/v2/.*".into(),
                        methods: vec!["GET".into()],
                        ..Default::default()
                    },
                ),
                (
                    Allow,
                    IntentionHttpPermission {
                        header: vec![IntentionHttpHeaderPermission {
                            name: "X-Role".into(),
                            contains: "OPS".into(),
                            ignore_case: true,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ],
        ),
        l7(
            "w",
            "*",
            vec![(
                Allow,
                IntentionHttpPermission {
                    path_exact: "/health".into(),
                    ..Default::default()
                },
            )],
        ),
        intention("d", "db", "web", Deny),
        intention("o", "ops", "web", Allow),
    ]
}

/// First match wins, written out independently of the translation.
fn expected(request: &Request<'_>, default_allow: bool) -> bool {
    match request.source {
        "db" => false,
        "ops" => true,
        "client" => {
            // deny /admin…, then allow GET /v2/…, then allow x-role: ops, then the default.
            let allowed_by = [
                (request.path.starts_with("/admin"), false),
                (
                    request.method == "GET" && request.path.starts_with("/v2/"),
                    true,
                ),
                (
                    request
                        .role
                        .is_some_and(|r| r.to_ascii_lowercase().contains("ops")),
                    true,
                ),
            ];
            allowed_by
                .iter()
                .find(|(matches, _)| *matches)
                .map_or(default_allow, |(_, allow)| *allow)
        }
        _ => request.path == "/health" || default_allow,
    }
}

#[test]
fn l7_intentions_decide_each_request_as_first_match_wins() {
    for default in [DefaultPolicy::Allow, DefaultPolicy::Deny] {
        let resources = translate(&inputs(intentions(), default));
        let rules = http_rules(&resources);
        let mut checked = 0;
        for source in ["client", "db", "ops", "other"] {
            for method in ["GET", "POST"] {
                for path in ["/v2/widgets", "/admin/users", "/health", "/healthz", "/"] {
                    for role in [None, Some("ops"), Some("dev"), Some("DevOps")] {
                        let request = Request {
                            source,
                            method,
                            path,
                            role,
                        };
                        assert_eq!(
                            envoy_allows(&rules, &request),
                            expected(&request, default == DefaultPolicy::Allow),
                            "{default:?}: {source} {method} {path} {role:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 160);
    }
}

#[test]
fn at_l4_an_l7_intention_denies_the_connection() {
    let resources = translate(&inputs(intentions(), DefaultPolicy::Allow));
    let rules = network_rules(&resources);
    for (source, allowed) in [
        ("client", false),
        ("db", false),
        ("ops", true),
        ("other", false),
    ] {
        let connection = Request {
            source,
            method: "",
            path: "",
            role: None,
        };
        assert_eq!(envoy_allows(&rules, &connection), allowed, "{source}");
    }
}
