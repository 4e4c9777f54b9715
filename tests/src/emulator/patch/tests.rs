use serde_json::json;

use super::*;

#[test]
fn merge_and_json_patches() {
    let current = json!({"spec": {"a": 1, "b": 2}});
    let merged =
        apply_patch(&current, PatchKind::Merge, br#"{"spec":{"a":null,"c":3}}"#).expect("merge");
    assert_eq!(merged, json!({"spec": {"b": 2, "c": 3}}));
    let patched = apply_patch(
        &current,
        PatchKind::Json,
        br#"[{"op":"replace","path":"/spec/a","value":5}]"#,
    )
    .expect("json patch");
    assert_eq!(patched["spec"]["a"], 5);
    let strategic = apply_patch(
        &current,
        PatchKind::Strategic,
        br#"{"spec":{"$retainKeys":["a"],"a":7}}"#,
    )
    .expect("smp");
    assert_eq!(strategic, json!({"spec": {"a": 7, "b": 2}}));
    assert!(
        apply_patch(
            &current,
            PatchKind::Json,
            br#"[{"op":"test","path":"/spec/a","value":9}]"#
        )
        .is_err()
    );
}

#[test]
fn strategic_merge_merges_lists_by_key() {
    let current = json!({
        "metadata": {"finalizers": ["a"]},
        "webhooks": [
            {"name": "one", "rules": [1], "clientConfig": {"caBundle": "old"}},
            {"name": "two", "rules": [2]},
        ],
    });
    let patch = br#"{
        "$setElementOrder/webhooks": [{"name": "one"}, {"name": "two"}],
        "metadata": {"finalizers": ["b"]},
        "webhooks": [{"name": "one", "clientConfig": {"caBundle": "new"}}, {"name": "two", "$patch": "delete"}, {"name": "three"}]
    }"#;
    let merged = apply_patch(&current, PatchKind::Strategic, patch).expect("smp");
    assert_eq!(
        merged,
        json!({
            "metadata": {"finalizers": ["a", "b"]},
            "webhooks": [{"name": "one", "rules": [1], "clientConfig": {"caBundle": "new"}}, {"name": "three"}],
        })
    );
}

#[test]
fn json_patch_null_test_on_absent_path_passes() {
    let current = json!({"metadata": {"name": "x"}});
    let body = br#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["f"]}]"#;
    let patched = apply_patch(&current, PatchKind::Json, body).expect("null test passes");
    assert_eq!(patched["metadata"]["finalizers"], json!(["f"]));
    let failed =
        apply_patch(&patched, PatchKind::Json, body).expect_err("finalizers are no longer null");
    assert_eq!(failed.code, 422);
}
