//! Routing: turns a request path into discovery documents or a resource
//! path (type, namespace, name, subresource) and dispatches it to the verb
//! handlers, running defaults and admission webhooks for new pods.

use std::sync::Arc;

use hyper::{Method, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::registry::{self, ResourceType};
use super::server::{ApiRequest, Body, Shared, json_response, percent_decode, text_response};
use super::store::ObjectKey;
use super::{builtin, handlers, openapi, watcher, webhook};

/// What a request path names.
#[derive(Debug, Clone)]
pub struct ResourcePath {
    /// The resource type (by group, version and plural).
    pub rt: ResourceType,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// Subresource (`status`, `token`), if any.
    pub subresource: Option<String>,
}

impl ResourcePath {
    /// The stored key of the named object.
    pub fn key(&self) -> ApiResult<ObjectKey> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| ApiError::method_not_allowed("no name"))?;
        Ok(ObjectKey::new(
            &self.rt,
            self.namespace.as_deref().unwrap_or(""),
            name,
        ))
    }
}

pub async fn route(shared: Arc<Shared>, req: ApiRequest) -> ApiResult<Response<Body>> {
    let segments: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz"] => return Ok(text_response(200, "ok")),
        ["version"] if get => return Ok(json_response(200, &version(), &[])),
        ["api"] if get => {
            return Ok(json_response(
                200,
                &registry::core_versions(&shared.base_url),
                &[],
            ));
        }
        ["apis"] if get => {
            return Ok(json_response(
                200,
                &registry::group_list(&shared.lock().types),
                &[],
            ));
        }
        ["openapi", "v3"] if get => {
            return Ok(json_response(
                200,
                &openapi::root(&shared.lock().types),
                &[],
            ));
        }
        ["openapi", "v3", rest @ ..] if get => {
            let doc = openapi::group_version(&shared.lock().types, &rest.join("/"))
                .ok_or_else(|| ApiError::no_route(&req.path))?;
            return Ok(json_response(200, &doc, &[]));
        }
        ["emulator", "v1", "tokens"] if req.method == Method::POST => {
            let body = req.json_body()?;
            let audiences: Vec<String> =
                serde_json::from_value(body["audiences"].clone()).unwrap_or_default();
            let (Some(ns), Some(sa)) =
                (body["namespace"].as_str(), body["serviceAccount"].as_str())
            else {
                return Err(ApiError::bad_request(
                    "namespace and serviceAccount are required",
                ));
            };
            let token = issue_token(&shared, ns, sa, &audiences, body["pod"].as_str())?;
            return Ok(json_response(201, &json!({"token": token}), &[]));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(&req.path)),
    };
    if rest.is_empty() {
        if !get {
            return Err(ApiError::method_not_allowed(req.method.as_str()));
        }
        let list = registry::resource_list(&shared.lock().types, group, version)
            .ok_or_else(|| ApiError::no_route(&req.path))?;
        return Ok(json_response(200, &list, &[]));
    }
    let path = parse_resource_path(&shared, group, version, rest)
        .ok_or_else(|| ApiError::no_route(&req.path))?;
    dispatch(shared, path, req).await
}

fn parse_resource_path(
    shared: &Shared,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<ResourcePath> {
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return None,
    };
    let rt = shared
        .lock()
        .types
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
        .cloned()?;
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(ResourcePath {
        rt,
        namespace,
        name,
        subresource,
    })
}

async fn dispatch(
    shared: Arc<Shared>,
    path: ResourcePath,
    req: ApiRequest,
) -> ApiResult<Response<Body>> {
    let subresource = path.subresource.as_deref();
    match subresource {
        None | Some("status") => {}
        Some("token") if path.rt.plural == "serviceaccounts" && req.method == Method::POST => {
            let reply = handlers::token_request(&shared, &path, &req)?;
            return Ok(reply.into_response());
        }
        Some(_) => return Err(ApiError::no_route(&req.path)),
    }
    if subresource == Some("status") && !path.rt.status_subresource {
        return Err(ApiError::no_route(&req.path));
    }
    let reply = match (&req.method, path.name.is_some()) {
        (&Method::GET, false) if req.param("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watcher::start(shared, path, &req);
        }
        (&Method::GET, false) => handlers::list(&shared, &path, &req)?,
        (&Method::GET, true) => handlers::get(&shared, &path, &req)?,
        (&Method::POST, false) if path.rt.plural == "tokenreviews" => {
            handlers::token_review(&shared, &req)?
        }
        (&Method::POST, false) => {
            let object = admit_new(&shared, &path, req.json_body()?).await?;
            handlers::create(&shared, &path, &req, object)?
        }
        (&Method::PUT, true) => handlers::replace(&shared, &path, &req)?,
        (&Method::PATCH, true) => match handlers::patch(&shared, &path, &req)? {
            handlers::Patched::Done(reply) => reply,
            handlers::Patched::Create(object) => {
                let object = admit_new(&shared, &path, object).await?;
                handlers::create_applied(&shared, &path, &req, object)?
            }
        },
        (&Method::DELETE, true) => handlers::delete(&shared, &path, &req)?,
        (&Method::DELETE, false) => handlers::delete_collection(&shared, &path, &req)?,
        (method, _) => return Err(ApiError::method_not_allowed(method.as_str())),
    };
    Ok(reply.into_response())
}

/// What happens to a new object before it is stored: pods get their
/// defaults, then go through the mutating webhooks.
async fn admit_new(shared: &Shared, path: &ResourcePath, mut object: Value) -> ApiResult<Value> {
    if path.rt.group.is_empty() && path.rt.plural == "pods" {
        builtin::default_pod(&mut object);
        return webhook::admit_pod(shared, path.namespace.as_deref().unwrap_or(""), object).await;
    }
    Ok(object)
}

/// Issues a service-account token (see [`super::Emulator::issue_token`]),
/// bound to the named pod when `pod` is given (404 if it does not exist).
pub fn issue_token(
    shared: &Shared,
    namespace: &str,
    service_account: &str,
    audiences: &[String],
    pod: Option<&str>,
) -> ApiResult<String> {
    let entropy = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        .rotate_left(17);
    let mut state = shared.lock();
    let bound = match pod {
        Some(name) => {
            let key = ObjectKey {
                group: String::new(),
                plural: "pods".to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            let uid = state
                .store
                .get(&key)
                .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
                .ok_or_else(|| ApiError::not_found("", "pods", name))?;
            Some((name.to_string(), uid))
        }
        None => None,
    };
    Ok(state
        .tokens
        .issue(namespace, service_account, audiences, bound, entropy))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-sluice-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
