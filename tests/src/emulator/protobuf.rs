//! Decoding of the Kubernetes protobuf encoding for the few kinds kubectl's
//! `create` subcommands send that way (`kubectl create namespace`,
//! `configmap`, `secret`, `serviceaccount`, `token`, `role`,
//! `clusterrole`, `rolebinding`, `clusterrolebinding`). Their field numbers
//! come from the kinds' `generated.proto`. Any other kind sent as protobuf
//! is answered 415; create it from YAML (`kubectl apply -f`) instead.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

/// How one protobuf field maps onto JSON.
#[derive(Clone, Copy)]
enum Field {
    Str(&'static str),
    Int(&'static str),
    Bool(&'static str),
    RepeatedStr(&'static str),
    StrMap(&'static str),
    BytesMap(&'static str),
    Message(&'static str, &'static [(u64, Field)]),
    RepeatedMessage(&'static str, &'static [(u64, Field)]),
    Time(&'static str),
}

const OWNER_REFERENCE: &[(u64, Field)] = &[
    (1, Field::Str("kind")),
    (3, Field::Str("name")),
    (4, Field::Str("uid")),
    (5, Field::Str("apiVersion")),
    (6, Field::Bool("controller")),
    (7, Field::Bool("blockOwnerDeletion")),
];

const OBJECT_META: &[(u64, Field)] = &[
    (1, Field::Str("name")),
    (2, Field::Str("generateName")),
    (3, Field::Str("namespace")),
    (5, Field::Str("uid")),
    (6, Field::Str("resourceVersion")),
    (7, Field::Int("generation")),
    (8, Field::Time("creationTimestamp")),
    (11, Field::StrMap("labels")),
    (12, Field::StrMap("annotations")),
    (
        13,
        Field::RepeatedMessage("ownerReferences", OWNER_REFERENCE),
    ),
    (14, Field::RepeatedStr("finalizers")),
];

const OBJECT_REFERENCE: &[(u64, Field)] = &[
    (1, Field::Str("kind")),
    (2, Field::Str("namespace")),
    (3, Field::Str("name")),
    (4, Field::Str("uid")),
    (5, Field::Str("apiVersion")),
];

const NAME_REFERENCE: &[(u64, Field)] = &[(1, Field::Str("name"))];

const NAMESPACE: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (
        2,
        Field::Message("spec", &[(1, Field::RepeatedStr("finalizers"))]),
    ),
];

const CONFIG_MAP: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::StrMap("data")),
    (3, Field::BytesMap("binaryData")),
    (4, Field::Bool("immutable")),
];

const SECRET: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::BytesMap("data")),
    (3, Field::Str("type")),
    (4, Field::StrMap("stringData")),
    (5, Field::Bool("immutable")),
];

const SERVICE_ACCOUNT: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::RepeatedMessage("secrets", OBJECT_REFERENCE)),
    (
        3,
        Field::RepeatedMessage("imagePullSecrets", NAME_REFERENCE),
    ),
    (4, Field::Bool("automountServiceAccountToken")),
];

const BOUND_OBJECT_REFERENCE: &[(u64, Field)] = &[
    (1, Field::Str("kind")),
    (2, Field::Str("apiVersion")),
    (3, Field::Str("name")),
    (4, Field::Str("uid")),
];

const TOKEN_REQUEST: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (
        2,
        Field::Message(
            "spec",
            &[
                (1, Field::RepeatedStr("audiences")),
                (3, Field::Message("boundObjectRef", BOUND_OBJECT_REFERENCE)),
                (4, Field::Int("expirationSeconds")),
            ],
        ),
    ),
];

const POLICY_RULE: &[(u64, Field)] = &[
    (1, Field::RepeatedStr("verbs")),
    (2, Field::RepeatedStr("apiGroups")),
    (3, Field::RepeatedStr("resources")),
    (4, Field::RepeatedStr("resourceNames")),
    (5, Field::RepeatedStr("nonResourceURLs")),
];

const ROLE: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::RepeatedMessage("rules", POLICY_RULE)),
];

const SUBJECT: &[(u64, Field)] = &[
    (1, Field::Str("kind")),
    (2, Field::Str("apiGroup")),
    (3, Field::Str("name")),
    (4, Field::Str("namespace")),
];

const ROLE_BINDING: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::RepeatedMessage("subjects", SUBJECT)),
    (
        3,
        Field::Message(
            "roleRef",
            &[
                (1, Field::Str("apiGroup")),
                (2, Field::Str("kind")),
                (3, Field::Str("name")),
            ],
        ),
    ),
];

/// Decodes a `application/vnd.kubernetes.protobuf` body into JSON.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let unsupported = |why: &str| ApiError {
        code: 415,
        reason: "UnsupportedMediaType",
        message: format!(
            "the emulator cannot decode this protobuf body ({why}); send JSON or YAML"
        ),
        details: None,
    };
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| unsupported("no k8s envelope"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (number, value) in fields(envelope).map_err(|e| unsupported(&e))? {
        match (number, value) {
            (1, Wire::Len(type_meta)) => {
                for (n, v) in fields(type_meta).map_err(|e| unsupported(&e))? {
                    match (n, v) {
                        (1, Wire::Len(s)) => api_version = String::from_utf8_lossy(s).into_owned(),
                        (2, Wire::Len(s)) => kind = String::from_utf8_lossy(s).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        _ => return Err(unsupported(&format!("kind {api_version}/{kind}"))),
    };
    let mut object = message(raw, schema).map_err(|e| unsupported(&e))?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

/// A decoded wire value.
enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed,
}

fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".to_string())
}

fn fields(bytes: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let tag = varint(bytes, &mut pos)?;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(bytes, &mut pos)?),
            1 => {
                pos += 8;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).map_err(|e| e.to_string())?;
                let slice = bytes.get(pos..pos + len).ok_or("truncated field")?;
                pos += len;
                Wire::Len(slice)
            }
            5 => {
                pos += 4;
                Wire::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((tag >> 3, value));
    }
    Ok(out)
}

fn map_entry(bytes: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut key = String::new();
    let mut value = Vec::new();
    for (n, v) in fields(bytes)? {
        match (n, v) {
            (1, Wire::Len(k)) => key = String::from_utf8_lossy(k).into_owned(),
            (2, Wire::Len(v)) => value = v.to_vec(),
            _ => {}
        }
    }
    Ok((key, value))
}

fn message(bytes: &[u8], schema: &[(u64, Field)]) -> Result<Value, String> {
    let mut out = Map::new();
    let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
    for (number, wire) in fields(bytes)? {
        let Some((_, field)) = schema.iter().find(|(n, _)| *n == number) else {
            continue;
        };
        match (*field, wire) {
            // proto2 sends optional strings even when empty; JSON omits them.
            (Field::Str(_), Wire::Len([])) => {}
            (Field::Str(name), Wire::Len(b)) => {
                out.insert(name.to_string(), text(b));
            }
            (Field::Int(name), Wire::Varint(v)) => {
                out.insert(name.to_string(), json!(v as i64));
            }
            (Field::Bool(name), Wire::Varint(v)) => {
                out.insert(name.to_string(), json!(v != 0));
            }
            (Field::RepeatedStr(name), Wire::Len(b)) => {
                let entry = out.entry(name.to_string()).or_insert_with(|| json!([]));
                if let Some(items) = entry.as_array_mut() {
                    items.push(text(b));
                }
            }
            (Field::StrMap(name) | Field::BytesMap(name), Wire::Len(b)) => {
                let (key, value) = map_entry(b)?;
                let value = match *field {
                    Field::BytesMap(_) => {
                        json!(base64::engine::general_purpose::STANDARD.encode(&value))
                    }
                    _ => json!(String::from_utf8_lossy(&value)),
                };
                let entry = out.entry(name.to_string()).or_insert_with(|| json!({}));
                entry[key] = value;
            }
            (Field::Message(name, sub), Wire::Len(b)) => {
                out.insert(name.to_string(), message(b, sub)?);
            }
            (Field::RepeatedMessage(name, sub), Wire::Len(b)) => {
                let item = message(b, sub)?;
                let entry = out.entry(name.to_string()).or_insert_with(|| json!([]));
                if let Some(items) = entry.as_array_mut() {
                    items.push(item);
                }
            }
            (Field::Time(name), Wire::Len(b)) => {
                let mut seconds = 0i64;
                for (n, v) in fields(b)? {
                    if let (1, Wire::Varint(s)) = (n, v) {
                        seconds = s as i64;
                    }
                }
                if let Some(time) = chrono::DateTime::from_timestamp(seconds, 0) {
                    out.insert(
                        name.to_string(),
                        json!(time.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    );
                }
            }
            _ => return Err(format!("field {number} has an unexpected wire type")),
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [
            len_field(1, b"cfg"),
            len_field(11, &[len_field(1, b"app"), len_field(2, b"web")].concat()),
        ]
        .concat();
        let raw = [
            len_field(1, &meta),
            len_field(2, &[len_field(1, b"k"), len_field(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [len_field(1, b"v1"), len_field(2, b"ConfigMap")].concat();
        let body = [
            b"k8s\0".to_vec(),
            len_field(1, &type_meta),
            len_field(2, &raw),
        ]
        .concat();
        let object = decode(&body).expect("decodes");
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
        let pod = [
            b"k8s\0".to_vec(),
            len_field(1, &[len_field(1, b"v1"), len_field(2, b"Pod")].concat()),
        ]
        .concat();
        assert_eq!(decode(&pod).expect_err("pods are not decoded").code, 415);
    }
}
