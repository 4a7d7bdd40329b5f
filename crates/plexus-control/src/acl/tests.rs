#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use plexus_api::acl::model::{Link, PolicyWrite, RoleWrite, ServiceIdentity, TokenWrite};
use plexus_api::acl::{DefaultPolicy, SecretId};
use plexus_runtime::acl::{Resolve, ResolveError};

use super::*;
use crate::store::EmbeddedStore;

fn enabled() -> AclConfig {
    AclConfig {
        enabled: true,
        default_policy: DefaultPolicy::Deny,
        min_expiration_ttl: Duration::from_secs(1),
        ..AclConfig::default()
    }
}

async fn acl(dir: &std::path::Path) -> (Acl, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    let acl = Acl::new(Arc::clone(&store), enabled());
    acl.start(None).await.unwrap();
    (acl, store)
}

#[tokio::test]
async fn tokens_resolve_through_policies_roles_and_identities() {
    let dir = tempfile::tempdir().unwrap();
    let (acl, _) = acl(dir.path()).await;
    write::write_policy(
        &acl,
        None,
        PolicyWrite {
            name: "kv".into(),
            rules: r#"key_prefix "app/" { policy = "write" }"#.into(),
            ..PolicyWrite::default()
        },
    )
    .await
    .unwrap();
    let role = write::write_role(
        &acl,
        None,
        RoleWrite {
            name: "apps".into(),
            policies: vec![Link {
                id: String::new(),
                name: "kv".into(),
            }],
            ..RoleWrite::default()
        },
    )
    .await
    .unwrap();
    let token = write::create_token(
        &acl,
        TokenWrite {
            roles: vec![Link {
                id: role.id.clone(),
                name: String::new(),
            }],
            service_identities: vec![ServiceIdentity {
                service_name: "web".into(),
                datacenters: vec![],
            }],
            ..TokenWrite::default()
        },
    )
    .await
    .unwrap();
    let authz = acl.resolve(Some(&token.secret_id)).await.unwrap();
    assert_eq!(authz.accessor_id(), token.accessor_id);
    assert!(authz.require_key_write("app/x").is_ok());
    assert!(authz.require_service_write("web").is_ok());
    assert!(authz.require_service_write("db").is_err());
    // No token: the anonymous token, which has nothing (default deny).
    let anonymous = acl.resolve(None).await.unwrap();
    assert_eq!(
        anonymous.accessor_id(),
        plexus_api::acl::ANONYMOUS_ACCESSOR_ID
    );
    assert!(!anonymous.can_read_service("web"));
    // Unknown secrets are not found.
    assert!(matches!(
        acl.resolve(Some(&SecretId::new("nope"))).await,
        Err(ResolveError::NotFound)
    ));
    // Deleting the policy takes its grant away from every token linking it.
    let policy = acl
        .reload()
        .await
        .unwrap()
        .policy_by_name("kv")
        .unwrap()
        .id
        .clone();
    write::delete_policy(&acl, &policy).await.unwrap();
    let authz = acl.resolve(Some(&token.secret_id)).await.unwrap();
    assert!(authz.require_key_write("app/x").is_err());
    // Deleting the token makes it unknown.
    write::delete_token(&acl, &token.accessor_id).await.unwrap();
    assert!(matches!(
        acl.resolve(Some(&token.secret_id)).await,
        Err(ResolveError::NotFound)
    ));
}

#[tokio::test(start_paused = false)]
async fn expired_tokens_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (acl, _) = acl(dir.path()).await;
    let token = write::create_token(
        &acl,
        TokenWrite {
            expiration_time: Some(format_time(unix_now() + 1)),
            ..TokenWrite::default()
        },
    )
    .await
    .unwrap();
    let mut token_expired = token.clone();
    token_expired.expiration_time = Some(format_time(unix_now() - 1));
    assert!(expired(&token_expired, unix_now()));
    assert!(!expired(&token, unix_now() - 5));
    // Past its time the token is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match acl.resolve(Some(&token.secret_id)).await {
            Err(ResolveError::NotFound) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn replicas_agree_on_builtins_bootstrap_and_the_initial_management_token() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let secret = SecretId::new(new_uuid());
    let (a, b) = (
        Acl::new(Arc::clone(&store), enabled()),
        Acl::new(Arc::clone(&store), enabled()),
    );
    let (ra, rb) = tokio::join!(a.start(Some(&secret)), b.start(Some(&secret)));
    ra.unwrap();
    rb.unwrap();
    let snapshot = a.reload().await.unwrap();
    let managers = snapshot
        .tokens
        .values()
        .filter(|t| t.secret_id == secret)
        .count();
    assert_eq!(managers, 1);
    assert_eq!(snapshot.policies.len(), 1);
    assert!(
        a.resolve(Some(&secret))
            .await
            .unwrap()
            .require_acl_write()
            .is_ok()
    );
    // The initial management token counts as the bootstrap.
    assert!(matches!(
        write::bootstrap(&b).await,
        Err(AclError::BootstrapDone(_))
    ));
}

#[tokio::test]
async fn two_bootstraps_at_once_make_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (a, b) = (
        Acl::new(Arc::clone(&store), enabled()),
        Acl::new(Arc::clone(&store), enabled()),
    );
    a.start(None).await.unwrap();
    b.start(None).await.unwrap();
    let (ra, rb) = tokio::join!(write::bootstrap(&a), write::bootstrap(&b));
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} {rb:?}");
    let message = ra.err().or(rb.err()).unwrap().to_string();
    assert!(
        message.contains("ACL bootstrap no longer allowed (reset index: "),
        "{message}"
    );
}

#[tokio::test]
async fn disabled_acls_allow_everything_and_refuse_acl_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let acl = Acl::new(store, AclConfig::default());
    acl.start(None).await.unwrap();
    let authz = acl.resolve(Some(&SecretId::new("anything"))).await.unwrap();
    assert!(!authz.enforcing());
    assert!(matches!(
        write::bootstrap(&acl).await,
        Err(AclError::Disabled)
    ));
}

#[test]
fn uuids_are_well_formed() {
    for _ in 0..100 {
        let id = new_uuid();
        assert!(is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4");
    }
    assert!(!is_uuid("short"));
    assert!(!is_uuid("zzzzzzzz-0000-4000-8000-000000000000"));
}
