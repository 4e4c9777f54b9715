//! What the real server does to built-in kinds beyond storing them: a
//! Secret's write-only `stringData` folded into `data`; namespaces labelled
//! `kubernetes.io/metadata.name` and `Active`; pods defaulted (service
//! account, restart and DNS policy, image pull policy…) before admission
//! webhooks see them, and created `Pending`. No controller runs: pods stay
//! `Pending` until someone (a test playing kubelet) writes their status.
//! `events.k8s.io` Events are listed through the core Events API too.

use serde_json::{Value, json};

use super::registry::ResourceType;

fn is_core(rt: &ResourceType, plural: &str) -> bool {
    rt.group.is_empty() && rt.plural == plural
}

/// Applied to every create and update body.
pub fn on_write(rt: &ResourceType, object: &mut Value) {
    use base64::Engine as _;
    if !is_core(rt, "secrets") {
        return;
    }
    let Some(Value::Object(plain)) = object.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    for (key, value) in plain {
        let text = value.as_str().unwrap_or("").to_string();
        object["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Applied on create, after the body's status was dropped.
pub fn on_create(rt: &ResourceType, object: &mut Value) {
    if is_core(rt, "namespaces")
        && let Some(name) = object["metadata"]["name"].as_str().map(str::to_string)
    {
        // Webhook namespace selectors rely on this label.
        object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        object["status"] = json!({"phase": "Active"});
    }
    if is_core(rt, "pods") {
        object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
}

fn default_field(object: &mut Value, field: &str, value: Value) {
    if object.get(field).is_none_or(Value::is_null) {
        object[field] = value;
    }
}

/// The defaults the real server gives a pod when decoding it, before any
/// admission webhook runs.
pub fn default_pod(pod: &mut Value) {
    if !pod["spec"].is_object() {
        return;
    }
    let spec = &mut pod["spec"];
    default_field(spec, "serviceAccountName", json!("default"));
    let service_account = spec["serviceAccountName"].clone();
    default_field(spec, "serviceAccount", service_account);
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "enableServiceLinks", json!(true));
    default_field(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            let image = container["image"].as_str().unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, t)| t);
            let pull = if tag.is_none_or(|t| t == "latest") {
                "Always"
            } else {
                "IfNotPresent"
            };
            default_field(container, "imagePullPolicy", json!(pull));
            default_field(
                container,
                "terminationMessagePath",
                json!("/dev/termination-log"),
            );
            default_field(container, "terminationMessagePolicy", json!("File"));
            default_field(container, "resources", json!({}));
        }
    }
}

/// An `events.k8s.io/v1` Event as the core `v1` API shows it.
pub fn event_as_core(event: &Value) -> Value {
    let count = event["deprecatedCount"]
        .as_i64()
        .or_else(|| event["series"]["count"].as_i64())
        .unwrap_or(1);
    let source = match event.get("deprecatedSource").filter(|s| s.is_object()) {
        Some(source) => source.clone(),
        None => json!({"component": event["reportingController"]}),
    };
    let mut core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": event["metadata"],
        "involvedObject": event["regarding"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "source": source,
        "count": count,
        "firstTimestamp": event["deprecatedFirstTimestamp"],
        "lastTimestamp": event["deprecatedLastTimestamp"],
        "eventTime": event["eventTime"],
        "action": event["action"],
        "related": event["related"],
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
    });
    if let Some(series) = event.get("series").filter(|s| s.is_object()) {
        core["series"] =
            json!({"count": series["count"], "lastObservedTime": series["lastObservedTime"]});
    }
    if let Some(map) = core.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_server_defaults() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "r/app:1"}, {"name": "b", "image": "app"}]}});
        default_pod(&mut pod);
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Always");
        let mut own = json!({"spec": {"serviceAccountName": "app", "containers": []}});
        default_pod(&mut own);
        assert_eq!(own["spec"]["serviceAccount"], "app");
    }
}
