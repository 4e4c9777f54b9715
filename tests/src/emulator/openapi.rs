//! Just enough OpenAPI v3 for kubectl: `/openapi/v3` lists one document per
//! group version; each document declares, per resource, a PATCH operation
//! tagged with its group/version/kind that accepts `fieldValidation` — so
//! kubectl leaves schema validation to the server (`fieldValidation=Strict`)
//! — and whose request body does not offer strategic merge patch, so
//! `kubectl apply` sends JSON merge patches for custom resources, as it does
//! against a real server. CRD schemas are published as components, so
//! `kubectl explain` works for custom resources; built-in kinds have none.

use serde_json::{Map, Value, json};

use super::registry::ResourceType;

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A hash of what the served types are, so kubectl's OpenAPI cache notices
/// CRDs coming and going.
fn fingerprint(types: &[ResourceType]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for t in types {
        for byte in t
            .group
            .bytes()
            .chain(t.version.bytes())
            .chain(t.plural.bytes())
            .chain(t.kind.bytes())
        {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        hash = (hash ^ u64::from(t.namespaced)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

/// `/openapi/v3`.
pub fn root(types: &[ResourceType]) -> Value {
    let hash = fingerprint(types);
    let mut paths = Map::new();
    for t in types {
        let gv = group_version_path(&t.group, &t.version);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/group/version>`, or `None` if nothing is served there.
pub fn group_version(types: &[ResourceType], gv_path: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in types
        .iter()
        .filter(|t| group_version_path(&t.group, &t.version) == gv_path)
    {
        if let Some(schema) = &t.schema {
            let mut schema = schema.clone();
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
            let reversed: Vec<&str> = t.group.split('.').rev().collect();
            schemas.insert(
                format!("{}.{}.{}", reversed.join("."), t.version, t.kind),
                schema,
            );
        }
        let prefix = format!("/{gv_path}");
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let body_schema = json!({"schema": {"type": "object"}});
        paths.insert(
            item,
            json!({
                "patch": {
                    "operationId": format!("patch{}", t.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
                    "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                    "requestBody": {"content": {
                        "application/json-patch+json": body_schema,
                        "application/merge-patch+json": body_schema,
                        "application/apply-patch+yaml": body_schema,
                    }},
                    "responses": {"200": {"description": "OK"}},
                },
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
