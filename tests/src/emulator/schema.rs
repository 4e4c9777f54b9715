//! Admission of custom resources against their CRD's `openAPIV3Schema`, in
//! the real server's order: prune unknown fields (or reject them under
//! `fieldValidation=Strict`), apply defaults, check the structural schema,
//! then evaluate CEL rules (`x-kubernetes-validations`, with `oldSelf` on
//! updates) through `kube-cel`.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult, Cause};
use super::registry::ResourceType;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and warn (the server default).
    Warn,
    /// Reject objects with unknown fields.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; absent means `Warn`, like the real server.
    pub fn parse(value: Option<&str>) -> ApiResult<Self> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, not {other:?}"
            ))),
        }
    }
}

/// An admitted object and the warnings to send back (`Warning` headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The pruned, defaulted object.
    pub object: Value,
    /// Warnings about dropped unknown fields (mode `Warn`).
    pub warnings: Vec<String>,
}

/// Admits `object` (a create, or an update of `old`) for resource `rt`.
/// Resources without a schema are admitted unchanged.
pub fn admit(
    rt: &ResourceType,
    object: Value,
    old: Option<&Value>,
    mode: FieldValidation,
) -> ApiResult<Admitted> {
    let Some(schema) = &rt.schema else {
        return Ok(Admitted {
            object,
            warnings: Vec::new(),
        });
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut object = object;
    let mut unknown = Vec::new();
    prune_root(schema, &mut object, &mut unknown);
    if mode == FieldValidation::Strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            fields.join(", "),
            kind = rt.kind,
            version = rt.version
        )));
    }
    let warnings = match mode {
        FieldValidation::Warn => unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect(),
        FieldValidation::Ignore | FieldValidation::Strict => Vec::new(),
    };
    let object = kube_cel::apply_defaults(schema, &object);
    let mut causes = Vec::new();
    if let Some(properties) = schema["properties"].as_object() {
        // The root's apiVersion, kind and metadata are the server's business.
        for (key, sub) in properties
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        {
            match object.get(key) {
                Some(value) => check(sub, value, key, &mut causes),
                None if is_required(schema, key) => {
                    causes.push(Cause::new("FieldValueRequired", key, "Required value"))
                }
                None => {}
            }
        }
    }
    if causes.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate(schema, &object, old)
    {
        for error in errors.into_vec() {
            let reason = error
                .reason
                .clone()
                .unwrap_or_else(|| "FieldValueInvalid".to_string());
            let value = get_dotted(&object, &error.field_path)
                .map(render_value)
                .unwrap_or_else(|| "\"object\"".to_string());
            let message = match reason.as_str() {
                "FieldValueRequired" => format!("Required value: {}", error.message),
                "FieldValueForbidden" => format!("Forbidden: {}", error.message),
                "FieldValueDuplicate" => format!("Duplicate value: {}", error.message),
                _ => format!("Invalid value: {value}: {}", error.message),
            };
            causes.push(Cause::new(&reason, &error.field_path, message));
        }
    }
    if causes.is_empty() {
        Ok(Admitted { object, warnings })
    } else {
        Err(ApiError::invalid(&rt.kind, &rt.group, &name, &causes))
    }
}

fn is_required(schema: &Value, key: &str) -> bool {
    schema["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|k| k == key))
}

fn get_dotted<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(object);
    }
    path.split('.').try_fold(object, |v, k| v.get(k))
}

/// How the real server prints a value inside `Invalid value: …`.
fn render_value(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".to_string(),
        Value::Array(_) => "\"array\"".to_string(),
        Value::Null => "\"null\"".to_string(),
        other => other.to_string(),
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Prunes below the root, leaving apiVersion, kind and metadata alone.
fn prune_root(schema: &Value, object: &mut Value, unknown: &mut Vec<String>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let keep_root = |k: &str| matches!(k, "apiVersion" | "kind" | "metadata");
    prune_map(schema, map, "", unknown, &keep_root);
}

fn prune_map(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    unknown: &mut Vec<String>,
    keep: &dyn Fn(&str) -> bool,
) {
    let properties = schema["properties"].as_object();
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let sub = properties.and_then(|p| p.get(&key)).or(additional);
        match sub {
            Some(sub) => {
                if let Some(value) = map.get_mut(&key) {
                    if value.is_null() && sub["nullable"].as_bool() != Some(true) {
                        // Non-nullable nulls are dropped, as the real server's
                        // defaulting does.
                        map.remove(&key);
                    } else {
                        prune_value(sub, value, &child_path, unknown);
                    }
                }
            }
            None if keep(&key) || preserves_unknown(schema) => {}
            None => {
                map.remove(&key);
                unknown.push(child_path);
            }
        }
    }
}

fn prune_value(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => prune_map(schema, map, path, unknown, &|_| false),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    let actual = type_name(value);
    actual == expected || (expected == "number" && actual == "integer")
}

/// Structural checks of one value against its schema node.
fn check(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |msg: String| {
        Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body {msg}",
                render_value(value)
            ),
        )
    };
    if value.is_null() {
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !matches!(type_name(value), "integer" | "string") {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type int-or-string: {:?}",
                    render_value(value),
                    type_name(value)
                ),
            ));
        }
        return;
    }
    if let Some(expected) = schema["type"].as_str()
        && !type_matches(expected, value)
    {
        causes.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body must be of type {expected}: {:?}",
                render_value(value),
                type_name(value)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                value,
                list.join(", ")
            ),
        ));
    }
    match value {
        Value::String(s) => check_string(schema, s, path, causes, &invalid),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let exclusive_min = schema["exclusiveMinimum"].as_bool() == Some(true);
            let exclusive_max = schema["exclusiveMaximum"].as_bool() == Some(true);
            if let Some(min) = schema["minimum"].as_f64() {
                if exclusive_min && x <= min {
                    causes.push(invalid(format!(
                        "should be greater than {}",
                        schema["minimum"]
                    )));
                } else if x < min {
                    causes.push(invalid(format!(
                        "should be greater than or equal to {}",
                        schema["minimum"]
                    )));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if exclusive_max && x >= max {
                    causes.push(invalid(format!(
                        "should be less than {}",
                        schema["maximum"]
                    )));
                } else if x > max {
                    causes.push(invalid(format!(
                        "should be less than or equal to {}",
                        schema["maximum"]
                    )));
                }
            }
            if let Some(m) = schema["multipleOf"].as_f64()
                && m > 0.0
                && (x / m).fract() != 0.0
            {
                causes.push(invalid(format!(
                    "should be a multiple of {}",
                    schema["multipleOf"]
                )));
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                causes.push(invalid(format!("should have at least {min} items")));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                causes.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(map) => {
            for key in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if map.get(key).is_none_or(Value::is_null) {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{path}.{key}"),
                        "Required value",
                    ));
                }
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (map.len() as u64) < min
            {
                causes.push(invalid(format!("should have at least {min} properties")));
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                causes.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {}: must have at most {max} items", map.len()),
                ));
            }
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                if let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) {
                    check(sub, child, &format!("{path}.{key}"), causes);
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

fn check_string(
    schema: &Value,
    s: &str,
    path: &str,
    causes: &mut Vec<Cause>,
    invalid: &dyn Fn(String) -> Cause,
) {
    let chars = s.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && chars < min
    {
        causes.push(invalid(format!("should be at least {min} chars long")));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && chars > max
    {
        causes.push(Cause::new(
            "FieldValueTooLong",
            path,
            format!("Too long: may not be more than {max} bytes"),
        ));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => causes.push(invalid(format!("should match '{pattern}'"))),
            Ok(_) => {}
            Err(_) => causes.push(invalid(format!("has an unusable pattern '{pattern}'"))),
        }
    }
    if let Some(format) = schema["format"].as_str()
        && !format_ok(format, s)
    {
        causes.push(invalid(format!("must be of type {format}: {s:?}")));
    }
}

/// The string formats the real server checks (unknown formats pass, as there).
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "uuid" => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
                && parts
                    .iter()
                    .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "email" => s
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.')),
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "uri" => s.contains("://"),
        _ => true,
    }
}

#[cfg(test)]
mod tests;
