use serde_json::json;

use super::*;

fn widget_type() -> ResourceType {
    let crd = json!({
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "x-kubernetes-validations": [{"rule": "self.size <= self.max", "message": "size must not exceed max"}],
                            "properties": {
                                "size": {"type": "integer", "minimum": 1},
                                "max": {"type": "integer", "default": 10},
                                "color": {"type": "string", "enum": ["red", "blue"]},
                                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "when": {"type": "string", "format": "date-time"},
                                "immutable": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable"}]},
                            },
                        },
                    },
                }},
            }],
        }
    });
    crate::emulator::registry::types_from_crd(&crd).remove(0)
}

fn widget(spec: Value) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})
}

fn causes(err: &ApiError) -> Vec<(String, String)> {
    err.details
        .as_ref()
        .and_then(|d| d["causes"].as_array())
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn defaults_and_pruning() {
    let admitted = admit(
        &widget_type(),
        widget(json!({"size": 2, "junk": 1, "free": {"any": 1}})),
        None,
        FieldValidation::Warn,
    )
    .expect("valid widget");
    assert_eq!(
        admitted.object["spec"],
        json!({"size": 2, "max": 10, "free": {"any": 1}})
    );
    assert_eq!(
        admitted.warnings,
        vec!["unknown field \"spec.junk\"".to_string()]
    );
    let strict = admit(
        &widget_type(),
        widget(json!({"size": 2, "junk": 1})),
        None,
        FieldValidation::Strict,
    )
    .expect_err("strict");
    assert_eq!(strict.code, 400);
    assert!(
        strict.message.contains("unknown field \"spec.junk\""),
        "{}",
        strict.message
    );
}

#[test]
fn structural_errors_name_the_field() {
    let err = admit(
        &widget_type(),
        widget(json!({"size": 0, "color": "green", "name": "ABC", "tags": ["a", "b", "c"], "when": "later"})),
        None,
        FieldValidation::Warn,
    )
    .expect_err("invalid");
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .starts_with("Widget.example.com \"w\" is invalid: ["),
        "{}",
        err.message
    );
    let fields: Vec<String> = causes(&err).into_iter().map(|(f, _)| f).collect();
    for f in [
        "spec.size",
        "spec.color",
        "spec.name",
        "spec.tags",
        "spec.when",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    let missing = admit(
        &widget_type(),
        widget(json!({})),
        None,
        FieldValidation::Warn,
    )
    .expect_err("required");
    assert_eq!(
        causes(&missing),
        vec![("spec.size".to_string(), "Required value".to_string())]
    );
}

#[test]
fn cel_rules_and_transition_rules() {
    let err = admit(
        &widget_type(),
        widget(json!({"size": 20})),
        None,
        FieldValidation::Warn,
    )
    .expect_err("cel");
    assert!(
        err.message
            .contains("spec: Invalid value: \"object\": size must not exceed max"),
        "{}",
        err.message
    );
    let old = widget(json!({"size": 1, "immutable": "a"}));
    let err = admit(
        &widget_type(),
        widget(json!({"size": 1, "immutable": "b"})),
        Some(&old),
        FieldValidation::Warn,
    )
    .expect_err("oldSelf");
    assert!(
        err.message
            .contains("spec.immutable: Invalid value: \"b\": is immutable"),
        "{}",
        err.message
    );
}
