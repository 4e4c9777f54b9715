//! Label and field selectors as they appear in list and watch query strings.

use serde_json::Value;

use super::error::{ApiError, ApiResult};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),h,!i`); all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(text: &str) -> ApiResult<Self> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self(requirements))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> ApiResult<Requirement> {
    let invalid = || ApiError::bad_request(format!("unable to parse requirement: {part:?}"));
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_string()));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    for (keyword, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = part.split_once(keyword) {
            let set = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(invalid)?;
            let values: Vec<String> = set
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let key = key.trim().to_string();
            return Ok(if negated {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    if part.contains(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        return Err(invalid());
    }
    Ok(Requirement::Exists(part.to_string()))
}

/// A parsed field selector (`=`, `==`, `!=`). Any dotted field path is
/// accepted and compared as text (missing fields read as empty): more
/// lenient than the real server, which allows only a few fields per kind
/// (`metadata.name`, `metadata.namespace`, and e.g. `involvedObject.*` on
/// events, which `kubectl describe` uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(text: &str) -> ApiResult<Self> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            let field = field.trim();
            let valid = !field.is_empty()
                && field.split('.').all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Whether an object satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.split('.').try_fold(object, |v, k| v.get(k)) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// Whether labels satisfy a `metav1.LabelSelector` object (`matchLabels`
/// and `matchExpressions`), as webhook namespace and object selectors use.
/// An absent or empty selector matches everything.
pub fn selector_object_matches(selector: &Value, labels: &Value) -> bool {
    let get = |key: &str| labels.get(key).and_then(Value::as_str);
    let match_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let match_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    match_labels && match_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matches(selector: &str, labels: Value) -> bool {
        LabelSelector::parse(selector)
            .expect("selector parses")
            .matches(&labels)
    }

    #[test]
    fn label_selector_operators() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(matches("app=web", labels.clone()));
        assert!(matches("app==web,tier", labels.clone()));
        assert!(!matches("app!=web", labels.clone()));
        assert!(matches(
            "app in (web, db),tier notin (back)",
            labels.clone()
        ));
        assert!(!matches("app notin (web)", labels.clone()));
        assert!(matches("!missing", labels.clone()));
        assert!(!matches("!app", labels.clone()));
        assert!(matches("missing notin (x)", labels.clone()));
        assert!(!matches("missing in (x)", labels));
        assert!(matches("", json!({})));
    }

    #[test]
    fn selector_objects() {
        let labels = json!({"sluice.dev/inject": "enabled"});
        assert!(selector_object_matches(&json!({}), &labels));
        assert!(selector_object_matches(
            &json!({"matchLabels": {"sluice.dev/inject": "enabled"}}),
            &labels
        ));
        let expr = json!({"matchExpressions": [{"key": "sluice.dev/inject", "operator": "NotIn", "values": ["enabled"]}]});
        assert!(!selector_object_matches(&expr, &labels));
        let exists = json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]});
        assert!(selector_object_matches(&exists, &labels));
    }

    #[test]
    fn bad_label_selector_is_rejected() {
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selector_on_name_and_namespace() {
        let object = json!({"metadata": {"name": "a", "namespace": "ns"}});
        let selector =
            FieldSelector::parse("metadata.name=a,metadata.namespace!=other").expect("parses");
        assert!(selector.matches(&object));
        assert!(
            !FieldSelector::parse("metadata.name==b")
                .expect("parses")
                .matches(&object)
        );
        let event = json!({"involvedObject": {"name": "w", "kind": "Widget"}, "count": 2});
        let on_widget =
            FieldSelector::parse("involvedObject.name=w,involvedObject.kind=Widget,count=2")
                .expect("parses");
        assert!(on_widget.matches(&event));
        assert!(
            FieldSelector::parse("involvedObject.uid=")
                .expect("parses")
                .matches(&event)
        );
        assert!(FieldSelector::parse("spec..x=1").is_err());
    }
}
