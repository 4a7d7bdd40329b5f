use super::*;
use crate::acl::rules::GLOBAL_MANAGEMENT_RULES;

#[test]
fn hcl_rules_parse_as_consul_writes_them() {
    let rules = parse_rules(
        r#"
# a comment
service "web" {
  policy     = "write"
  intentions = "read"
}
service_prefix "" { policy = "read" }
key_prefix "app/" { policy = "list" }
node "n1" { policy = "deny" }
operator = "read"
acl = "write"
mesh = "read"
"#,
    )
    .unwrap();
    assert_eq!(rules.segments.len(), 4);
    let web = &rules.segments[0];
    assert_eq!(
        (
            web.resource,
            web.name.as_str(),
            web.prefix,
            web.access,
            web.intentions
        ),
        (
            Resource::Service,
            "web",
            false,
            Access::Write,
            Some(Access::Read)
        )
    );
    assert!(rules.segments[1].prefix && rules.segments[1].name.is_empty());
    assert_eq!(rules.segments[2].access, Access::List);
    assert_eq!(rules.singles[&Resource::Operator], Access::Read);
    assert_eq!(rules.singles[&Resource::Acl], Access::Write);
}

#[test]
fn one_line_blocks_of_hcl_1_are_accepted() {
    let rules = parse_rules(r#"service "web" { policy = "write" intentions = "write" }"#).unwrap();
    assert_eq!(rules.segments[0].intentions, Some(Access::Write));
}

#[test]
fn management_rules_parse_into_the_built_in_policy() {
    let parsed = parse_rules(GLOBAL_MANAGEMENT_RULES).unwrap();
    let built = crate::acl::Rules::global_management();
    let mut a = parsed.segments.clone();
    let mut b = built.segments.clone();
    a.sort_by_key(|r| r.resource);
    b.sort_by_key(|r| r.resource);
    assert_eq!(a, b);
    assert_eq!(parsed.singles, built.singles);
}

#[test]
fn json_rules_parse_too() {
    let rules = parse_rules(
        r#"{"service": {"web": {"policy": "write", "intentions": "write"}},
            "key_prefix": [{"": {"policy": "read"}}], "operator": "write"}"#,
    )
    .unwrap();
    assert_eq!(rules.segments.len(), 2);
    assert_eq!(rules.singles[&Resource::Operator], Access::Write);
}

#[test]
fn every_error_is_reported_with_its_line_and_field() {
    let errors = parse_rules(
        r#"service "web" {
  policy = "owner"
}
servce "x" { policy = "read" }
node "n" { policy = "list" }
key "k" { intentions = "read" policy = "read" }
operator "x" { policy = "read" }
service "db" {}
"#,
    )
    .unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("line 2: service \"web\".policy: invalid policy \"owner\""),
        "{text}"
    );
    assert!(text.contains("line 4: servce: unknown rule"), "{text}");
    assert!(
        text.contains("line 5: node \"n\".policy: \"list\" is only valid for key rules"),
        "{text}"
    );
    assert!(
        text.contains("line 6: key \"k\".intentions: intentions are only valid in service rules"),
        "{text}"
    );
    assert!(
        text.contains("line 7: operator: operator is an attribute"),
        "{text}"
    );
    assert!(
        text.contains("line 8: service \"db\": policy is required"),
        "{text}"
    );
    assert_eq!(errors.0.len(), 6, "{text}");

    let syntax = parse_rules("service \"web\" {\n  policy = \n").unwrap_err();
    assert!(syntax.0[0].message.contains("not valid HCL"), "{syntax}");
    assert!(syntax.0[0].line.is_some());

    let json = parse_rules(r#"{"service": {"web": {"policy": 1}}, "mesh": "list"}"#).unwrap_err();
    let text = json.to_string();
    assert!(
        text.contains("service.web.policy: expected a string"),
        "{text}"
    );
    assert!(
        text.contains("mesh: \"list\" is only valid for key rules"),
        "{text}"
    );
}

#[test]
fn empty_rules_are_an_empty_policy() {
    assert_eq!(parse_rules("").unwrap(), crate::acl::Rules::default());
    assert_eq!(
        parse_rules("  \n# nothing\n").unwrap(),
        crate::acl::Rules::default()
    );
}
