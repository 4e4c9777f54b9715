use serde_json::{Value, json};

use super::*;

fn apply(current: &Value, applied: Value, manager: &str, force: bool) -> Result<Value, String> {
    server_side_apply(
        current,
        &applied,
        ApplyRequest {
            manager,
            force,
            part: WritePart::Main,
            has_status_subresource: true,
            schema: None,
        },
    )
}

#[test]
fn two_managers_with_disjoint_fields_keep_each_other() {
    let base = json!({"apiVersion": "example.com/v1", "kind": "W", "metadata": {"name": "w"}});
    let mut first = base.clone();
    first["spec"] = json!({"a": 1});
    let after_first = apply(&json!({}), first.clone(), "one", false).expect("first apply");
    let mut second = base.clone();
    second["spec"] = json!({"b": 2});
    let after_second = apply(&after_first, second, "two", false).expect("second apply");
    assert_eq!(after_second["spec"], json!({"a": 1, "b": 2}));
    // "one" drops nothing it did not own and keeps "two"'s field.
    let mut first_again = base.clone();
    first_again["spec"] = json!({"a": 3});
    let after = apply(&after_second, first_again, "one", false).expect("re-apply");
    assert_eq!(after["spec"], json!({"a": 3, "b": 2}));
    assert_eq!(
        after["metadata"]["managedFields"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn apply_removes_fields_no_longer_applied_and_detects_conflicts() {
    let base = json!({"apiVersion": "example.com/v1", "kind": "W", "metadata": {"name": "w"}});
    let mut first = base.clone();
    first["spec"] = json!({"a": 1, "b": 1});
    let obj = apply(&json!({}), first, "one", false).expect("apply");
    let mut shrunk = base.clone();
    shrunk["spec"] = json!({"a": 1});
    let obj = apply(&obj, shrunk, "one", false).expect("apply");
    assert_eq!(obj["spec"], json!({"a": 1}));
    let mut rival = base.clone();
    rival["spec"] = json!({"a": 2});
    let err = apply(&obj, rival.clone(), "two", false).expect_err("conflict");
    assert!(err.contains("conflict with \"one\": .spec.a"), "{err}");
    let forced = apply(&obj, rival, "two", true).expect("forced");
    assert_eq!(forced["spec"]["a"], 2);
}

#[test]
fn updates_take_ownership_from_appliers() {
    let applied =
        json!({"apiVersion": "v1", "kind": "W", "metadata": {"name": "w"}, "spec": {"a": 1}});
    let obj = apply(&json!({}), applied.clone(), "one", false).expect("apply");
    let mut updated = obj.clone();
    updated["spec"]["a"] = json!(5);
    record_update(
        Some(&obj),
        &mut updated,
        "editor",
        WritePart::Main,
        true,
        None,
    );
    let managers = updated["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(managers.len(), 1, "{managers:?}");
    assert_eq!(managers[0]["manager"], "editor");
    // Re-applying the old value now conflicts with the editor.
    assert!(apply(&updated, applied, "one", false).is_err());
}

#[test]
fn keyed_lists_merge_item_by_item() {
    // Built-in: webhooks are keyed by name, so a manager applying only the
    // caBundle of one webhook leaves the rest of the configuration alone.
    let config = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "inject"},
        "webhooks": [{"name": "a", "rules": [1], "clientConfig": {"service": {"name": "s"}}}, {"name": "b", "rules": [2]}]});
    let installed = apply(&json!({}), config, "helm", false).expect("install");
    let ca = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "inject"}, "webhooks": [{"name": "a", "clientConfig": {"caBundle": "Q0E="}}]});
    let injected = apply(&installed, ca.clone(), "operator", false).expect("inject");
    assert_eq!(injected["webhooks"][0]["rules"], json!([1]));
    assert_eq!(
        injected["webhooks"][0]["clientConfig"],
        json!({"service": {"name": "s"}, "caBundle": "Q0E="})
    );
    assert_eq!(injected["webhooks"][1], json!({"name": "b", "rules": [2]}));
    let fields = &injected["metadata"]["managedFields"][1]["fieldsV1"];
    assert!(
        fields["f:webhooks"].get(r#"k:{"name":"a"}"#).is_some(),
        "{fields}"
    );
    // Re-applying is a no-op; dropping the item drops only what the manager owned.
    assert_eq!(
        apply(&injected, ca, "operator", false).expect("again"),
        injected
    );
    let none = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "inject"}});
    let withdrawn = apply(&injected, none, "operator", false).expect("withdraw");
    assert_eq!(
        withdrawn["webhooks"][0],
        json!({"name": "a", "rules": [1], "clientConfig": {"service": {"name": "s"}}})
    );
}

#[test]
fn crd_list_maps_follow_the_schema() {
    let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
        "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "items": {"type": "object"}},
        "tags": {"type": "array", "items": {"type": "string"}},
    }}}});
    let request = |manager| ApplyRequest {
        manager,
        force: false,
        part: WritePart::Status,
        has_status_subresource: true,
        schema: Some(&schema),
    };
    let base = json!({"apiVersion": "example.com/v1", "kind": "W", "metadata": {"name": "w"}});
    let mut mine = base.clone();
    mine["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}], "tags": ["a"]});
    let obj = server_side_apply(&base, &mine, request("one")).expect("one");
    let mut theirs = base.clone();
    theirs["status"] = json!({"conditions": [{"type": "Synced", "status": "False"}]});
    let obj = server_side_apply(&obj, &theirs, request("two")).expect("two keeps one's condition");
    assert_eq!(
        obj["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}])
    );
    // An atomic list owned by another manager conflicts.
    let mut tags = base.clone();
    tags["status"] = json!({"tags": ["b"]});
    assert!(server_side_apply(&obj, &tags, request("two")).is_err());
}
