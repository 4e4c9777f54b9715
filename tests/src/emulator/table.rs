//! `meta.k8s.io/v1 Table` responses for `kubectl get`: the Name column, the
//! CRD's `additionalPrinterColumns` (a JSONPath subset evaluated on the
//! object) and Age.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Renders `objects` as a Table; `list_meta` is the list's metadata.
pub fn render(
    rt: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let mut has_age = false;
    for column in &rt.printer_columns {
        let name = column["name"].as_str().unwrap_or("");
        if column["jsonPath"].as_str() == Some(".metadata.creationTimestamp") {
            has_age = true;
        }
        columns.push(json!({
            "name": name,
            "type": column["type"].as_str().unwrap_or("string"),
            "format": column["format"].as_str().unwrap_or(""),
            "description": column["description"].as_str().unwrap_or(""),
            "priority": column["priority"].as_i64().unwrap_or(0),
        }));
    }
    if !has_age {
        columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            for column in &rt.printer_columns {
                let path = column["jsonPath"].as_str().unwrap_or("");
                let value = evaluate(object, path);
                let cell = if path == ".metadata.creationTimestamp" {
                    json!(age(value.first().and_then(|v| v.as_str()), now))
                } else {
                    cell_value(column["type"].as_str().unwrap_or("string"), &value)
                };
                cells.push(cell);
            }
            if !has_age {
                cells.push(json!(age(
                    object["metadata"]["creationTimestamp"].as_str(),
                    now
                )));
            }
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn cell_value(kind: &str, values: &[Value]) -> Value {
    match values {
        [] => Value::Null,
        [single] => match (kind, single) {
            ("string", Value::String(_)) => single.clone(),
            ("string", Value::Object(_) | Value::Array(_)) => json!(single.to_string()),
            ("string", other) => json!(other.to_string()),
            _ => single.clone(),
        },
        many => json!(
            many.iter()
                .map(|v| v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// `5m`, `3h`, `2d` — the short form kubectl prints.
fn age(timestamp: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(created) = timestamp.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".to_string();
    };
    let secs = (now - created.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `['a.b']`,
/// `[0]`, `[*]`, and filters `[?(@.type=="Ready")]`.
pub fn evaluate(object: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut current = vec![object.clone()];
    let mut rest = path;
    while !rest.is_empty() && !current.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            current = current.iter().filter_map(|v| v.get(key).cloned()).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = find_closing(after) else {
                return Vec::new();
            };
            let inner = &after[..end];
            rest = &after[end + 1..];
            current = step_bracket(&current, inner);
        } else {
            return Vec::new();
        }
    }
    current.into_iter().filter(|v| !v.is_null()).collect()
}

fn find_closing(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('[', None) => depth += 1,
            (']', None) if depth == 0 => return Some(i),
            (']', None) => depth -= 1,
            _ => {}
        }
    }
    None
}

fn step_bracket(current: &[Value], inner: &str) -> Vec<Value> {
    let inner = inner.trim();
    if inner == "*" {
        return current
            .iter()
            .flat_map(|v| match v {
                Value::Array(items) => items.clone(),
                Value::Object(map) => map.values().cloned().collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let Some((lhs, rhs)) = filter.split_once("==") else {
            return Vec::new();
        };
        let field = lhs.trim().trim_start_matches('@');
        let expected = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
        return current
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|item| {
                evaluate(item, field).first().is_some_and(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                        == expected
                })
            })
            .cloned()
            .collect();
    }
    if let Ok(index) = inner.parse::<i64>() {
        return current
            .iter()
            .filter_map(Value::as_array)
            .filter_map(|items| {
                let i = if index < 0 {
                    items.len() as i64 + index
                } else {
                    index
                };
                usize::try_from(i).ok().and_then(|i| items.get(i).cloned())
            })
            .collect();
    }
    let key = inner.trim_matches(|c| c == '"' || c == '\'');
    current.iter().filter_map(|v| v.get(key).cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let object = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "x"}},
            "spec": {"targets": [{"n": 1}, {"n": 2}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]},
        });
        assert_eq!(
            evaluate(&object, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(evaluate(&object, ".spec.targets[1].n"), vec![json!(2)]);
        assert_eq!(
            evaluate(&object, ".spec.targets[*].n"),
            vec![json!(1), json!(2)]
        );
        assert_eq!(
            evaluate(&object, ".metadata.labels['app.kubernetes.io/name']"),
            vec![json!("x")]
        );
        assert!(evaluate(&object, ".spec.missing").is_empty());
    }

    #[test]
    fn age_is_short() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T01:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(age(Some("2026-01-01T00:59:30Z"), now), "30s");
        assert_eq!(age(Some("2026-01-01T00:00:00Z"), now), "60m");
        assert_eq!(age(None, now), "<unknown>");
    }
}
