//! A check that a CRD's OpenAPI v3 schema is *structural* in the Kubernetes sense
//! (kube-core rewrites schemas towards it but does not verify it): the apiserver
//! rejects non-structural schemas in `apiextensions.k8s.io/v1`.
//!
//! Rules checked, per node:
//! - every node has a non-empty `type`, unless it is `x-kubernetes-int-or-string` or
//!   `x-kubernetes-preserve-unknown-fields` (which may omit it);
//! - no `$ref`, `definitions` or `$defs` anywhere;
//! - `properties` and `additionalProperties` are never both set on one node;
//! - inside `allOf`/`anyOf`/`oneOf`/`not` only value validations appear: no `type`
//!   (except the int-or-string pattern), `description`, `default`, `nullable`,
//!   `additionalProperties`, `x-kubernetes-*`;
//! - `x-kubernetes-int-or-string` nodes have no `type`.
//!
//! It also lists where `x-kubernetes-preserve-unknown-fields` is used, so tests can
//! pin that set.

use serde_json::Value;

/// Problems found, as `path: what`; empty when the schema is structural.
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_node(schema, "", false, &mut out);
    out
}

/// Paths of nodes carrying `x-kubernetes-preserve-unknown-fields: true`.
pub fn preserve_unknown_paths(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, "", &mut |path, node| {
        if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            out.push(path.to_string());
        }
    });
    out
}

/// Every `x-kubernetes-validations` rule with its path.
pub fn cel_rules(schema: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(schema, "", &mut |path, node| {
        if let Some(Value::Array(rules)) = node.get("x-kubernetes-validations") {
            for r in rules {
                if let Some(rule) = r.get("rule").and_then(Value::as_str) {
                    out.push((path.to_string(), rule.to_string()));
                }
            }
        }
    });
    out
}

fn walk(node: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    let Some(obj) = node.as_object() else { return };
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            walk(v, &format!("{path}.{k}"), f);
        }
    }
    if let Some(items) = obj.get("items") {
        walk(items, &format!("{path}[]"), f);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        walk(ap, &format!("{path}{{}}"), f);
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = obj.get(j) {
            for (i, v) in list.iter().enumerate() {
                walk(v, &format!("{path}/{j}[{i}]"), f);
            }
        }
    }
    if let Some(n) = obj.get("not") {
        walk(n, &format!("{path}/not"), f);
    }
}

const JUNCTORS: [&str; 3] = ["allOf", "anyOf", "oneOf"];

fn check_node(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let Some(obj) = node.as_object() else {
        out.push(format!("{at}: schema node is not an object"));
        return;
    };
    for bad in ["$ref", "definitions", "$defs"] {
        if obj.contains_key(bad) {
            out.push(format!("{at}: `{bad}` is not allowed"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    if in_junctor {
        for bad in ["description", "default", "nullable", "additionalProperties"] {
            if obj.contains_key(bad) {
                out.push(format!("{at}: `{bad}` inside a logical junctor"));
            }
        }
        if obj.keys().any(|k| k.starts_with("x-kubernetes-")) {
            out.push(format!(
                "{at}: x-kubernetes-* extension inside a logical junctor"
            ));
        }
    } else if int_or_string {
        if ty.is_some() {
            out.push(format!(
                "{at}: x-kubernetes-int-or-string node must not set `type`"
            ));
        }
    } else if ty.is_none() && !preserve {
        out.push(format!("{at}: missing `type`"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{at}: both `properties` and `additionalProperties`"
        ));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            check_node(v, &format!("{path}.{k}"), in_junctor, out);
        }
    }
    if let Some(items) = obj.get("items") {
        check_node(items, &format!("{path}[]"), in_junctor, out);
    } else if ty == Some("array") && !in_junctor {
        out.push(format!("{at}: array without `items`"));
    }
    match obj.get("additionalProperties") {
        Some(ap @ Value::Object(_)) => check_node(ap, &format!("{path}{{}}"), in_junctor, out),
        Some(Value::Bool(true)) => out.push(format!(
            "{at}: `additionalProperties: true` (use x-kubernetes-preserve-unknown-fields)"
        )),
        _ => {}
    }
    for j in JUNCTORS {
        if let Some(list) = obj.get(j) {
            let Some(list) = list.as_array() else {
                out.push(format!("{at}: `{j}` is not a list"));
                continue;
            };
            for (i, v) in list.iter().enumerate() {
                let p = format!("{path}/{j}[{i}]");
                // The int-or-string pattern `anyOf: [{type: integer}, {type: string}]`
                // is the one place a junctor may carry `type`.
                if int_or_string && j == "anyOf" {
                    let keys: Vec<&String> = v
                        .as_object()
                        .map(|o| o.keys().collect())
                        .unwrap_or_default();
                    if keys.iter().all(|k| *k == "type" || *k == "pattern")
                        && matches!(
                            v.get("type").and_then(Value::as_str),
                            Some("integer" | "string")
                        )
                    {
                        continue;
                    }
                }
                check_junctor_member(v, &p, out);
            }
        }
    }
    if let Some(n) = obj.get("not") {
        check_junctor_member(n, &format!("{path}/not"), out);
    }
}

fn check_junctor_member(node: &Value, path: &str, out: &mut Vec<String>) {
    if node.get("type").is_some() {
        out.push(format!("{path}: `type` inside a logical junctor"));
    }
    check_node(node, path, true, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_structural() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "string", "nullable": true},
            "b": {"type": "array", "items": {"type": "integer"}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "q": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "r": {"type": "object", "oneOf": [{"required": ["x"]}, {"required": ["y"]}], "properties": {"x": {"type": "string"}, "y": {"type": "string"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }});
        assert_eq!(structural_problems(&s), Vec::<String>::new());
        assert_eq!(preserve_unknown_paths(&s), [".free"]);
    }

    #[test]
    fn rejects_non_structural() {
        let s = json!({"type": "object", "properties": {
            "notype": {"description": "x"},
            "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "ref": {"$ref": "#/definitions/x"},
            "arr": {"type": "array"},
            "j": {"type": "object", "anyOf": [{"type": "string", "description": "d"}]},
            "ap": {"type": "object", "additionalProperties": true}
        }});
        let p = structural_problems(&s);
        for want in [
            ".notype: missing `type`",
            ".both: both",
            ".ref: `$ref`",
            ".arr: array without",
            ".j/anyOf[0]: `type` inside",
            ".j/anyOf[0]: `description` inside",
            ".ap: `additionalProperties: true`",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(want)),
                "no {want:?} in {p:#?}"
            );
        }
    }
}
