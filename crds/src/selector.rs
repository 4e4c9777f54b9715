//! Label selectors, matched the way the API server matches them.

use std::collections::BTreeMap;

use crate::common::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything.
/// An operator other than `In`, `NotIn`, `Exists` and `DoesNotExist` matches
/// nothing, as the API server would refuse it.
pub fn matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Whether an optional selector matches: `None` matches everything.
pub fn matches_opt(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector.is_none_or(|s| matches(s, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_all_must_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "shop")])),
            match_expressions: Some(vec![
                req("tier", "In", &["web", "api"]),
                req("canary", "DoesNotExist", &[]),
                req("env", "NotIn", &["dev"]),
            ]),
        };
        assert!(matches(
            &sel,
            Some(&labels(&[("app", "shop"), ("tier", "api")]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[("app", "shop"), ("tier", "db")]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[
                ("app", "shop"),
                ("tier", "web"),
                ("canary", "1")
            ]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[("app", "shop"), ("tier", "web"), ("env", "dev")]))
        ));
        assert!(!matches(&sel, None));
    }

    #[test]
    fn empty_selector_matches_everything_and_bad_operators_nothing() {
        assert!(matches(&LabelSelector::default(), None));
        assert!(matches_opt(None, None));
        let bad = LabelSelector {
            match_expressions: Some(vec![req("a", "Equals", &["b"])]),
            ..Default::default()
        };
        assert!(!matches(&bad, Some(&labels(&[("a", "b")]))));
    }
}
