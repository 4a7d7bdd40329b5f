//! Field-by-field comparison of a JSON document with a golden file describing its shape.
//!
//! A golden file is an example document in which:
//! - every key must be present in the actual document, and no other key may be, except keys
//!   written with a trailing `?` (optional) and a single key written `{any}` (a map whose keys
//!   vary: every value must match the `{any}` value);
//! - a scalar matches any value of the same JSON type, except a string starting with `=`, which
//!   must equal the rest exactly (`"=UP"`);
//! - an array of one element matches arrays whose every element matches it; `[]` any array.

use serde_json::Value;

/// Every mismatch of `actual` against `golden`, as `path: what` lines (empty when it matches).
pub fn mismatches(actual: &Value, golden: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("$", actual, golden, &mut out);
    out
}

/// Panics listing every mismatch, naming the golden file.
pub fn assert_matches(name: &str, actual: &Value, golden: &str) {
    let golden: Value =
        serde_json::from_str(golden).unwrap_or_else(|e| panic!("golden {name} is not JSON: {e}"));
    let found = mismatches(actual, &golden);
    assert!(
        found.is_empty(),
        "{name} differs from its golden file:\n  {}\nactual: {actual:#}",
        found.join("\n  ")
    );
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(path: &str, actual: &Value, golden: &Value, out: &mut Vec<String>) {
    match (golden, actual) {
        (Value::Object(g), Value::Object(a)) => {
            if let Some(any) = g.get("{any}") {
                for (k, v) in a {
                    walk(&format!("{path}.{k}"), v, any, out);
                }
                return;
            }
            for (key, expected) in g {
                let (name, optional) = match key.strip_suffix('?') {
                    Some(name) => (name, true),
                    None => (key.as_str(), false),
                };
                match a.get(name) {
                    Some(v) => walk(&format!("{path}.{name}"), v, expected, out),
                    None if optional => {}
                    None => out.push(format!("{path}.{name}: missing")),
                }
            }
            for key in a.keys() {
                if !g.contains_key(key) && !g.contains_key(&format!("{key}?")) {
                    out.push(format!("{path}.{key}: not in the golden file"));
                }
            }
        }
        (Value::Array(g), Value::Array(a)) => {
            if let Some(element) = g.first() {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), v, element, out);
                }
            }
        }
        (Value::String(g), Value::String(a)) => {
            if let Some(exact) = g.strip_prefix('=')
                && a != exact
            {
                out.push(format!("{path}: {a:?}, expected {exact:?}"));
            }
        }
        (g, a) if kind(g) == kind(a) => {}
        (g, a) => out.push(format!("{path}: a {}, expected a {}", kind(a), kind(g))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn shapes_are_compared_field_by_field() {
        let golden = json!({"status": "=UP", "n": 1, "opt?": "x", "list": [{"a": true}],
                            "map": {"{any}": 3}});
        let good = json!({"status": "UP", "n": 5, "list": [{"a": false}], "map": {"r.x": 2}});
        assert!(mismatches(&good, &golden).is_empty());
        let bad = json!({"status": "DOWN", "n": "5", "extra": 1, "list": [{"b": 1}],
                         "map": {"r": "x"}, "opt": 1});
        let found = mismatches(&bad, &golden);
        for expected in [
            "$.status",
            "$.n: a string",
            "$.extra",
            "$.list[0].a: missing",
            "$.list[0].b",
            "$.map.r: a string",
            "$.opt: a number",
        ] {
            assert!(
                found.iter().any(|m| m.starts_with(expected)),
                "{expected}: {found:?}"
            );
        }
    }
}
