//! An HCL body → the JSON value it stands for, strictly.
//!
//! hcl-rs can deserialise a body directly, but leniently in ways that hide mistakes: any
//! expression decodes as a string (`name = 80` becomes `"${80}"`, `port = var.p` becomes
//! `"${var.p}"`), a block written twice where one is expected decodes as a list and then, through
//! serde's positional struct form, into the wrong fields, a block silently replaces an attribute of
//! the same name, and block labels turn into unknown keys. So the body is converted here, following
//! the HCL JSON spec, and those cases are errors:
//!
//! - blocks take no labels;
//! - a block may be repeated only where a list is expected (`services`, `checks`, `upstreams`);
//!   such blocks always become a list, so error paths read `services[0].port`;
//! - a name is either an attribute or a block;
//! - attribute values are evaluated with no variables or functions: literals, and operators on
//!   them, only.

use std::collections::{BTreeMap, BTreeSet};

use hcl::eval::{Context, Evaluate};
use hcl::{Body, Structure};
use serde_json::{Map, Value};

use super::locate::Seg;

/// Keys whose blocks may repeat; they hold a list.
pub(super) const LISTS: [&str; 3] = ["services", "checks", "upstreams"];

/// Which blocks of a file kind repeat and which carry a label.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Keys whose (unlabelled) blocks may repeat; they always become a list.
    pub lists: &'static [&'static str],
    /// Keys whose blocks take exactly one label (`group "add" { }`): they always become a list
    /// of objects, the label under `name`.
    pub labelled: &'static [&'static str],
}

/// Definition files: no labels, `services`, `checks` and `upstreams` repeat.
pub(super) const DEFINITIONS: Shape = Shape {
    lists: &LISTS,
    labelled: &[],
};

impl Shape {
    fn is_list(&self, key: &str) -> bool {
        self.lists.iter().any(|l| same(l, key)) || self.is_labelled(key)
    }

    fn is_labelled(&self, key: &str) -> bool {
        self.labelled.iter().any(|l| same(l, key))
    }
}

fn same(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    norm(a) == norm(b)
}

/// A problem found while converting.
#[derive(Debug)]
pub(super) struct BodyError {
    /// The field at fault.
    pub field: Vec<Seg>,
    /// Where to look for its line (the repeated occurrence, for a repeated block).
    pub at: Vec<Seg>,
    /// What is wrong.
    pub message: String,
}

/// Whether `key` names a list (either spelling).
pub(super) fn is_list(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    LISTS.iter().any(|l| l.replace('_', "") == norm)
}

/// Converts `body`, collecting every problem.
pub(super) fn to_json(body: &Body, shape: &Shape) -> Result<Value, Vec<BodyError>> {
    let mut errors = Vec::new();
    let value = Value::Object(convert(body, &[], shape, &mut errors));
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

fn convert(
    body: &Body,
    path: &[Seg],
    shape: &Shape,
    errors: &mut Vec<BodyError>,
) -> Map<String, Value> {
    let mut map = Map::new();
    let mut attributes: BTreeSet<&str> = BTreeSet::new();
    let mut blocks: BTreeMap<&str, usize> = BTreeMap::new();
    let with = |key: &str| {
        let mut p = path.to_vec();
        p.push(Seg::Key(key.to_owned()));
        p
    };
    let fail = |field: Vec<Seg>, at: Vec<Seg>, message: String| BodyError { field, at, message };
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                attributes.insert(key);
                if let Some(&n) = blocks.get(key) {
                    // Its blocks come first in the text; point at the attribute after them.
                    let mut at = with(key);
                    at.push(Seg::Index(n));
                    let msg = format!("`{key}` is written both as a block and as an attribute");
                    errors.push(fail(with(key), at, msg));
                    continue;
                }
                let value = attr.expr.evaluate(&Context::new()).map_err(|e| {
                    format!("only literal values are supported (no variables or functions): {e}")
                });
                match value.and_then(|v| serde_json::to_value(&v).map_err(|e| e.to_string())) {
                    Ok(json) => {
                        map.insert(key.to_owned(), json);
                    }
                    Err(msg) => errors.push(fail(with(key), with(key), msg)),
                }
            }
            Structure::Block(block) => {
                let key = block.identifier.as_str();
                let count = blocks.entry(key).or_insert(0);
                let n = *count;
                *count += 1;
                let mut at = with(key);
                at.push(Seg::Index(n));
                let labelled = shape.is_labelled(key);
                if labelled && block.labels.len() != 1 {
                    errors.push(fail(
                        with(key),
                        at.clone(),
                        format!("block `{key}` takes one label, its name (`{key} \"NAME\" {{ }}`)"),
                    ));
                } else if !labelled && !block.labels.is_empty() {
                    errors.push(fail(
                        with(key),
                        at.clone(),
                        format!("block `{key}` takes no labels"),
                    ));
                }
                if attributes.contains(key) {
                    // The attribute (once, or HCL rejects it) comes first; point at this block.
                    let mut at = with(key);
                    at.push(Seg::Index(n + 1));
                    let msg = format!("`{key}` is written both as an attribute and as a block");
                    errors.push(fail(with(key), at, msg));
                } else if shape.is_list(key) {
                    let mut object = Map::new();
                    if labelled && let Some(label) = block.labels.first() {
                        object.insert("name".to_owned(), Value::String(label.as_str().to_owned()));
                    }
                    object.extend(convert(&block.body, &at, shape, errors));
                    let value = Value::Object(object);
                    let slot = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = slot {
                        items.push(value);
                    }
                } else if n > 0 {
                    let hint = if shape.is_list(&format!("{key}s")) {
                        format!(" (use `{key}s` blocks for several)")
                    } else {
                        String::new()
                    };
                    errors.push(fail(
                        with(key),
                        at,
                        format!("block `{key}` may be written once{hint}"),
                    ));
                } else {
                    let value = Value::Object(convert(&block.body, &with(key), shape, errors));
                    map.insert(key.to_owned(), value);
                }
            }
        }
    }
    map
}
