//! An approximation of server-side apply, with per-manager field ownership
//! recorded in `metadata.managedFields`.
//!
//! Ownership is tracked for *leaf* fields. Lists whose items have keys —
//! `x-kubernetes-list-type: map` lists of a CRD (`x-kubernetes-list-map-keys`),
//! and the merge-keyed lists of built-in kinds (containers, env, webhooks…
//! by name) — are merged item by item, each item a `k:{…}` path segment as in
//! FieldsV1; every other list is an atomic leaf (sets are not merged). The
//! FieldsV1 written out names leaves only (no `.` entries).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::store::{WritePart, now};

/// A field path, e.g. `["spec", "replicas"]`.
pub type FieldPath = Vec<String>;

/// Where list keys come from while walking an object.
#[derive(Debug, Clone, Copy)]
enum Lists<'a> {
    /// A built-in kind: merge keys by field name.
    Builtin,
    /// A custom resource: this node of its schema (`None` past its end).
    Schema(Option<&'a Value>),
}

impl<'a> Lists<'a> {
    fn of(schema: Option<&'a Value>) -> Self {
        match schema {
            Some(schema) => Self::Schema(Some(schema)),
            None => Self::Builtin,
        }
    }

    fn field(self, name: &str) -> Self {
        match self {
            Self::Builtin => Self::Builtin,
            Self::Schema(node) => Self::Schema(node.and_then(|n| {
                n["properties"]
                    .get(name)
                    .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
            })),
        }
    }

    fn items(self) -> Self {
        match self {
            Self::Builtin => Self::Builtin,
            Self::Schema(node) => Self::Schema(node.and_then(|n| n.get("items"))),
        }
    }

    /// The key fields of a list named `field`, if its items are merged by key.
    fn keys(self, field: &str, items: &[Value]) -> Option<Vec<String>> {
        let keys = match self {
            Self::Builtin => super::patch::merge_key(field, items).map(|k| vec![k.to_string()])?,
            Self::Schema(node) => {
                let node = node?;
                if node["x-kubernetes-list-type"].as_str() != Some("map") {
                    return None;
                }
                node["x-kubernetes-list-map-keys"]
                    .as_array()?
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            }
        };
        let keyed = !keys.is_empty()
            && items
                .iter()
                .all(|i| keys.iter().all(|k| i.get(k).is_some()));
        keyed.then_some(keys)
    }
}

/// The `k:{…}` path segment naming a list item by its key fields.
fn item_segment(item: &Value, keys: &[String]) -> String {
    let fields: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", Value::String(k.clone()), item[k.as_str()]))
        .collect();
    format!("k:{{{}}}", fields.join(","))
}

/// Whether `item` is the one a `k:{…}` segment names.
fn item_matches(item: &Value, segment: &str) -> bool {
    let Some(keys) = segment
        .strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
    else {
        return false;
    };
    keys.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// Leaf field paths of an object that field ownership is tracked for: every
/// leaf outside `metadata`, plus labels, annotations, finalizers and
/// ownerReferences, restricted to the part of the object `part` writes.
/// `schema` is a custom resource's `openAPIV3Schema` (keyed lists).
pub fn owned_leaves(
    object: &Value,
    part: WritePart,
    has_status_subresource: bool,
    schema: Option<&Value>,
) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        let in_part = match part {
            WritePart::Status => key == "status",
            WritePart::Main => !(has_status_subresource && key == "status"),
        };
        if !in_part || key == "apiVersion" || key == "kind" {
            continue;
        }
        if key == "metadata" {
            for field in ["labels", "annotations"] {
                if let Some(Value::Object(entries)) = value.get(field) {
                    for k in entries.keys() {
                        out.insert(vec!["metadata".to_string(), field.to_string(), k.clone()]);
                    }
                }
            }
            for field in ["finalizers", "ownerReferences"] {
                if value.get(field).is_some() {
                    out.insert(vec!["metadata".to_string(), field.to_string()]);
                }
            }
            continue;
        }
        let lists = Lists::of(schema).field(key);
        collect_leaves(value, lists, &mut vec![key.clone()], &mut out);
    }
    out
}

fn collect_leaves(
    value: &Value,
    lists: Lists<'_>,
    path: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                collect_leaves(v, lists.field(k), path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let field = path.last().cloned().unwrap_or_default();
            let Some(keys) = lists.keys(&field, items) else {
                out.insert(path.clone());
                return;
            };
            for item in items {
                path.push(item_segment(item, &keys));
                collect_leaves(item, lists.items(), path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn step<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    if segment.starts_with("k:") {
        value
            .as_array()?
            .iter()
            .find(|item| item_matches(item, segment))
    } else {
        value.get(segment)
    }
}

/// The value at `path`, if present.
pub fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| step(v, k))
}

fn step_mut<'a>(value: &'a mut Value, segment: &str, create: bool) -> Option<&'a mut Value> {
    if let Some(keys) = segment.strip_prefix("k:") {
        if create && !value.is_array() {
            *value = json!([]);
        }
        let items = value.as_array_mut()?;
        let position = match items.iter().position(|item| item_matches(item, segment)) {
            Some(i) => i,
            None if create => {
                items.push(serde_json::from_str(keys).unwrap_or_else(|_| json!({})));
                items.len() - 1
            }
            None => return None,
        };
        return items.get_mut(position);
    }
    if create && !value.is_object() {
        *value = json!({});
    }
    let map = value.as_object_mut()?;
    if create {
        return Some(map.entry(segment.to_string()).or_insert(Value::Null));
    }
    map.get_mut(segment)
}

fn set_path(value: &mut Value, path: &[String], leaf: Value) {
    let mut cursor = value;
    for segment in path {
        match step_mut(cursor, segment, true) {
            Some(next) => cursor = next,
            None => return,
        }
    }
    *cursor = leaf;
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if first.starts_with("k:") {
        let Some(items) = value.as_array_mut() else {
            return;
        };
        let Some(i) = items.iter().position(|item| item_matches(item, first)) else {
            return;
        };
        if !rest.is_empty() {
            remove_path(&mut items[i], rest);
        }
        // An item removed whole, or emptied, leaves the list.
        if rest.is_empty() || items[i].as_object().is_some_and(Map::is_empty) {
            items.remove(i);
        }
        return;
    }
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_path(child, rest);
        // A map or list emptied by the removal goes too, as with the real
        // server.
        let emptied = child.as_object().is_some_and(Map::is_empty)
            || child.as_array().is_some_and(Vec::is_empty);
        if emptied {
            map.remove(first);
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry, decoded.
#[derive(Debug, Clone, PartialEq)]
struct Manager {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

fn read_managers(object: &Value) -> Vec<Manager> {
    let entries = object["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let mut fields = BTreeSet::new();
            decode_fields(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            Manager {
                manager: e["manager"].as_str().unwrap_or("").to_string(),
                operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                subresource: e["subresource"].as_str().unwrap_or("").to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                time: e["time"].as_str().unwrap_or("").to_string(),
                fields,
            }
        })
        .collect()
}

fn decode_fields(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = node.as_object() else { return };
    if map.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, v) in map {
        let segment = match k.strip_prefix("f:") {
            Some(name) => Some(name.to_string()),
            None if k.starts_with("k:") => Some(k.clone()),
            None => None,
        };
        if let Some(segment) = segment {
            path.push(segment);
            decode_fields(v, path, out);
            path.pop();
        }
    }
}

fn encode_fields(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cursor = &mut root;
        for key in path {
            let name = if key.starts_with("k:") {
                key.clone()
            } else {
                format!("f:{key}")
            };
            let entry = cursor.entry(name).or_insert_with(|| json!({}));
            let Some(next) = entry.as_object_mut() else {
                break;
            };
            cursor = next;
        }
    }
    Value::Object(root)
}

fn write_managers(object: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut entry = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(&m.fields),
            });
            if !m.subresource.is_empty() {
                entry["subresource"] = json!(m.subresource);
            }
            entry
        })
        .collect();
    if entries.is_empty() {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    } else {
        object["metadata"]["managedFields"] = Value::Array(entries);
    }
}

fn without_managed_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    copy
}

fn subresource_name(part: WritePart) -> &'static str {
    match part {
        WritePart::Main => "",
        WritePart::Status => "status",
    }
}

/// What a server-side apply is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The `fieldManager` query parameter (required by the real server).
    pub manager: &'a str,
    /// `force=true`: take ownership of conflicting fields.
    pub force: bool,
    /// Main resource or status subresource.
    pub part: WritePart,
    /// Whether the resource has a status subresource.
    pub has_status_subresource: bool,
    /// The custom resource's `openAPIV3Schema` (`None` for built-in kinds).
    pub schema: Option<&'a Value>,
}

/// Server-side apply of `applied` onto `current` (an empty object when the
/// object does not exist yet). Fields this manager applied before and no
/// longer applies are removed unless another manager also owns them; fields
/// owned by another manager with a different value are a conflict unless
/// `force`. Returns the new object with `managedFields` updated, or the
/// conflicting fields as an error message.
pub fn server_side_apply(
    current: &Value,
    applied: &Value,
    request: ApplyRequest<'_>,
) -> Result<Value, String> {
    let mut managers = read_managers(current);
    let subresource = subresource_name(request.part);
    let applied_fields = owned_leaves(
        applied,
        request.part,
        request.has_status_subresource,
        request.schema,
    );
    let is_me = |m: &Manager| {
        m.manager == request.manager && m.operation == "Apply" && m.subresource == subresource
    };

    if !request.force {
        let mut conflicts = Vec::new();
        for other in managers.iter().filter(|m| !is_me(m)) {
            for path in &applied_fields {
                let owned = other.fields.iter().any(|f| overlaps(f, path));
                if owned && get_path(current, path) != get_path(applied, path) {
                    conflicts.push(format!(
                        "conflict with \"{}\": .{}",
                        other.manager,
                        path.join(".")
                    ));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(format!(
                "Apply failed with {} conflict(s): {}",
                conflicts.len(),
                conflicts.join(", ")
            ));
        }
    }

    let previously: BTreeSet<FieldPath> = managers
        .iter()
        .filter(|m| is_me(m))
        .flat_map(|m| m.fields.clone())
        .collect();
    let mut next = current.clone();
    for path in previously.difference(&applied_fields) {
        let shared = managers
            .iter()
            .filter(|m| !is_me(m))
            .any(|m| m.fields.contains(path));
        if !shared {
            remove_path(&mut next, path);
        }
    }
    for path in &applied_fields {
        if let Some(value) = get_path(applied, path) {
            set_path(&mut next, path, value.clone());
        }
    }
    for other in managers.iter_mut().filter(|m| !is_me(m)) {
        // Ownership is shared when both applied the same value; a forced
        // change takes the field away from the previous owner.
        other.fields.retain(|f| {
            !applied_fields
                .iter()
                .any(|p| overlaps(f, p) && get_path(current, p) != get_path(applied, p))
        });
    }
    managers.retain(|m| !is_me(m));
    managers.push(Manager {
        manager: request.manager.to_string(),
        operation: "Apply".to_string(),
        subresource: subresource.to_string(),
        api_version: applied["apiVersion"].as_str().unwrap_or("").to_string(),
        time: now(),
        fields: applied_fields.clone(),
    });
    // A repeated identical apply is a no-op, as on the real server: no new
    // resourceVersion, so controllers applying every reconcile do not loop.
    if without_managed_fields(&next) == without_managed_fields(current)
        && previously == applied_fields
    {
        return Ok(current.clone());
    }
    write_managers(&mut next, &managers);
    Ok(next)
}

/// Records a non-apply write (create, update, patch) by `manager` (`schema`
/// as for [`owned_leaves`]): it takes
/// ownership of the fields it changed, which leave every other manager.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    part: WritePart,
    has_status_subresource: bool,
    schema: Option<&Value>,
) {
    let null = Value::Null;
    let old = old.unwrap_or(&null);
    let mut managers = read_managers(old);
    let before = owned_leaves(old, part, has_status_subresource, schema);
    let after = owned_leaves(new, part, has_status_subresource, schema);
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|p| get_path(old, p) != get_path(new, p))
        .chain(before.difference(&after))
        .cloned()
        .collect();
    if changed.is_empty() {
        // Keep whatever managedFields the write carried over from `old`.
        return;
    }
    let subresource = subresource_name(part);
    for m in managers.iter_mut() {
        m.fields.retain(|f| !changed.iter().any(|c| overlaps(f, c)));
    }
    let present: BTreeSet<FieldPath> = changed.intersection(&after).cloned().collect();
    match managers
        .iter_mut()
        .find(|m| m.manager == manager && m.operation == "Update" && m.subresource == subresource)
    {
        Some(mine) => {
            mine.fields.extend(present);
            mine.time = now();
        }
        None => managers.push(Manager {
            manager: manager.to_string(),
            operation: "Update".to_string(),
            subresource: subresource.to_string(),
            api_version: new["apiVersion"].as_str().unwrap_or("").to_string(),
            time: now(),
            fields: present,
        }),
    }
    write_managers(new, &managers);
}

#[cfg(test)]
mod tests;
