use serde_json::json;

use super::*;
use crate::emulator::registry::builtin_types;

fn widgets() -> ResourceType {
    let crd = json!({
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "subresources": {"status": {}}}],
        }
    });
    crate::emulator::registry::types_from_crd(&crd).remove(0)
}

fn configmaps() -> ResourceType {
    builtin_types()
        .into_iter()
        .find(|t| t.plural == "configmaps")
        .expect("configmaps is built in")
}

#[test]
fn create_assigns_server_metadata() {
    let mut store = Store::new();
    let created = store
        .create(
            &widgets(),
            "ns",
            json!({"metadata": {"generateName": "w-"}, "spec": {"a": 1}}),
        )
        .expect("create");
    let name = created["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("w-") && name.len() == 7, "{name}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    assert_eq!(created["apiVersion"], "example.com/v1");
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    let again = store.create(&widgets(), "ns", json!({"metadata": {"name": name}}));
    assert_eq!(again.expect_err("duplicate").code, 409);
}

#[test]
fn generation_follows_spec_only_and_status_is_split() {
    let rt = widgets();
    let mut store = Store::new();
    store
        .create(
            &rt,
            "ns",
            json!({"metadata": {"name": "w"}, "spec": {"a": 1}}),
        )
        .expect("create");
    let key = ObjectKey::new(&rt, "ns", "w");
    let with_status = store
        .update(
            &rt,
            &key,
            json!({"metadata": {"name": "w"}, "spec": {"a": 1}, "status": {"s": 1}}),
            WritePart::Status,
        )
        .expect("status write");
    assert_eq!(with_status["metadata"]["generation"], 1);
    assert_eq!(with_status["status"]["s"], 1);
    let main = store
        .update(
            &rt,
            &key,
            json!({"metadata": {"name": "w"}, "spec": {"a": 2}, "status": {"s": 99}}),
            WritePart::Main,
        )
        .expect("main write");
    assert_eq!(main["metadata"]["generation"], 2);
    assert_eq!(main["status"]["s"], 1, "main writes ignore status");
    let stale = store.update(
        &rt,
        &key,
        json!({"metadata": {"name": "w", "resourceVersion": "1"}, "spec": {}}),
        WritePart::Main,
    );
    assert_eq!(stale.expect_err("stale").code, 409);
}

#[test]
fn noop_update_keeps_resource_version() {
    let rt = configmaps();
    let mut store = Store::new();
    let created = store
        .create(
            &rt,
            "ns",
            json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
        )
        .expect("create");
    let key = ObjectKey::new(&rt, "ns", "c");
    let same = store
        .update(&rt, &key, created.clone(), WritePart::Main)
        .expect("update");
    assert_eq!(
        same["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let rt = configmaps();
    let mut store = Store::new();
    store
        .create(
            &rt,
            "ns",
            json!({"metadata": {"name": "c", "finalizers": ["x/y"]}}),
        )
        .expect("create");
    let key = ObjectKey::new(&rt, "ns", "c");
    let marked = store.delete(&rt, &key).expect("delete");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(store.get(&key).is_some());
    let mut cleared = marked.clone();
    cleared["metadata"]["finalizers"] = json!([]);
    store
        .update(&rt, &key, cleared, WritePart::Main)
        .expect("clear finalizers");
    assert!(store.get(&key).is_none());
}

#[test]
fn watch_history_resumes_and_expires() {
    let rt = configmaps();
    let mut store = Store::new();
    for i in 0..3 {
        store
            .create(&rt, "ns", json!({"metadata": {"name": format!("c{i}")}}))
            .expect("create");
    }
    let (past, _rx) = store.watch_from(1).expect("history reaches back");
    assert_eq!(
        past.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![2, 3]
    );
    store.history_floor = 2;
    assert_eq!(store.watch_from(1).expect_err("too old").code, 410);
}

#[test]
fn removal_collects_owned_objects() {
    let rt = configmaps();
    let mut store = Store::new();
    let owner = store
        .create(&rt, "ns", json!({"metadata": {"name": "owner"}}))
        .expect("create");
    let uid = owner["metadata"]["uid"].as_str().expect("uid").to_string();
    let owned = json!({"metadata": {"name": "owned", "ownerReferences": [{"uid": uid, "name": "owner", "kind": "ConfigMap", "apiVersion": "v1"}]}});
    store.create(&rt, "ns", owned).expect("create");
    store
        .create(&rt, "ns", json!({"metadata": {"name": "free"}}))
        .expect("create");
    store
        .delete(&rt, &ObjectKey::new(&rt, "ns", "owner"))
        .expect("delete");
    assert!(
        store.get(&ObjectKey::new(&rt, "ns", "owned")).is_none(),
        "garbage collected"
    );
    assert!(store.get(&ObjectKey::new(&rt, "ns", "free")).is_some());
}
