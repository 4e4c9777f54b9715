//! What the real apiextensions server does when a CRD is written: checks the
//! fields every CRD needs, and reports it `NamesAccepted` and `Established`
//! at once (the emulator has no delay before serving it).

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Cause};
use super::registry::ResourceType;
use super::store::now;

/// Whether `rt` is `customresourcedefinitions.apiextensions.k8s.io`.
pub fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}

/// The (group, plural) a CRD object serves.
pub fn served_by(crd: &Value) -> Option<(String, String)> {
    Some((
        crd["spec"]["group"].as_str()?.to_string(),
        crd["spec"]["names"]["plural"].as_str()?.to_string(),
    ))
}

/// Rejects a CRD lacking what the real server requires, with its messages.
pub fn check(crd: &Value) -> ApiResult<()> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    let spec = &crd["spec"];
    let mut causes = Vec::new();
    let mut required = |value: &Value, field: &str| {
        if value.as_str().is_none_or(str::is_empty) {
            causes.push(Cause::new("FieldValueRequired", field, "Required value"));
        }
    };
    required(&spec["group"], "spec.group");
    required(&spec["names"]["plural"], "spec.names.plural");
    required(&spec["names"]["kind"], "spec.names.kind");
    required(&spec["scope"], "spec.scope");
    if let Some((group, plural)) = served_by(crd)
        && name != format!("{plural}.{group}")
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count()
        != 1
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.versions",
            "Invalid value: \"array\": must have exactly one version marked as storage version",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            &causes,
        ))
    }
}

/// The status the server writes: accepted names, stored versions and the
/// `NamesAccepted` and `Established` conditions (transition times kept).
pub fn status(crd: &Value, old_status: Option<&Value>) -> Value {
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let since = |kind: &str| {
        old_status
            .and_then(|s| s["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(now)
    };
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": since("Established")},
        ],
    })
}
