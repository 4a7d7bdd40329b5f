//! The `Node`, `Service` and `Check` operations of `/v1/txn`: catalog records written in the
//! same store transaction as the KV operations, all or nothing.
//!
//! Each operation names its records (`catalog/nodes/<n>`, `catalog/services/<n>/<id>`,
//! `catalog/checks/<n>/<id>`); they are read with their modify revisions, evaluated in order
//! with the KV operations against that snapshot, and the commit is guarded by every revision
//! read, as for keys. Verbs: `set`, `cas` (on the record's `ModifyIndex`), `get`, `delete`,
//! `delete-cas`. Deleting a node takes its services and checks along; deleting a service its
//! checks; a service or check needs its node (and a service check its service), in the snapshot
//! or set earlier in the same transaction.

use std::collections::BTreeMap;

use plexus_api::{AgentService, HealthCheck, Node};
use serde_json::Value;

use super::TxnFailure;
use crate::catalog::keys;
use crate::kv::KvError;
use crate::store::Store;

/// A catalog verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogVerb {
    /// Write the record.
    Set,
    /// Write when the record's modify index is the given one (0: absent).
    Cas,
    /// Read the record (fails when absent).
    Get,
    /// Delete the record (and what depends on it).
    Delete,
    /// Delete when the record's modify index is the given one.
    DeleteCas,
}

impl CatalogVerb {
    /// Parses Consul's verb name.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "set" => CatalogVerb::Set,
            "cas" => CatalogVerb::Cas,
            "get" => CatalogVerb::Get,
            "delete" => CatalogVerb::Delete,
            "delete-cas" => CatalogVerb::DeleteCas,
            other => {
                return Err(format!(
                    "unknown verb {other:?}; expected set, cas, get, delete or delete-cas"
                ));
            }
        })
    }

    /// True when the verb writes.
    pub fn writes(self) -> bool {
        !matches!(self, CatalogVerb::Get)
    }
}

/// What a catalog operation works on.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A node.
    Node(Node),
    /// A service instance on `node`.
    Service {
        /// The node.
        node: String,
        /// The instance (`ID` defaults to `Service`).
        service: AgentService,
    },
    /// A check (its `Node` names the node).
    Check(HealthCheck),
}

/// One catalog operation.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogOp {
    /// What to do.
    pub verb: CatalogVerb,
    /// The record (for `get`/`delete`, only its identity counts).
    pub record: Record,
    /// The modify index `cas`/`delete-cas` compare with (the record's `ModifyIndex`).
    pub index: u64,
}

impl CatalogOp {
    /// The store key of the record.
    pub fn key(&self) -> String {
        match &self.record {
            Record::Node(node) => keys::node(&node.node),
            Record::Service { node, service } => keys::service(node, &service.id),
            Record::Check(check) => keys::check(&check.node, &check.check_id),
        }
    }

    /// The node the record belongs to.
    pub fn node(&self) -> &str {
        match &self.record {
            Record::Node(node) => &node.node,
            Record::Service { node, .. } => node,
            Record::Check(check) => &check.node,
        }
    }

    /// What kind of record, as Consul's result key says it.
    pub fn kind(&self) -> &'static str {
        match &self.record {
            Record::Node(_) => "Node",
            Record::Service { .. } => "Service",
            Record::Check(_) => "Check",
        }
    }
}

/// A catalog record as the evaluation sees it.
#[derive(Debug, Clone)]
pub(super) struct Rec {
    /// Modify revision when read (0: absent): the commit's guard.
    pub observed: u64,
    /// Create revision when read.
    pub created: u64,
    /// The record now, `None` when absent.
    pub current: Option<Value>,
    /// Changed by this transaction.
    pub dirty: bool,
}

/// Reads the records `op` touches into `recs`: its own, its node's, a service check's service,
/// and for deletes what goes along.
pub(super) async fn read(
    store: &dyn Store,
    op: &CatalogOp,
    recs: &mut BTreeMap<String, Rec>,
) -> Result<(), KvError> {
    let mut wanted = vec![op.key(), keys::node(op.node())];
    if let Record::Check(check) = &op.record
        && !check.service_id.is_empty()
    {
        wanted.push(keys::service(&check.node, &check.service_id));
    }
    for key in wanted {
        if recs.contains_key(&key) {
            continue;
        }
        let record = store.get(&key).await?;
        recs.insert(key, rec_of(record));
    }
    if matches!(op.verb, CatalogVerb::Delete | CatalogVerb::DeleteCas) {
        let prefixes = match &op.record {
            Record::Node(node) => vec![keys::services_of(&node.node), keys::checks_of(&node.node)],
            Record::Service { node, .. } => vec![keys::checks_of(node)],
            Record::Check(_) => Vec::new(),
        };
        for prefix in prefixes {
            let (records, _) = store.range(&prefix).await?;
            for record in records {
                if !recs.contains_key(&record.key) {
                    let key = record.key.clone();
                    recs.insert(key, rec_of(Some(record)));
                }
            }
        }
    }
    Ok(())
}

fn rec_of(record: Option<crate::store::KeyValue>) -> Rec {
    match record {
        Some(record) => Rec {
            observed: record.mod_revision,
            created: record.create_revision,
            current: serde_json::from_slice(&record.value).ok(),
            dirty: false,
        },
        None => Rec {
            observed: 0,
            created: 0,
            current: None,
            dirty: false,
        },
    }
}

/// Evaluates one operation; `Ok(Some(key))` when the record belongs in the results.
pub(super) fn evaluate(
    op_index: usize,
    op: &CatalogOp,
    recs: &mut BTreeMap<String, Rec>,
) -> Result<Option<String>, TxnFailure> {
    let fail = |what: String| TxnFailure { op_index, what };
    let key = op.key();
    let exists = |recs: &BTreeMap<String, Rec>, key: &str| {
        recs.get(key).is_some_and(|r| r.current.is_some())
    };
    let index = recs.get(&key).map_or(0, |r| match (&r.current, r.dirty) {
        (None, _) => 0,
        (Some(_), true) => u64::MAX,
        (Some(_), false) => r.observed,
    });
    let what = match &op.record {
        Record::Node(node) => format!("node {:?}", node.node),
        Record::Service { node, service } => format!("service {:?} on node {node:?}", service.id),
        Record::Check(check) => format!("check {:?} on node {:?}", check.check_id, check.node),
    };
    match op.verb {
        CatalogVerb::Get => {
            if !exists(recs, &key) {
                return Err(fail(format!("{what} doesn't exist")));
            }
            Ok(Some(key))
        }
        CatalogVerb::Set | CatalogVerb::Cas => {
            if op.verb == CatalogVerb::Cas && index != op.index {
                return Err(fail(format!("failed to set {what}, index is stale")));
            }
            let value = match &op.record {
                Record::Node(node) => {
                    let mut node = node.clone();
                    (node.create_index, node.modify_index) = (0, 0);
                    serde_json::to_value(node)
                }
                Record::Service { node, service } => {
                    if !exists(recs, &keys::node(node)) {
                        return Err(fail(format!("node {node:?} doesn't exist")));
                    }
                    let mut service = service.clone();
                    (service.create_index, service.modify_index) = (None, None);
                    serde_json::to_value(service)
                }
                Record::Check(check) => {
                    if !exists(recs, &keys::node(&check.node)) {
                        return Err(fail(format!("node {:?} doesn't exist", check.node)));
                    }
                    let mut check = check.clone();
                    (check.create_index, check.modify_index) = (0, 0);
                    if !check.service_id.is_empty() {
                        let service_key = keys::service(&check.node, &check.service_id);
                        let Some(service) = recs
                            .get(&service_key)
                            .and_then(|r| r.current.clone())
                            .and_then(|v| serde_json::from_value::<AgentService>(v).ok())
                        else {
                            return Err(fail(format!(
                                "service {:?} on node {:?} doesn't exist",
                                check.service_id, check.node
                            )));
                        };
                        check.service_name = service.service;
                        check.service_tags = service.tags;
                    }
                    serde_json::to_value(check)
                }
            }
            .map_err(|e| fail(format!("cannot encode {what}: {e}")))?;
            let rec = recs.entry(key.clone()).or_insert_with(|| rec_of(None));
            rec.current = Some(value);
            rec.dirty = true;
            Ok(Some(key))
        }
        CatalogVerb::Delete | CatalogVerb::DeleteCas => {
            if op.verb == CatalogVerb::DeleteCas && index != op.index {
                return Err(fail(format!("failed to delete {what}, index is stale")));
            }
            let mut gone = vec![key];
            match &op.record {
                Record::Node(node) => {
                    let prefixes = [keys::services_of(&node.node), keys::checks_of(&node.node)];
                    gone.extend(
                        recs.keys()
                            .filter(|k| prefixes.iter().any(|p| k.starts_with(p.as_str())))
                            .cloned(),
                    );
                }
                Record::Service { node, service } => {
                    gone.extend(
                        recs.iter()
                            .filter(|(k, r)| {
                                k.starts_with(&keys::checks_of(node))
                                    && r.current.as_ref().is_some_and(|c| {
                                        c["ServiceID"].as_str() == Some(service.id.as_str())
                                    })
                            })
                            .map(|(k, _)| k.clone()),
                    );
                }
                Record::Check(_) => {}
            }
            for key in gone {
                if let Some(rec) = recs.get_mut(&key)
                    && rec.current.is_some()
                {
                    rec.current = None;
                    rec.dirty = true;
                }
            }
            Ok(None)
        }
    }
}

/// A result entry: `{"Node"|"Service"|"Check": record}` as it is after the commit at `revision`.
pub(super) fn render(kind: &str, rec: &Rec, revision: u64) -> Value {
    let (created, modified) = if rec.dirty {
        (
            if rec.created == 0 {
                revision
            } else {
                rec.created
            },
            revision,
        )
    } else {
        (rec.created, rec.observed)
    };
    let mut value = rec.current.clone().unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("CreateIndex".into(), created.into());
        map.insert("ModifyIndex".into(), modified.into());
    }
    serde_json::json!({ kind: value })
}
