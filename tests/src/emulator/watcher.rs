//! Watch streams: newline-delimited JSON events over a chunked response.
//!
//! Semantics follow the real server: without a resourceVersion (or with
//! `0`) the current state is sent as ADDED events first; with one, history
//! after it is replayed (an ERROR event with a 410 Status when it is too
//! old); `sendInitialEvents=true` sends the current state then a BOOKMARK
//! annotated `k8s.io/initial-events-end`; selectors turn an object that
//! starts or stops matching into ADDED or DELETED; `timeoutSeconds` ends the
//! stream; with `allowWatchBookmarks` a BOOKMARK is sent every few seconds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, channel::Channel};
use hyper::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::{ApiError, ApiResult};
use super::handlers;
use super::routes::ResourcePath;
use super::selector::{FieldSelector, LabelSelector};
use super::server::{ApiRequest, Body, Shared};
use super::store::{EventType, WatchEvent};
use super::table;

/// Default stream length when the client sets no `timeoutSeconds` (the real
/// server picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a bookmark is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Which events a watch delivers.
struct Filter {
    path: ResourcePath,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(&object["metadata"]["labels"]) && self.fields.matches(object)
    }

    /// The event a client sees for a stored change, if any.
    fn translate(&self, event: &WatchEvent) -> Option<(&'static str, Value)> {
        let rt = &self.path.rt;
        if event.key.group != rt.group || event.key.plural != rt.plural {
            return None;
        }
        if rt.namespaced
            && let Some(ns) = &self.path.namespace
            && &event.key.namespace != ns
        {
            return None;
        }
        let mut object = event.object.clone();
        object["apiVersion"] = json!(rt.api_version());
        let now = self.matches(&object);
        let kind = match event.kind {
            EventType::Added if now => EventType::Added,
            EventType::Deleted if now => EventType::Deleted,
            EventType::Modified => {
                match (event.previous.as_ref().is_none_or(|p| self.matches(p)), now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
            EventType::Added | EventType::Deleted => return None,
        };
        Some((kind.as_str(), object))
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Encodes change events, as Tables when the client asked for them (`kubectl
/// get -w`): each event's object is a one-row Table, with the column
/// definitions in the first one only, as the real server sends them.
struct Encoder {
    path: ResourcePath,
    table: bool,
    headers_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Bytes {
        if !self.table {
            return line(kind, object);
        }
        let meta = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
        let mut rendered = table::render(
            &self.path.rt,
            std::slice::from_ref(object),
            meta,
            chrono::Utc::now(),
        );
        if self.headers_sent {
            rendered["columnDefinitions"] = Value::Null;
        }
        self.headers_sent = true;
        line(kind, &rendered)
    }
}

fn bookmark(path: &ResourcePath, revision: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": path.rt.kind, "apiVersion": path.rt.api_version(), "metadata": metadata}),
    )
}

/// Starts a watch on a collection path.
pub fn start(
    shared: Arc<Shared>,
    path: ResourcePath,
    req: &ApiRequest,
) -> ApiResult<Response<Body>> {
    let filter = Filter {
        labels: LabelSelector::parse(req.param("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))?,
        path: path.clone(),
    };
    let send_initial = req.param("sendInitialEvents") == Some("true");
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let since = match req.param("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(_) if send_initial => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let mut encoder = Encoder {
        path: path.clone(),
        table: table::wants_table(&req.accept),
        headers_sent: false,
    };
    let mut first: Vec<Bytes> = Vec::new();
    let (receiver, revision) = {
        let state = shared.lock();
        let revision = state.store.revision();
        match since {
            None => {
                for object in handlers::select(&state, &path, req)? {
                    first.push(encoder.event("ADDED", &object));
                }
                if send_initial && bookmarks {
                    first.push(bookmark(&path, revision, true));
                }
                (Some(state.store.subscribe()), revision)
            }
            Some(rv) => match state.store.watch_from(rv) {
                Ok((past, receiver)) => {
                    first.extend(
                        past.iter()
                            .filter_map(|e| filter.translate(e))
                            .map(|(k, o)| encoder.event(k, &o)),
                    );
                    (Some(receiver), revision)
                }
                Err(gone) => {
                    first.push(line("ERROR", &gone.to_status()));
                    (None, revision)
                }
            },
        }
    };
    let (mut sender, body) = Channel::<Bytes, std::convert::Infallible>::new(64);
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        for chunk in first {
            if sender.send_data(chunk).await.is_err() {
                return;
            }
        }
        let Some(mut receiver) = receiver else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut last_seen = revision;
        loop {
            let chunk = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    if !bookmarks { continue; }
                    bookmark(&filter.path, last_seen, false)
                }
                received = receiver.recv() => match received {
                    Ok(event) => {
                        last_seen = event.revision;
                        match filter.translate(&event) {
                            Some((kind, object)) => encoder.event(kind, &object),
                            None => continue,
                        }
                    }
                    // A watcher that fell behind is ended; the client
                    // resumes from its last resourceVersion out of history.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            };
            if sender.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body.boxed())
        .map_err(|e| ApiError::internal(e.to_string()))
}
