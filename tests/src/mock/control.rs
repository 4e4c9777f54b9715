//! The mock's control API under `/__mock/`, so a test that runs the
//! `mock-provider` binary as a separate process can script it too:
//!
//! - `POST /__mock/enqueue` `{"times": 3, "behaviour": {...}, "model": "m"}`
//!   — queue steps (for one model when `model` is given);
//! - `POST /__mock/default` `{...behaviour..., "model": "m"}` — the default
//!   behaviour (for one model when `model` is given);
//! - `POST /__mock/reset` — clear the script (back to the configured default)
//!   and the recorded requests;
//! - `GET /__mock/requests` — `count` received and the kept `requests`
//!   (method, path, query, headers, JSON body, answered status).
//!
//! Behaviours are [`Behaviour`] in JSON, durations in milliseconds, e.g.
//! `{"fault": {"type": "error", "kind": "rate_limited", "retry_after": 2000},
//! "latency": 50}`.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::behaviour::Behaviour;
use super::render::Rendered;
use super::server::Shared;

pub(crate) const PREFIX: &str = "/__mock/";

#[derive(Deserialize)]
struct Enqueue {
    times: usize,
    behaviour: Behaviour,
    /// Only calls to this model take these steps.
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct Default {
    #[serde(flatten)]
    behaviour: Behaviour,
    /// Only calls to this model get this default.
    #[serde(default)]
    model: Option<String>,
}

pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Rendered {
    let bad = |msg: String| Rendered::json(StatusCode::BAD_REQUEST, &json!({ "error": msg }));
    let ok = || Rendered::json(StatusCode::OK, &json!({ "ok": true }));
    match (method.as_str(), &path[PREFIX.len()..]) {
        ("POST", "enqueue") => match serde_json::from_slice::<Enqueue>(body) {
            Ok(e) => {
                shared.push_script(e.model.as_deref(), e.times, e.behaviour);
                ok()
            }
            Err(e) => bad(e.to_string()),
        },
        ("POST", "default") => match serde_json::from_slice::<Default>(body) {
            Ok(d) => {
                shared.set_default(d.model.as_deref(), d.behaviour);
                ok()
            }
            Err(e) => bad(e.to_string()),
        },
        ("POST", "reset") => {
            shared.reset();
            ok()
        }
        ("GET", "requests") => {
            let received = shared.state().received;
            let list: Vec<_> = shared.requests().iter().map(|r| r.summary()).collect();
            Rendered::json(
                StatusCode::OK,
                &json!({ "kind": shared.kind.name(), "count": received, "requests": list }),
            )
        }
        _ => Rendered::json(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no control endpoint {method} {path}") }),
        ),
    }
}
