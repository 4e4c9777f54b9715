//! Policy: what may be refused or answered before any provider is called.
//!
//! The stage sits between ingress and route so that everything it will
//! hold (issue 5: PII redact/block, per-tenant rate limits, budget
//! reservation, idempotency, cache lookup) sees the typed request and the
//! resolved route, and can answer on its own. Today every request is
//! admitted; the seam is here so the pipeline's shape does not change.

use http::HeaderMap;

use crate::config::Route;
use crate::error::ApiError;

/// What the policy stage decided for a request that may proceed.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The tenant the request counts against (from the budget's
    /// `tenantHeader`, `x-sluice-tenant` by default), if any.
    pub tenant: Option<String>,
}

/// Admits or refuses a request for `route`.
pub fn admit(route: &Route, headers: &HeaderMap) -> Result<Admitted, ApiError> {
    let _ = route;
    let tenant = headers
        .get("x-sluice-tenant")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map(str::to_owned);
    Ok(Admitted { tenant })
}
