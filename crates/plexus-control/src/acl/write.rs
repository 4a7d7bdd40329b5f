//! Writes: bootstrap, the built-ins, tokens, policies and roles. Every write is one store
//! transaction guarded by compare-and-set (a record's ModifyIndex, a name's uniqueness key), so
//! replicas writing at once never both win.

use plexus_api::GoDuration;
use plexus_api::acl::model::{
    Link, NodeIdentity, Policy, PolicyWrite, Role, RoleWrite, ServiceIdentity, Token, TokenWrite,
};
use plexus_api::acl::rules::GLOBAL_MANAGEMENT_RULES;
use plexus_api::acl::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET_ID, GLOBAL_MANAGEMENT_POLICY_ID,
    GLOBAL_MANAGEMENT_POLICY_NAME, SecretId, parse_rules,
};

use super::{
    Acl, AclError, BOOTSTRAP, POLICIES, POLICY_NAMES, ROLE_NAMES, ROLES, Snapshot, TOKENS,
    format_time, is_anonymous, is_uuid, new_uuid, parse_time, unix_now,
};
use crate::store::{Compare, Op, Txn};

const INITIAL_MANAGEMENT: &str = "acl/initial-management";

fn absent(key: String) -> Compare {
    Compare::ModRevision { key, revision: 0 }
}

fn at(key: String, revision: u64) -> Compare {
    Compare::ModRevision { key, revision }
}

fn put<T: serde::Serialize>(key: String, value: &T) -> Result<Op, AclError> {
    let value = serde_json::to_vec(value).map_err(|_| AclError::Corrupt(key.clone()))?;
    Ok(Op::Put { key, value })
}

async fn commit(acl: &Acl, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool, AclError> {
    let result = acl.store().txn(Txn { compares, ops }).await?;
    Ok(result.succeeded)
}

fn management_link() -> Link {
    Link {
        id: GLOBAL_MANAGEMENT_POLICY_ID.to_owned(),
        name: GLOBAL_MANAGEMENT_POLICY_NAME.to_owned(),
    }
}

/// Creates the global-management policy and the anonymous token when they are missing.
pub(super) async fn ensure_builtins(acl: &Acl) -> Result<(), AclError> {
    let policy = Policy {
        id: GLOBAL_MANAGEMENT_POLICY_ID.to_owned(),
        name: GLOBAL_MANAGEMENT_POLICY_NAME.to_owned(),
        description: "Builtin Policy that grants unlimited access".to_owned(),
        rules: GLOBAL_MANAGEMENT_RULES.to_owned(),
        ..Policy::default()
    };
    let key = format!("{POLICIES}{}", policy.id);
    let name_key = format!("{POLICY_NAMES}{}", policy.name);
    commit(
        acl,
        vec![absent(key.clone()), absent(name_key.clone())],
        vec![put(key, &policy)?, put(name_key, &policy.id)?],
    )
    .await?;
    let anonymous = Token {
        accessor_id: ANONYMOUS_ACCESSOR_ID.to_owned(),
        secret_id: SecretId::new(ANONYMOUS_SECRET_ID),
        description: "Anonymous Token".to_owned(),
        local: false,
        create_time: format_time(unix_now()),
        ..Token::default()
    };
    let key = format!("{TOKENS}{ANONYMOUS_ACCESSOR_ID}");
    commit(acl, vec![absent(key.clone())], vec![put(key, &anonymous)?]).await?;
    Ok(())
}

/// Creates a management token with `secret` unless one exists (`acl.tokens.initial_management`).
pub(super) async fn ensure_initial_management(
    acl: &Acl,
    secret: &SecretId,
) -> Result<(), AclError> {
    for _ in 0..8 {
        let snapshot = acl.reload().await?;
        if snapshot.by_secret(secret).is_some() {
            return Ok(());
        }
        let marker = acl.store().get(INITIAL_MANAGEMENT).await?;
        let token = Token {
            accessor_id: new_uuid(),
            secret_id: secret.clone(),
            description: "Initial Management Token".to_owned(),
            policies: vec![management_link()],
            create_time: format_time(unix_now()),
            ..Token::default()
        };
        let key = format!("{TOKENS}{}", token.accessor_id);
        let guard = match &marker {
            Some(kv) => at(INITIAL_MANAGEMENT.to_owned(), kv.mod_revision),
            None => absent(INITIAL_MANAGEMENT.to_owned()),
        };
        if commit(
            acl,
            vec![guard, absent(key.clone())],
            vec![
                put(key, &token)?,
                put(INITIAL_MANAGEMENT.to_owned(), &token.accessor_id)?,
            ],
        )
        .await?
        {
            // As in Consul, a configured initial management token counts as the bootstrap.
            let record = serde_json::json!({ "AccessorID": token.accessor_id });
            commit(
                acl,
                vec![absent(BOOTSTRAP.to_owned())],
                vec![put(BOOTSTRAP.to_owned(), &record)?],
            )
            .await?;
            tracing::info!(accessor_id = %token.accessor_id, "created the initial management token");
            return Ok(());
        }
    }
    Err(AclError::Conflict(
        "the initial management token kept being written concurrently".to_owned(),
    ))
}

/// `PUT /v1/acl/bootstrap`: the first management token, once. A second call is refused with
/// the reset index, unless the reset file in the data dir holds exactly that index (then it is
/// removed and one more bootstrap allowed).
pub async fn bootstrap(acl: &Acl) -> Result<Token, AclError> {
    if !acl.config().enabled {
        return Err(AclError::Disabled);
    }
    let existing = acl.store().get(BOOTSTRAP).await?;
    let guard = match &existing {
        None => absent(BOOTSTRAP.to_owned()),
        Some(kv) => {
            let reset_index = kv.mod_revision;
            let allowed = acl
                .config()
                .reset_file
                .as_deref()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .is_some_and(|text| text.trim() == reset_index.to_string());
            if !allowed {
                return Err(AclError::BootstrapDone(
                    plexus_api::acl::model::bootstrap_refused_message(reset_index),
                ));
            }
            at(BOOTSTRAP.to_owned(), reset_index)
        }
    };
    let token = Token {
        accessor_id: new_uuid(),
        secret_id: SecretId::new(new_uuid()),
        description: "Bootstrap Token (Global Management)".to_owned(),
        policies: vec![management_link()],
        create_time: format_time(unix_now()),
        ..Token::default()
    };
    let key = format!("{TOKENS}{}", token.accessor_id);
    let record = serde_json::json!({ "AccessorID": token.accessor_id });
    if !commit(
        acl,
        vec![guard, absent(key.clone())],
        vec![put(key, &token)?, put(BOOTSTRAP.to_owned(), &record)?],
    )
    .await?
    {
        let index = acl
            .store()
            .get(BOOTSTRAP)
            .await?
            .map_or(0, |kv| kv.mod_revision);
        return Err(AclError::BootstrapDone(
            plexus_api::acl::model::bootstrap_refused_message(index),
        ));
    }
    if existing.is_some()
        && let Some(path) = &acl.config().reset_file
        && let Err(error) = std::fs::remove_file(path)
    {
        tracing::warn!(%error, path = %path.display(), "cannot remove the ACL bootstrap reset file");
    }
    tracing::info!(accessor_id = %token.accessor_id, "ACL bootstrap: management token created");
    stored_token(acl, &token.accessor_id).await
}

async fn stored_token(acl: &Acl, id: &str) -> Result<Token, AclError> {
    acl.reload()
        .await?
        .tokens
        .get(id)
        .cloned()
        .ok_or_else(|| AclError::NotFound(format!("token {id:?} not found")))
}

/// Resolves policy links (by ID or Name) to complete links, naming the field at fault.
fn policy_links(snapshot: &Snapshot, links: &[Link], field: &str) -> Result<Vec<Link>, AclError> {
    let mut out: Vec<Link> = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let found = if !link.id.is_empty() {
            snapshot.policy(&link.id)
        } else {
            snapshot.policy_by_name(&link.name)
        };
        let Some(policy) = found else {
            let what = if link.id.is_empty() {
                &link.name
            } else {
                &link.id
            };
            return Err(AclError::invalid(
                format!("{field}[{i}]"),
                format!("cannot find policy {what:?}"),
            ));
        };
        if !out.iter().any(|l| l.id == policy.id) {
            out.push(Link {
                id: policy.id.clone(),
                name: policy.name.clone(),
            });
        }
    }
    Ok(out)
}

fn role_links(snapshot: &Snapshot, links: &[Link]) -> Result<Vec<Link>, AclError> {
    let mut out: Vec<Link> = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let found = if !link.id.is_empty() {
            snapshot.roles.get(&link.id)
        } else {
            snapshot.role_by_name(&link.name)
        };
        let Some(role) = found else {
            let what = if link.id.is_empty() {
                &link.name
            } else {
                &link.id
            };
            return Err(AclError::invalid(
                format!("Roles[{i}]"),
                format!("cannot find role {what:?}"),
            ));
        };
        if !out.iter().any(|l| l.id == role.id) {
            out.push(Link {
                id: role.id.clone(),
                name: role.name.clone(),
            });
        }
    }
    Ok(out)
}

/// Consul's service name rule for identities.
fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_'])
        && !name.ends_with(['-', '_'])
}

fn check_identities(services: &[ServiceIdentity], nodes: &[NodeIdentity]) -> Result<(), AclError> {
    for (i, s) in services.iter().enumerate() {
        if !valid_service_name(&s.service_name) {
            return Err(AclError::invalid(
                format!("ServiceIdentities[{i}].ServiceName"),
                format!(
                    "invalid service name {:?}: lowercase letters, digits, '-' and '_', at most 256",
                    s.service_name
                ),
            ));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.node_name.is_empty() || n.node_name.len() > 256 {
            return Err(AclError::invalid(
                format!("NodeIdentities[{i}].NodeName"),
                "a node identity needs a NodeName of at most 256 characters",
            ));
        }
        if n.datacenter.is_empty() {
            return Err(AclError::invalid(
                format!("NodeIdentities[{i}].Datacenter"),
                "a node identity needs a Datacenter",
            ));
        }
    }
    Ok(())
}

/// The expiry of a new token, from `ExpirationTime` or `ExpirationTTL` (not both), within the
/// configured bounds.
fn expiration(acl: &Acl, body: &TokenWrite, now: i64) -> Result<Option<String>, AclError> {
    let (min, max) = (
        acl.config().min_expiration_ttl,
        acl.config().max_expiration_ttl,
    );
    let bounds = |secs: i64, field: &str| {
        if secs < min.as_secs() as i64 || secs > max.as_secs() as i64 {
            return Err(AclError::invalid(
                field,
                format!(
                    "token expiration must be between {}s and {}s from now",
                    min.as_secs(),
                    max.as_secs()
                ),
            ));
        }
        Ok(())
    };
    match (&body.expiration_time, &body.expiration_ttl) {
        (Some(_), Some(_)) => Err(AclError::invalid(
            "ExpirationTTL",
            "give ExpirationTime or ExpirationTTL, not both",
        )),
        (Some(time), None) => {
            let at = parse_time(time).ok_or_else(|| {
                AclError::invalid(
                    "ExpirationTime",
                    format!("invalid time {time:?}: expected RFC 3339, e.g. 2030-01-02T15:04:05Z"),
                )
            })?;
            bounds(at - now, "ExpirationTime")?;
            Ok(Some(format_time(at)))
        }
        (None, Some(ttl)) => {
            let ttl = GoDuration::parse(ttl)
                .map_err(|e| AclError::invalid("ExpirationTTL", e.to_string()))?
                .get();
            bounds(ttl.as_secs() as i64, "ExpirationTTL")?;
            Ok(Some(format_time(now + ttl.as_secs() as i64)))
        }
        (None, None) => Ok(None),
    }
}

/// `PUT /v1/acl/token`: a new token.
pub async fn create_token(acl: &Acl, body: TokenWrite) -> Result<Token, AclError> {
    let snapshot = acl.reload().await?;
    let accessor_id = if body.accessor_id.is_empty() {
        new_uuid()
    } else if is_uuid(&body.accessor_id) {
        body.accessor_id.clone()
    } else {
        return Err(AclError::invalid("AccessorID", "AccessorID must be a UUID"));
    };
    if snapshot.tokens.contains_key(&accessor_id) {
        return Err(AclError::Conflict(format!(
            "a token with AccessorID {accessor_id:?} exists"
        )));
    }
    let secret_id = if body.secret_id.is_empty() {
        SecretId::new(new_uuid())
    } else if is_uuid(body.secret_id.expose()) {
        if snapshot.by_secret(&body.secret_id).is_some() {
            return Err(AclError::Conflict(
                "a token with this SecretID exists".to_owned(),
            ));
        }
        body.secret_id.clone()
    } else {
        return Err(AclError::invalid("SecretID", "SecretID must be a UUID"));
    };
    check_identities(&body.service_identities, &body.node_identities)?;
    let now = unix_now();
    let token = Token {
        accessor_id: accessor_id.clone(),
        secret_id,
        description: body.description.clone(),
        policies: policy_links(&snapshot, &body.policies, "Policies")?,
        roles: role_links(&snapshot, &body.roles)?,
        service_identities: body.service_identities.clone(),
        node_identities: body.node_identities.clone(),
        local: body.local,
        expiration_time: expiration(acl, &body, now)?,
        create_time: format_time(now),
        create_index: 0,
        modify_index: 0,
    };
    let key = format!("{TOKENS}{accessor_id}");
    if !commit(acl, vec![absent(key.clone())], vec![put(key, &token)?]).await? {
        return Err(AclError::Conflict(format!(
            "a token with AccessorID {accessor_id:?} exists"
        )));
    }
    tracing::info!(accessor_id = %accessor_id, "ACL token created");
    stored_token(acl, &accessor_id).await
}

/// `PUT /v1/acl/token/:id`: replaces a token's description, links and identities (its secret
/// and expiry stay).
pub async fn update_token(acl: &Acl, id: &str, body: TokenWrite) -> Result<Token, AclError> {
    if !body.accessor_id.is_empty() && body.accessor_id != id {
        return Err(AclError::invalid(
            "AccessorID",
            "AccessorID in the body differs from the one in the path",
        ));
    }
    let snapshot = acl.reload().await?;
    let existing = snapshot
        .tokens
        .get(id)
        .ok_or_else(|| AclError::NotFound(format!("token {id:?} not found")))?;
    if !body.secret_id.is_empty() && body.secret_id != existing.secret_id {
        return Err(AclError::invalid(
            "SecretID",
            "a token's SecretID cannot be changed",
        ));
    }
    if body.expiration_ttl.is_some()
        || body
            .expiration_time
            .as_ref()
            .is_some_and(|t| Some(t) != existing.expiration_time.as_ref())
    {
        return Err(AclError::invalid(
            "ExpirationTime",
            "a token's expiration cannot be changed",
        ));
    }
    check_identities(&body.service_identities, &body.node_identities)?;
    let token = Token {
        description: body.description.clone(),
        policies: policy_links(&snapshot, &body.policies, "Policies")?,
        roles: role_links(&snapshot, &body.roles)?,
        service_identities: body.service_identities.clone(),
        node_identities: body.node_identities.clone(),
        local: body.local,
        ..existing.clone()
    };
    let key = format!("{TOKENS}{id}");
    if !commit(
        acl,
        vec![at(key.clone(), existing.modify_index)],
        vec![put(key, &token)?],
    )
    .await?
    {
        return Err(AclError::Conflict(format!(
            "token {id:?} changed concurrently; retry"
        )));
    }
    tracing::info!(accessor_id = %id, "ACL token updated");
    stored_token(acl, id).await
}

/// `DELETE /v1/acl/token/:id` (the anonymous token cannot be deleted).
pub async fn delete_token(acl: &Acl, id: &str) -> Result<(), AclError> {
    if is_anonymous(id) {
        return Err(AclError::invalid(
            "AccessorID",
            "the anonymous token cannot be deleted",
        ));
    }
    let snapshot = acl.reload().await?;
    if !snapshot.tokens.contains_key(id) {
        return Err(AclError::NotFound(format!("token {id:?} not found")));
    }
    commit(
        acl,
        vec![],
        vec![Op::Delete {
            key: format!("{TOKENS}{id}"),
        }],
    )
    .await?;
    acl.reload().await?;
    tracing::info!(accessor_id = %id, "ACL token deleted");
    Ok(())
}

fn check_name(name: &str, what: &str) -> Result<(), AclError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(AclError::invalid(
            "Name",
            format!("invalid {what} name {name:?}: 1 to 128 letters, digits, '-' or '_'"),
        ))
    }
}

fn check_rules(rules: &str) -> Result<(), AclError> {
    parse_rules(rules)
        .map(|_| ())
        .map_err(|errors| AclError::invalid("Rules", format!("invalid rules: {errors}")))
}

/// `PUT /v1/acl/policy` (`id` empty) or `PUT /v1/acl/policy/:id`.
pub async fn write_policy(
    acl: &Acl,
    id: Option<&str>,
    body: PolicyWrite,
) -> Result<Policy, AclError> {
    if let Some(id) = id
        && !body.id.is_empty()
        && body.id != id
    {
        return Err(AclError::invalid(
            "ID",
            "ID in the body differs from the one in the path",
        ));
    }
    check_name(&body.name, "policy")?;
    check_rules(&body.rules)?;
    let snapshot = acl.reload().await?;
    let existing = match id {
        Some(id) => Some(
            snapshot
                .policies
                .get(id)
                .ok_or_else(|| AclError::NotFound(format!("policy {id:?} not found")))?,
        ),
        None => None,
    };
    if let Some(existing) = existing
        && existing.id == GLOBAL_MANAGEMENT_POLICY_ID
        && existing.rules != body.rules
    {
        return Err(AclError::invalid(
            "Rules",
            "the rules of the built-in global-management policy cannot be changed",
        ));
    }
    let policy = Policy {
        id: existing.map_or_else(new_uuid, |p| p.id.clone()),
        name: body.name.clone(),
        description: body.description.clone(),
        rules: body.rules.clone(),
        datacenters: body.datacenters.clone(),
        create_index: 0,
        modify_index: 0,
    };
    let key = format!("{POLICIES}{}", policy.id);
    let name_key = format!("{POLICY_NAMES}{}", policy.name);
    let mut compares = vec![match existing {
        Some(p) => at(key.clone(), p.modify_index),
        None => absent(key.clone()),
    }];
    let mut ops = vec![put(key, &policy)?];
    if existing.is_none_or(|p| p.name != policy.name) {
        compares.push(absent(name_key.clone()));
        ops.push(put(name_key, &policy.id)?);
        if let Some(old) = existing {
            ops.push(Op::Delete {
                key: format!("{POLICY_NAMES}{}", old.name),
            });
        }
    }
    if !commit(acl, compares, ops).await? {
        return Err(AclError::Conflict(format!(
            "a policy named {:?} exists (or the policy changed concurrently)",
            policy.name
        )));
    }
    tracing::info!(policy_id = %policy.id, name = %policy.name, "ACL policy written");
    acl.reload()
        .await?
        .policies
        .get(&policy.id)
        .cloned()
        .ok_or_else(|| AclError::NotFound(format!("policy {:?} not found", policy.id)))
}

/// `DELETE /v1/acl/policy/:id` (not the built-in one). Links to it grant nothing afterwards.
pub async fn delete_policy(acl: &Acl, id: &str) -> Result<(), AclError> {
    if id == GLOBAL_MANAGEMENT_POLICY_ID {
        return Err(AclError::invalid(
            "ID",
            "the built-in global-management policy cannot be deleted",
        ));
    }
    let snapshot = acl.reload().await?;
    let policy = snapshot
        .policies
        .get(id)
        .ok_or_else(|| AclError::NotFound(format!("policy {id:?} not found")))?;
    commit(
        acl,
        vec![],
        vec![
            Op::Delete {
                key: format!("{POLICIES}{id}"),
            },
            Op::Delete {
                key: format!("{POLICY_NAMES}{}", policy.name),
            },
        ],
    )
    .await?;
    acl.reload().await?;
    Ok(())
}

/// `PUT /v1/acl/role` (`id` empty) or `PUT /v1/acl/role/:id`.
pub async fn write_role(acl: &Acl, id: Option<&str>, body: RoleWrite) -> Result<Role, AclError> {
    if let Some(id) = id
        && !body.id.is_empty()
        && body.id != id
    {
        return Err(AclError::invalid(
            "ID",
            "ID in the body differs from the one in the path",
        ));
    }
    check_name(&body.name, "role")?;
    check_identities(&body.service_identities, &body.node_identities)?;
    let snapshot = acl.reload().await?;
    let existing = match id {
        Some(id) => Some(
            snapshot
                .roles
                .get(id)
                .ok_or_else(|| AclError::NotFound(format!("role {id:?} not found")))?,
        ),
        None => None,
    };
    let role = Role {
        id: existing.map_or_else(new_uuid, |r| r.id.clone()),
        name: body.name.clone(),
        description: body.description.clone(),
        policies: policy_links(&snapshot, &body.policies, "Policies")?,
        service_identities: body.service_identities.clone(),
        node_identities: body.node_identities.clone(),
        create_index: 0,
        modify_index: 0,
    };
    let key = format!("{ROLES}{}", role.id);
    let name_key = format!("{ROLE_NAMES}{}", role.name);
    let mut compares = vec![match existing {
        Some(r) => at(key.clone(), r.modify_index),
        None => absent(key.clone()),
    }];
    let mut ops = vec![put(key, &role)?];
    if existing.is_none_or(|r| r.name != role.name) {
        compares.push(absent(name_key.clone()));
        ops.push(put(name_key, &role.id)?);
        if let Some(old) = existing {
            ops.push(Op::Delete {
                key: format!("{ROLE_NAMES}{}", old.name),
            });
        }
    }
    if !commit(acl, compares, ops).await? {
        return Err(AclError::Conflict(format!(
            "a role named {:?} exists (or the role changed concurrently)",
            role.name
        )));
    }
    tracing::info!(role_id = %role.id, name = %role.name, "ACL role written");
    acl.reload()
        .await?
        .roles
        .get(&role.id)
        .cloned()
        .ok_or_else(|| AclError::NotFound(format!("role {:?} not found", role.id)))
}

/// `DELETE /v1/acl/role/:id`.
pub async fn delete_role(acl: &Acl, id: &str) -> Result<(), AclError> {
    let snapshot = acl.reload().await?;
    let role = snapshot
        .roles
        .get(id)
        .ok_or_else(|| AclError::NotFound(format!("role {id:?} not found")))?;
    commit(
        acl,
        vec![],
        vec![
            Op::Delete {
                key: format!("{ROLES}{id}"),
            },
            Op::Delete {
                key: format!("{ROLE_NAMES}{}", role.name),
            },
        ],
    )
    .await?;
    acl.reload().await?;
    Ok(())
}
