use proptest::prelude::*;

use super::*;

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::Deny),
        Just(Access::Read),
        Just(Access::List),
        Just(Access::Write)
    ]
}

fn authz(rules: &[Rules], default: DefaultPolicy) -> Authorizer {
    Authorizer::from_rules("acc-1", rules, default)
}

#[test]
fn denied_reads_like_consul() {
    let a = authz(&[], DefaultPolicy::Deny);
    let denied = a.require_service_write("web").unwrap_err();
    assert_eq!(
        denied.to_string(),
        "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:write' on \"web\""
    );
    let denied = a.require_operator_write().unwrap_err();
    assert_eq!(
        denied.to_string(),
        "Permission denied: token with AccessorID 'acc-1' lacks permission 'operator:write'"
    );
}

#[test]
fn disabled_allows_everything() {
    let a = Authorizer::allow_all();
    assert!(!a.enforcing());
    assert!(a.require_acl_write().is_ok());
    assert!(a.require_key_write_prefix("").is_ok());
}

#[test]
fn default_allow_keeps_acl_management_closed() {
    let a = authz(&[], DefaultPolicy::Allow);
    assert!(a.require_service_write("x").is_ok());
    assert!(a.require_operator_write().is_ok());
    assert!(a.require_acl_read().is_err());
    let b = authz(&[], DefaultPolicy::Deny);
    assert!(!b.can_read_service("x"));
}

#[test]
fn intentions_follow_service_rules_unless_written() {
    let mut rules = Rules::default()
        .with(Resource::Service, "web", false, Access::Write)
        .with(Resource::Service, "db", false, Access::Read)
        .with(Resource::Service, "api", false, Access::Read);
    rules.segments[2].intentions = Some(Access::Write);
    let a = authz(&[rules], DefaultPolicy::Deny);
    assert!(a.require_intention_read("web").is_ok());
    assert!(a.require_intention_write("web").is_err());
    assert!(a.require_intention_read("db").is_ok());
    assert!(a.require_intention_write("api").is_ok());
    assert!(a.require_intention_read("other").is_err());
}

#[test]
fn identities_are_templated_as_consul_does() {
    let a = authz(&[Rules::service_identity("web")], DefaultPolicy::Deny);
    assert!(a.require_service_write("web").is_ok());
    assert!(a.require_service_write("web-sidecar-proxy").is_ok());
    assert!(a.require_service_write("db").is_err());
    assert!(a.can_read_service("db"));
    assert!(a.can_read_node("n1"));
    assert!(a.require_node_write("n1").is_err());
    let n = authz(&[Rules::node_identity("n1")], DefaultPolicy::Deny);
    assert!(n.require_node_write("n1").is_ok());
    assert!(n.require_node_write("n2").is_err());
    assert!(n.can_read_service("web"));
    let m = authz(&[Rules::global_management()], DefaultPolicy::Deny);
    assert!(m.require_acl_write().is_ok());
    assert!(m.require_intention_write("any").is_ok());
    assert!(m.require_key_write_prefix("").is_ok());
}

#[test]
fn read_all_needs_every_rule_to_read() {
    let svc = authz(&[Rules::service_identity("web")], DefaultPolicy::Deny);
    assert!(svc.can_read_all(Resource::Node));
    assert!(svc.can_read_all(Resource::Service));
    let narrow = authz(
        &[Rules::default().with(Resource::Node, "n1", false, Access::Read)],
        DefaultPolicy::Deny,
    );
    assert!(!narrow.can_read_all(Resource::Node));
    let denied = authz(
        &[Rules::default()
            .with(Resource::Node, "", true, Access::Read)
            .with(Resource::Node, "secret", false, Access::Deny)],
        DefaultPolicy::Deny,
    );
    assert!(!denied.can_read_all(Resource::Node));
    assert!(authz(&[], DefaultPolicy::Allow).can_read_all(Resource::Key));
}

#[test]
fn recursive_key_write_needs_write_below_the_prefix() {
    let rules = Rules::default()
        .with(Resource::Key, "app/", true, Access::Write)
        .with(Resource::Key, "app/secret", false, Access::Read);
    let a = authz(&[rules], DefaultPolicy::Deny);
    assert!(a.require_key_write("app/x").is_ok());
    assert!(a.require_key_write_prefix("app/").is_err());
    assert!(a.require_key_write_prefix("app/x/").is_ok());
    let read = authz(
        &[Rules::default().with(Resource::Key, "", true, Access::Read)],
        DefaultPolicy::Deny,
    );
    assert!(read.require_key_write_prefix("").is_err());
    assert!(read.require_key_list("").is_err());
}

proptest! {
    /// An exact rule decides, whatever prefix rules say.
    #[test]
    fn exact_beats_prefix(name in "[a-z]{1,8}", exact in access(), prefixes in prop::collection::vec((0usize..8, access()), 0..6)) {
        let mut rules = Rules::default().with(Resource::Service, &name, false, exact);
        for (len, a) in &prefixes {
            let cut = (*len).min(name.len());
            rules = rules.with(Resource::Service, &name[..cut], true, *a);
        }
        let az = authz(&[rules], DefaultPolicy::Allow);
        prop_assert_eq!(az.access(Resource::Service, &name), exact);
    }

    /// Without an exact rule, the longest matching prefix decides (deny winning a tie between
    /// two rules for the same prefix); without any, the default.
    #[test]
    fn longest_prefix_wins(name in "[a-z]{0,8}", prefixes in prop::collection::vec((0usize..9, access(), any::<bool>()), 0..8), default_allow in any::<bool>()) {
        let mut rules = Rules::default();
        let mut expected: Option<(usize, Access)> = None;
        for (len, a, matching) in &prefixes {
            let cut = (*len).min(name.len());
            let prefix = if *matching { name[..cut].to_owned() } else { format!("{}#", &name[..cut]) };
            rules = rules.with(Resource::Key, &prefix, true, *a);
            if *matching {
                expected = match expected {
                    Some((l, e)) if l > cut => Some((l, e)),
                    Some((l, e)) if l == cut => Some((l, e.merge(*a))),
                    _ => Some((cut, *a)),
                };
            }
        }
        let default = if default_allow { DefaultPolicy::Allow } else { DefaultPolicy::Deny };
        let az = authz(&[rules], default);
        let want = expected.map(|(_, a)| a).unwrap_or(if default_allow { Access::Write } else { Access::Deny });
        prop_assert_eq!(az.access(Resource::Key, &name), want);
    }

    /// The same rule in several policies: deny wins, otherwise the larger grant, in any order.
    #[test]
    fn deny_wins_ties_across_policies(name in "[a-z]{1,6}", grants in prop::collection::vec(access(), 1..5), prefix in any::<bool>()) {
        let policies: Vec<Rules> = grants.iter().map(|a| Rules::default().with(Resource::Node, &name, prefix, *a)).collect();
        let az = authz(&policies, DefaultPolicy::Allow);
        let want = if grants.contains(&Access::Deny) { Access::Deny } else { *grants.iter().max().unwrap() };
        prop_assert_eq!(az.access(Resource::Node, &name), want);
        let mut reversed = policies.clone();
        reversed.reverse();
        prop_assert_eq!(authz(&reversed, DefaultPolicy::Allow).access(Resource::Node, &name), want);
    }
}
