//! The in-memory object store: one global resourceVersion counter, the
//! metadata the server owns (uid, creationTimestamp, generation,
//! deletionTimestamp), finalizer-aware deletion, and a bounded event history
//! that watches resume from.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::{ApiError, ApiResult};
use super::registry::ResourceType;

/// How many past events a watch can resume from before it gets 410 Gone,
/// unless told otherwise.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Identity of a stored object. Objects are stored per group and plural, not
/// per version: every served version of a CRD shares its objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group (empty for core).
    pub group: String,
    /// Plural resource name.
    pub plural: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    /// Key of `name` in `namespace` for resource `rt`.
    pub fn new(rt: &ResourceType, namespace: &str, name: &str) -> Self {
        Self {
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed (including deletionTimestamp being set).
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The resourceVersion the change produced.
    pub revision: u64,
    /// What happened.
    pub kind: EventType,
    /// Which object.
    pub key: ObjectKey,
    /// The object after the change (its last state, for deletions).
    pub object: Value,
    /// The object before the change (modifications only), so a filtered
    /// watch can tell an object that stopped matching from one that changed.
    pub previous: Option<Value>,
}

/// Whether a write targets the main resource or its `status` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePart {
    /// Main resource: `.status` is ignored when a status subresource exists.
    Main,
    /// `/status`: everything except `.status` is ignored.
    Status,
}

/// The objects and their history.
#[derive(Debug)]
pub struct Store {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<WatchEvent>,
    /// Events at or below this revision have been dropped from history.
    history_floor: u64,
    history_limit: usize,
    events: broadcast::Sender<WatchEvent>,
    seed: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store keeping [`DEFAULT_HISTORY`] events.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping the last `history_limit` events (at least one)
    /// for watches to resume from.
    pub fn with_history(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(4096);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Self {
            revision: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_floor: 0,
            history_limit: history_limit.max(1),
            events,
            seed,
        }
    }

    /// The current global resourceVersion.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource, in one namespace or (`None`) all of them.
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| {
                k.group == group
                    && k.plural == plural
                    && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates an object: assigns name (from generateName), uid,
    /// creationTimestamp, generation and resourceVersion.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> ApiResult<Value> {
        let name = match object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            Some(name) => name.to_string(),
            None => match object["metadata"]["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{}", self.random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        "",
                        &[super::error::Cause::new(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ));
                }
            },
        };
        let key = ObjectKey::new(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        self.revision += 1;
        let uid = self.uid();
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(namespace);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now());
        meta["resourceVersion"] = json!(self.revision.to_string());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("selfLink");
        }
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        self.objects.insert(key.clone(), object.clone());
        self.record(EventType::Added, key, object.clone(), None);
        Ok(object)
    }

    /// Replaces an object with `proposed` in one step: [`prepare_update`]
    /// then [`Store::commit_update`].
    pub fn update(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        proposed: Value,
        part: WritePart,
    ) -> ApiResult<Value> {
        let old = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &key.name))?;
        let next = prepare_update(rt, old, proposed, part)?;
        self.commit_update(rt, key, next)
    }

    /// Stores an object built by [`prepare_update`]: bumps `generation` only
    /// when something other than metadata and status changed, skips no-op
    /// writes (no new resourceVersion, no event, like the real server) and
    /// removes an object whose deletion only waited for its finalizers.
    pub fn commit_update(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        mut next: Value,
    ) -> ApiResult<Value> {
        let Some(old) = self.objects.get(key).cloned() else {
            return Err(ApiError::not_found(&key.group, &key.plural, &key.name));
        };
        if next["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(
                &key.group,
                &key.plural,
                &key.name,
                STALE,
            ));
        }
        let spec_changed = without_meta_and_status(&next, rt.status_subresource)
            != without_meta_and_status(&old, rt.status_subresource);
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] = json!(if spec_changed {
            generation + 1
        } else {
            generation
        });
        if next == old {
            return Ok(old);
        }
        self.revision += 1;
        next["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        if next["metadata"].get("deletionTimestamp").is_some() && finalizers_empty(&next) {
            self.remove(key, next.clone());
            return Ok(next);
        }
        self.objects.insert(key.clone(), next.clone());
        self.record(EventType::Modified, key.clone(), next.clone(), Some(old));
        Ok(next)
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp;
    /// without, it is removed. Removal cascades: objects in a deleted
    /// namespace go, and so do objects whose every owner is gone (the
    /// garbage collector's background propagation).
    pub fn delete(&mut self, rt: &ResourceType, key: &ObjectKey) -> ApiResult<Value> {
        if !self.objects.contains_key(key) {
            return Err(ApiError::not_found(&rt.group, &rt.plural, &key.name));
        }
        Ok(self.delete_key(key).unwrap_or(Value::Null))
    }

    fn delete_key(&mut self, key: &ObjectKey) -> Option<Value> {
        let mut object = self.objects.get(key).cloned()?;
        if !finalizers_empty(&object) {
            if object["metadata"].get("deletionTimestamp").is_some() {
                return Some(object);
            }
            let before = object.clone();
            self.revision += 1;
            object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            self.objects.insert(key.clone(), object.clone());
            self.record(
                EventType::Modified,
                key.clone(),
                object.clone(),
                Some(before),
            );
            return Some(object);
        }
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.remove(key, object.clone());
        Some(object)
    }

    /// Removes an object for good, then what depended on it.
    fn remove(&mut self, key: &ObjectKey, last: Value) {
        self.objects.remove(key);
        self.record(EventType::Deleted, key.clone(), last.clone(), None);
        let mut dependents: Vec<ObjectKey> = Vec::new();
        if key.group.is_empty() && key.plural == "namespaces" {
            dependents.extend(
                self.objects
                    .keys()
                    .filter(|k| k.namespace == key.name)
                    .cloned(),
            );
        }
        if let Some(uid) = last["metadata"]["uid"].as_str() {
            let live_uids: std::collections::BTreeSet<&str> = self
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str())
                .collect();
            for (k, o) in &self.objects {
                let owners: Vec<&str> = o["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["uid"].as_str())
                    .collect();
                if owners.contains(&uid) && owners.iter().all(|u| !live_uids.contains(u)) {
                    dependents.push(k.clone());
                }
            }
        }
        for dependent in dependents {
            self.delete_key(&dependent);
        }
    }

    /// Removes every object of one resource (a CRD was deleted).
    pub fn purge(&mut self, group: &str, plural: &str) {
        let keys: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.group == group && k.plural == plural)
            .cloned()
            .collect();
        for k in keys {
            if let Some(mut o) = self.objects.get(&k).cloned() {
                self.revision += 1;
                o["metadata"]["resourceVersion"] = json!(self.revision.to_string());
                self.remove(&k, o);
            }
        }
    }

    /// Events after `revision` plus a receiver for later ones, taken
    /// atomically so nothing falls between them. `Err` (410) when history
    /// no longer reaches back that far.
    pub fn watch_from(
        &self,
        revision: u64,
    ) -> ApiResult<(Vec<WatchEvent>, broadcast::Receiver<WatchEvent>)> {
        if revision < self.history_floor {
            return Err(ApiError::gone(format!(
                "too old resource version: {revision} ({})",
                self.history_floor
            )));
        }
        let past = self
            .history
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        Ok((past, self.events.subscribe()))
    }

    /// A receiver for events after the current revision.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    fn record(&mut self, kind: EventType, key: ObjectKey, object: Value, previous: Option<Value>) {
        let event = WatchEvent {
            revision: self.revision,
            kind,
            key,
            object,
            previous,
        };
        if self.history.len() >= self.history_limit
            && let Some(dropped) = self.history.pop_front()
        {
            self.history_floor = dropped.revision;
        }
        self.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64 over a per-store seed: unique enough for names and uids
        // of a test server, and no extra dependency.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uid(&mut self) -> String {
        let a = self.next_random();
        let b = self.next_random();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        // The alphabet the real server uses for generateName (no vowels).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

/// RFC 3339 UTC time with second precision, as Kubernetes writes it.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

const STALE: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Builds the object a write of `proposed` over `old` would store: checks
/// `metadata.resourceVersion` when the proposal carries one (409 on
/// mismatch), splits spec and status per `part` and keeps the metadata the
/// server owns.
pub fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    proposed: Value,
    part: WritePart,
) -> ApiResult<Value> {
    let name = old["metadata"]["name"].as_str().unwrap_or("");
    if let Some(rv) = proposed["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(&rt.group, &rt.plural, name, STALE));
    }
    let mut next = match part {
        WritePart::Status => {
            let mut next = old.clone();
            next["status"] = proposed.get("status").cloned().unwrap_or(Value::Null);
            strip_null(&mut next, "status");
            if let Some(fields) = proposed["metadata"].get("managedFields") {
                next["metadata"]["managedFields"] = fields.clone();
            }
            next
        }
        WritePart::Main => {
            let mut next = proposed;
            if rt.status_subresource {
                next["status"] = old.get("status").cloned().unwrap_or(Value::Null);
                strip_null(&mut next, "status");
            }
            keep_server_metadata(&mut next, old);
            next
        }
    };
    next["apiVersion"] = old["apiVersion"].clone();
    next["kind"] = old["kind"].clone();
    next["metadata"]["generation"] = old["metadata"]["generation"].clone();
    next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    Ok(next)
}

fn strip_null(object: &mut Value, field: &str) {
    if object.get(field).is_some_and(Value::is_null)
        && let Some(map) = object.as_object_mut()
    {
        map.remove(field);
    }
}

/// Fields of metadata that clients cannot change through writes.
fn keep_server_metadata(next: &mut Value, old: &Value) {
    if !next["metadata"].is_object() {
        next["metadata"] = json!({});
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(field) {
            Some(v) => next["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
}

fn without_meta_and_status(object: &Value, drop_status: bool) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        if drop_status {
            map.remove("status");
        }
    }
    copy
}

fn finalizers_empty(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests;
