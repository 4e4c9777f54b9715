//! Checks a JSON value against a structural OpenAPI v3 schema the way the
//! Kubernetes API server does for custom resources (types, required fields,
//! enums, bounds, patterns, unknown fields), collecting every problem with
//! its field path instead of stopping at the first.
//!
//! The standalone sidecar has no API server, so it runs these checks (and
//! the CEL rules, see [`crate::load`]) on the same YAML users apply.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

/// One field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path in the object, as the API server writes it: `spec.targets[0].weight`.
    pub field: String,
    /// What is wrong, in the API server's words where it has some.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Compiled patterns, so checking many objects against one schema does not
/// recompile the same regex.
#[derive(Default)]
pub struct Checker {
    patterns: HashMap<String, Option<regex::Regex>>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every problem of `value` against `schema`, paths rooted at `root`
    /// (empty for the object itself).
    pub fn check(&mut self, schema: &Value, value: &Value, root: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.walk(schema, value, root, &mut errors);
        errors
    }

    fn walk(&mut self, schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldError>) {
        let Some(schema) = schema.as_object() else {
            return;
        };
        let err = |out: &mut Vec<FieldError>, message: String| {
            out.push(FieldError {
                field: path.to_owned(),
                message,
            })
        };
        if value.is_null() {
            if !flag(schema, "nullable") {
                err(out, "Required value: must not be null".into());
            }
            return;
        }
        if flag(schema, "x-kubernetes-int-or-string") {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                err(out, "Invalid value: must be an integer or a string".into());
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let type_ok = match ty {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("boolean") => value.is_boolean(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            _ => true,
        };
        if !type_ok {
            let ty = ty.unwrap_or("?");
            err(
                out,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type {ty}: \"{}\"",
                    kind_of(value),
                    kind_of(value)
                ),
            );
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            err(
                out,
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    list.join(", ")
                ),
            );
        }
        match value {
            Value::Object(map) => self.walk_object(schema, map, path, out),
            Value::Array(items) => {
                if let Some(min) = uint(schema, "minItems")
                    && (items.len() as u64) < min
                {
                    err(
                        out,
                        format!("Required value: must have at least {min} items"),
                    );
                }
                if let Some(max) = uint(schema, "maxItems")
                    && (items.len() as u64) > max
                {
                    err(
                        out,
                        format!("Too many: {}: must have at most {max} items", items.len()),
                    );
                }
                self.check_list_type(schema, items, path, out);
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &format!("{path}[{i}]"), out);
                    }
                }
            }
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(min) = uint(schema, "minLength")
                    && len < min
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {value}: {path} in body should be at least {min} chars long"
                        ),
                    );
                }
                if let Some(max) = uint(schema, "maxLength")
                    && len > max
                {
                    err(out, format!("Too long: may not be more than {max} bytes"));
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                    match self.regex(pattern) {
                        Some(re) if !re.is_match(s) => err(
                            out,
                            format!(
                                "Invalid value: {value}: {path} in body should match '{pattern}'"
                            ),
                        ),
                        _ => {}
                    }
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                    && x < min
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                        ),
                    );
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                    && x > max
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                        ),
                    );
                }
                if let Some(format) = schema.get("format").and_then(Value::as_str)
                    && !fits_format(n, format)
                {
                    err(
                        out,
                        format!("Invalid value: {n}: out of range for {format}"),
                    );
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn walk_object(
        &mut self,
        schema: &Map<String, Value>,
        map: &Map<String, Value>,
        path: &str,
        out: &mut Vec<FieldError>,
    ) {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    out.push(FieldError {
                        field: join(key),
                        message: "Required value".into(),
                    });
                }
            }
        }
        if let Some(max) = uint(schema, "maxProperties")
            && (map.len() as u64) > max
        {
            out.push(FieldError {
                field: path.to_owned(),
                message: format!("Too many: {}: must have at most {max} items", map.len()),
            });
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
        for (key, v) in map {
            if let Some(prop) = properties.and_then(|p| p.get(key)) {
                self.walk(prop, v, &join(key), out);
            } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                self.walk(extra, v, &join(key), out);
            } else if !preserve && properties.is_some() {
                out.push(FieldError {
                    field: join(key),
                    message: format!("unknown field \"{}\"", join(key)),
                });
            }
        }
    }

    /// `x-kubernetes-list-type: set` items and `map` keys are unique, as the
    /// API server enforces.
    fn check_list_type(
        &mut self,
        schema: &Map<String, Value>,
        items: &[Value],
        path: &str,
        out: &mut Vec<FieldError>,
    ) {
        let keys: Vec<&str> = match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => Vec::new(),
            Some("map") => schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            _ => return,
        };
        let mut seen: Vec<Value> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = if keys.is_empty() {
                item.clone()
            } else {
                Value::Object(
                    keys.iter()
                        .map(|k| {
                            (
                                (*k).to_owned(),
                                item.get(*k).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect(),
                )
            };
            if seen.contains(&key) {
                out.push(FieldError {
                    field: format!("{path}[{i}]"),
                    message: format!("Duplicate value: {key}"),
                });
            } else {
                seen.push(key);
            }
        }
    }

    fn regex(&mut self, pattern: &str) -> Option<&regex::Regex> {
        self.patterns
            .entry(pattern.to_owned())
            .or_insert_with(|| regex::Regex::new(pattern).ok())
            .as_ref()
    }
}

fn flag(schema: &Map<String, Value>, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn uint(schema: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = schema.get(key)?;
    v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn fits_format(n: &serde_json::Number, format: &str) -> bool {
    let (lo, hi): (i128, i128) = match format {
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" => (0, u64::MAX.into()),
        _ => return true,
    };
    let v = n
        .as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from));
    v.is_some_and(|v| (lo..=hi).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
                "count": {"type": "integer", "minimum": 1, "maximum": 5, "format": "uint32"},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "opt": {"type": "string", "nullable": true}
            }
        })
    }

    fn fields(v: Value) -> Vec<String> {
        Checker::new()
            .check(&schema(), &v, "spec")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_object_has_no_errors() {
        let v = json!({"name": "ok", "count": 3, "mode": "a", "tags": ["x"], "labels": {"k": "v"}, "free": {"any": 1}, "opt": null});
        assert!(fields(v).is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let v = json!({"count": 9, "mode": "c", "tags": ["x", "y", 3], "labels": {"k": 1}, "bogus": true});
        let mut f = fields(v);
        f.sort();
        assert_eq!(
            f,
            vec![
                "spec.bogus",
                "spec.count",
                "spec.labels.k",
                "spec.mode",
                "spec.name",
                "spec.tags",
                "spec.tags[2]"
            ]
        );
    }

    #[test]
    fn messages_name_the_rule_broken() {
        let errs = Checker::new().check(&schema(), &json!({"name": "UP"}), "spec");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("should match '^[a-z]+$'"),
            "{}",
            errs[0]
        );
        let errs = Checker::new().check(&schema(), &json!({"name": "a", "count": "3"}), "spec");
        assert!(
            errs[0].message.contains("must be of type integer"),
            "{}",
            errs[0]
        );
    }
}
