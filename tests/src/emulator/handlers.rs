//! The verbs on resources: get, list, create, update, patch (merge, JSON,
//! strategic, apply), delete, deletecollection, plus TokenReview and
//! TokenRequest. Each runs under the state lock from start to finish, so a
//! write is checked and committed atomically.

use serde_json::{Value, json};

use super::apply::{self, ApplyRequest};
use super::error::{ApiError, ApiResult, Cause};
use super::patch::{self, PatchKind};
use super::routes::{ResourcePath, issue_token};
use super::schema::{self, FieldValidation};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{ApiRequest, Body, Shared, State, json_response};
use super::store::{self, ObjectKey, WritePart};
use super::table;
use super::{builtin, crd};

/// A handler's successful answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub code: u16,
    /// JSON body.
    pub body: Value,
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

impl Reply {
    fn new(code: u16, body: Value) -> Self {
        Self {
            code,
            body,
            warnings: Vec::new(),
        }
    }

    /// The HTTP response.
    pub fn into_response(self) -> hyper::Response<Body> {
        json_response(self.code, &self.body, &self.warnings)
    }
}

/// Serves an object as the version the client asked for. Versions share
/// storage and no conversion runs (CRD conversion strategy `None`).
fn as_version(path: &ResourcePath, mut object: Value) -> Value {
    object["apiVersion"] = json!(path.rt.api_version());
    object
}

fn part_of(path: &ResourcePath) -> WritePart {
    if path.subresource.as_deref() == Some("status") {
        WritePart::Status
    } else {
        WritePart::Main
    }
}

/// GET one object (or its status), as JSON or a Table.
pub fn get(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Reply> {
    let key = path.key()?;
    let state = shared.lock();
    let object = state
        .store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&path.rt.group, &path.rt.plural, &key.name))?;
    let object = as_version(path, object);
    if table::wants_table(&req.accept) {
        let meta = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
        return Ok(Reply::new(
            200,
            table::render(&path.rt, &[object], meta, chrono::Utc::now()),
        ));
    }
    Ok(Reply::new(200, object))
}

/// Objects of a collection path matching the request's selectors.
pub fn select(state: &State, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Vec<Value>> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))?;
    let namespace = if path.rt.namespaced {
        path.namespace.as_deref()
    } else {
        None
    };
    let mut objects = state.store.list(&path.rt.group, &path.rt.plural, namespace);
    if path.rt.group.is_empty() && path.rt.plural == "events" {
        // events.k8s.io Events (what kube-rs's Recorder writes) show through
        // the core API too, as on a real server, so `kubectl describe` and
        // `kubectl get events` list them.
        let newer = state.store.list("events.k8s.io", "events", namespace);
        objects.extend(newer.iter().map(builtin::event_as_core));
    }
    Ok(objects
        .into_iter()
        .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
        .map(|o| as_version(path, o))
        .collect())
}

/// LIST a collection (no pagination: `limit` is ignored and no `continue`
/// token is ever returned, which clients accept).
pub fn list(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Reply> {
    let state = shared.lock();
    let items = select(&state, path, req)?;
    let meta = json!({"resourceVersion": state.store.revision().to_string()});
    if table::wants_table(&req.accept) {
        return Ok(Reply::new(
            200,
            table::render(&path.rt, &items, meta, chrono::Utc::now()),
        ));
    }
    Ok(Reply::new(
        200,
        json!({"kind": format!("{}List", path.rt.kind), "apiVersion": path.rt.api_version(), "metadata": meta, "items": items}),
    ))
}

/// RFC 1123 subdomain, the rule for most object names.
fn check_name(path: &ResourcePath, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        &path.rt.kind,
        &path.rt.group,
        name,
        &[Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        )],
    ))
}

/// POST to a collection.
pub fn create(
    shared: &Shared,
    path: &ResourcePath,
    req: &ApiRequest,
    object: Value,
) -> ApiResult<Reply> {
    let mode = FieldValidation::parse(req.param("fieldValidation"))?;
    let mut state = shared.lock();
    create_locked(
        &mut state,
        path,
        object,
        mode,
        Some(&req.manager()),
        dry_run(req),
    )
}

fn dry_run(req: &ApiRequest) -> bool {
    req.param("dryRun").is_some_and(|d| d == "All")
}

/// Creates under the lock; `manager` is `None` when the object already
/// carries the managedFields of a server-side apply.
fn create_locked(
    state: &mut State,
    path: &ResourcePath,
    mut object: Value,
    mode: FieldValidation,
    manager: Option<&str>,
    dry_run: bool,
) -> ApiResult<Reply> {
    let rt = &path.rt;
    let namespace = path.namespace.clone().unwrap_or_default();
    if rt.namespaced {
        if namespace.is_empty() {
            return Err(ApiError::bad_request(
                "a namespaced resource must be created in a namespace",
            ));
        }
        if let Some(body_ns) = object["metadata"]["namespace"].as_str()
            && !body_ns.is_empty()
            && body_ns != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let ns_key = ObjectKey {
            group: String::new(),
            plural: "namespaces".to_string(),
            namespace: String::new(),
            name: namespace.clone(),
        };
        if state.store.get(&ns_key).is_none() {
            return Err(ApiError::not_found("", "namespaces", &namespace));
        }
    }
    if let Some(name) = object["metadata"]["name"].as_str() {
        check_name(path, name)?;
    }
    builtin::on_write(rt, &mut object);
    if rt.status_subresource
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    if crd::is_crd(rt) {
        crd::check(&object)?;
        object["status"] = crd::status(&object, None);
    }
    builtin::on_create(rt, &mut object);
    let admitted = schema::admit(rt, object, None, mode)?;
    let mut object = admitted.object;
    if let Some(manager) = manager {
        apply::record_update(
            None,
            &mut object,
            manager,
            WritePart::Main,
            rt.status_subresource,
            rt.schema.as_ref(),
        );
    }
    if dry_run {
        return Ok(Reply {
            code: 201,
            body: as_version(path, object),
            warnings: admitted.warnings,
        });
    }
    let created = state.store.create(rt, &namespace, object)?;
    if crd::is_crd(rt) {
        state.refresh_types();
    }
    if rt.group.is_empty() && rt.plural == "namespaces" {
        state.add_default_service_account(created["metadata"]["name"].as_str().unwrap_or(""));
    }
    Ok(Reply {
        code: 201,
        body: as_version(path, created),
        warnings: admitted.warnings,
    })
}

/// The write pipeline for existing objects: build the proposal from the old
/// object, split spec/status, admit against the schema, record field
/// ownership, commit with optimistic concurrency.
fn write_existing(
    state: &mut State,
    path: &ResourcePath,
    req: &ApiRequest,
    manager: Option<&str>,
    make: impl FnOnce(&Value) -> ApiResult<Value>,
) -> ApiResult<Reply> {
    let rt = &path.rt;
    let part = part_of(path);
    let mode = FieldValidation::parse(req.param("fieldValidation"))?;
    let key = path.key()?;
    let old = state
        .store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &key.name))?;
    let mut proposed = make(&old)?;
    builtin::on_write(rt, &mut proposed);
    if let Some(name) = proposed["metadata"]["name"].as_str()
        && name != key.name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            key.name
        )));
    }
    let mut next = store::prepare_update(rt, &old, proposed, part)?;
    if crd::is_crd(rt) {
        crd::check(&next)?;
        next["status"] = crd::status(&next, old.get("status"));
    }
    let admitted = schema::admit(rt, next, Some(&old), mode)?;
    let mut next = admitted.object;
    if let Some(manager) = manager {
        apply::record_update(
            Some(&old),
            &mut next,
            manager,
            part,
            rt.status_subresource,
            rt.schema.as_ref(),
        );
    }
    if dry_run(req) {
        return Ok(Reply {
            code: 200,
            body: as_version(path, next),
            warnings: admitted.warnings,
        });
    }
    let stored = state.store.commit_update(rt, &key, next)?;
    if crd::is_crd(rt) {
        state.refresh_types();
    }
    Ok(Reply {
        code: 200,
        body: as_version(path, stored),
        warnings: admitted.warnings,
    })
}

/// PUT an object or its status.
pub fn replace(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Reply> {
    let body = req.json_body()?;
    let manager = req.manager();
    let mut state = shared.lock();
    write_existing(&mut state, path, req, Some(&manager), |_| Ok(body))
}

/// What a PATCH did.
#[derive(Debug)]
pub enum Patched {
    /// The object was patched.
    Done(Reply),
    /// An apply patch for an absent object: this object is to be created
    /// with [`create_applied`] (after admission webhooks, for pods).
    Create(Value),
}

/// PATCH an object or its status; apply patches create absent objects.
pub fn patch(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Patched> {
    let kind = PatchKind::from_content_type(&req.content_type)?;
    if kind == PatchKind::Strategic && path.rt.custom {
        // As on the real server: custom resources have no patch strategies.
        return Err(ApiError::unsupported_media_type(&req.content_type));
    }
    let manager = req.manager();
    let mut state = shared.lock();
    if kind != PatchKind::Apply {
        return write_existing(&mut state, path, req, Some(&manager), |old| {
            patch::apply_patch(old, kind, &req.body)
        })
        .map(Patched::Done);
    }
    let Some(manager) = req.param("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PATCH, fieldManager is required for apply requests",
        ));
    };
    let applied = req.json_body()?;
    if applied["apiVersion"].as_str().is_none() || applied["kind"].as_str().is_none() {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an apply patch",
        ));
    }
    let request = ApplyRequest {
        manager,
        force: req.param("force").is_some_and(|f| f == "true"),
        part: part_of(path),
        has_status_subresource: path.rt.status_subresource,
        schema: path.rt.schema.as_ref(),
    };
    let key = path.key()?;
    let conflict =
        |why: String| ApiError::conflict(&path.rt.group, &path.rt.plural, &key.name, &why);
    if state.store.get(&key).is_none() {
        if request.part == WritePart::Status {
            return Err(ApiError::not_found(
                &path.rt.group,
                &path.rt.plural,
                &key.name,
            ));
        }
        let mut object =
            apply::server_side_apply(&json!({}), &applied, request).map_err(conflict)?;
        object["metadata"]["name"] = json!(key.name);
        return Ok(Patched::Create(object));
    }
    write_existing(&mut state, path, req, None, |old| {
        let mut next = apply::server_side_apply(old, &applied, request).map_err(conflict)?;
        // The merged object carries the current resourceVersion (it started
        // from `old`); one in the apply body is a precondition instead.
        if let Some(rv) = applied["metadata"].get("resourceVersion") {
            next["metadata"]["resourceVersion"] = rv.clone();
        }
        Ok(next)
    })
    .map(Patched::Done)
}

/// Creates the object an apply patch built for an absent object. Its
/// managedFields are the apply's.
pub fn create_applied(
    shared: &Shared,
    path: &ResourcePath,
    req: &ApiRequest,
    object: Value,
) -> ApiResult<Reply> {
    let mode = FieldValidation::parse(req.param("fieldValidation"))?;
    let mut state = shared.lock();
    create_locked(&mut state, path, object, mode, None, dry_run(req))
}

/// DELETE one object, honouring `preconditions` and finalizers.
pub fn delete(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Reply> {
    let options: Value = if req.body.is_empty() {
        json!({})
    } else {
        req.json_body()?
    };
    let key = path.key()?;
    let mut state = shared.lock();
    let current = state
        .store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&path.rt.group, &path.rt.plural, &key.name))?;
    for field in ["uid", "resourceVersion"] {
        if let Some(expected) = options["preconditions"][field].as_str()
            && Some(expected) != current["metadata"][field].as_str()
        {
            return Err(ApiError::conflict(
                &path.rt.group,
                &path.rt.plural,
                &key.name,
                &format!(
                    "Precondition failed: {field} in precondition: {expected}, {field} in object meta: {}",
                    current["metadata"][field]
                ),
            ));
        }
    }
    if dry_run(req) {
        return Ok(Reply::new(200, as_version(path, current)));
    }
    let deleted = state.store.delete(&path.rt, &key)?;
    if crd::is_crd(&path.rt) {
        if let Some(types) = crd::served_by(&deleted) {
            state.store.purge(&types.0, &types.1);
        }
        state.refresh_types();
    }
    Ok(Reply::new(200, as_version(path, deleted)))
}

/// DELETE a collection (with selectors).
pub fn delete_collection(
    shared: &Shared,
    path: &ResourcePath,
    req: &ApiRequest,
) -> ApiResult<Reply> {
    let mut state = shared.lock();
    let victims = select(&state, path, req)?;
    let mut deleted = Vec::new();
    for victim in victims {
        let key = ObjectKey::new(
            &path.rt,
            victim["metadata"]["namespace"].as_str().unwrap_or(""),
            victim["metadata"]["name"].as_str().unwrap_or(""),
        );
        deleted.push(state.store.delete(&path.rt, &key)?);
    }
    let meta = json!({"resourceVersion": state.store.revision().to_string()});
    Ok(Reply::new(
        200,
        json!({"kind": format!("{}List", path.rt.kind), "apiVersion": path.rt.api_version(), "metadata": meta, "items": deleted}),
    ))
}

/// POST tokenreviews.
pub fn token_review(shared: &Shared, req: &ApiRequest) -> ApiResult<Reply> {
    let body = req.json_body()?;
    let state = shared.lock();
    let mut review = state.tokens.review(&body);
    // A token bound to a pod dies with that pod, as on a real cluster.
    let token = body["spec"]["token"].as_str().unwrap_or("");
    if let Some((pod, uid)) = state.tokens.lookup(token).and_then(|i| i.pod.clone())
        && let Some((namespace, _)) = state
            .tokens
            .lookup(token)
            .and_then(|i| i.service_account.clone())
    {
        let key = ObjectKey {
            group: String::new(),
            plural: "pods".to_string(),
            namespace,
            name: pod.clone(),
        };
        let alive = state
            .store
            .get(&key)
            .is_some_and(|p| p["metadata"]["uid"] == uid.as_str());
        if !alive {
            review["status"] = json!({
                "authenticated": false,
                "error": format!("[invalid bearer token, pod \"{pod}\" (uid {uid}) no longer exists]"),
                "user": {},
            });
        }
    }
    Ok(Reply::new(201, review))
}

/// POST serviceaccounts/<name>/token (TokenRequest), as `kubectl create
/// token` uses; the service account must exist.
pub fn token_request(shared: &Shared, path: &ResourcePath, req: &ApiRequest) -> ApiResult<Reply> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        req.json_body()?
    };
    let key = path.key()?;
    if shared.lock().store.get(&key).is_none() {
        return Err(ApiError::not_found("", "serviceaccounts", &key.name));
    }
    let audiences: Vec<String> =
        serde_json::from_value(body["spec"]["audiences"].clone()).unwrap_or_default();
    let bound = &body["spec"]["boundObjectRef"];
    let pod = bound["name"].as_str().filter(|_| bound["kind"] == "Pod");
    let token = issue_token(shared, &key.namespace, &key.name, &audiences, pod)?;
    let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    Ok(Reply::new(
        201,
        json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": key.name, "namespace": key.namespace, "creationTimestamp": null},
            "spec": body["spec"],
            "status": {"token": token, "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
        }),
    ))
}
