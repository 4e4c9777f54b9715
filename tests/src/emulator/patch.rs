//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic
//! merge patch (lists merged by the merge keys of the built-in kinds we
//! serve, looked up by field name rather than from the OpenAPI schema; other
//! lists are replaced). Server-side apply lives in [`super::apply`].

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};

/// The patch types the emulator understands, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch.
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// Parses a Content-Type header.
    pub fn from_content_type(content_type: &str) -> ApiResult<Self> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies a merge, strategic or JSON patch body to `current`.
pub fn apply_patch(current: &Value, kind: PatchKind, body: &[u8]) -> ApiResult<Value> {
    let mut next = current.clone();
    match kind {
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
            json_patch::merge(&mut next, &patch);
        }
        PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(&mut next, &patch);
        }
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            for operation in patch.0 {
                // As in the real server's JSON patch library, testing that an
                // absent path is null succeeds (kube-rs's finalizer helper
                // relies on it).
                if let json_patch::PatchOperation::Test(test) = &operation
                    && test.value.is_null()
                    && next.pointer(test.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut next, std::slice::from_ref(&operation)).map_err(|e| {
                    ApiError::unprocessable(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
        }
        PatchKind::Apply => {
            return Err(ApiError::bad_request(
                "apply patches go through server-side apply",
            ));
        }
    }
    Ok(next)
}

/// The merge key of a list field of the built-in kinds, by field name.
/// `ports` is keyed by `containerPort` in containers and `port` in Services.
pub(super) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "webhooks"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Applies a strategic merge patch: a merge patch whose lists with a merge
/// key are merged element by element (`$patch: delete` removes one),
/// primitive `finalizers` are a set, and `$setElementOrder`/`$retainKeys`
/// directives are ignored.
fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Some(map) = replacement.as_object_mut() {
            map.remove("$patch");
        }
        *doc = replacement;
        return;
    }
    if !doc.is_object() {
        *doc = json!({});
    }
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = value
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(items) = doc.get_mut(field).and_then(Value::as_array_mut) {
                items.retain(|item| !drop.contains(&item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let Some(map) = doc.as_object_mut() else {
            return;
        };
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(_) => {
                strategic_merge(map.entry(key.clone()).or_insert_with(|| json!({})), value)
            }
            Value::Array(items) => {
                let existing = map.get(key).and_then(Value::as_array).cloned();
                let merged = match (existing, merge_key(key, items)) {
                    (Some(current), Some(merge_key)) => merge_list(current, items, merge_key),
                    (Some(mut current), None) if key == "finalizers" => {
                        current.extend(
                            items
                                .iter()
                                .filter(|i| !current.contains(i))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                        current
                    }
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect(),
                };
                map.insert(key.clone(), Value::Array(merged));
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn merge_list(mut current: Vec<Value>, patch: &[Value], merge_key: &str) -> Vec<Value> {
    for item in patch {
        let id = item.get(merge_key);
        let position = current
            .iter()
            .position(|c| id.is_some() && c.get(merge_key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut current[i], item),
            (None, true) => {}
            (None, false) => {
                let mut fresh = json!({});
                strategic_merge(&mut fresh, item);
                current.push(fresh);
            }
        }
    }
    current
}

#[cfg(test)]
mod tests;
