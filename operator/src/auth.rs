//! Who is calling the distribution server: the bearer token is checked with
//! a TokenReview (audience [`AUDIENCE`]), its service account must be in
//! the namespace asked about, and the pod must exist there, carry a
//! sidecar and run under that service account. A token for namespace A
//! never gets anything of namespace B. A token bound to a pod (projected
//! tokens are: TokenReview names the pod in `user.extra`) speaks for that
//! pod only, checked by name and uid.
//!
//! Positive reviews are cached for [`REVIEW_TTL`] by the token's SHA-256,
//! so a sidecar's report every few seconds does not cost a TokenReview
//! each; the pod check runs on every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::compile::PodInfo;
use crate::state::{AUDIENCE, Context, pod_info, service_account_of};

/// How long a successful review is trusted.
pub const REVIEW_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;

/// Why a request was refused: HTTP status, stable code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub service_account: String,
    /// `(name, uid)` of the pod a projected token is bound to.
    pub pod: Option<(String, Option<String>)>,
}

/// A positive review and when it was made.
type Reviewed = (Subject, Instant);

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Cached TokenReview outcomes: token hash → (namespace, service account).
#[derive(Debug, Default)]
pub struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], Reviewed>>,
}

/// `system:serviceaccount:<ns>:<sa>` → `(ns, sa)`.
pub fn parse_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.to_owned(), sa.to_owned()))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

impl ReviewCache {
    async fn review(&self, ctx: &Context, token: &str) -> Result<Subject, Refusal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(entries) = self.entries.lock()
            && let Some((who, at)) = entries.get(&hash)
            && at.elapsed() < REVIEW_TTL
        {
            return Ok(who.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(ctx.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Refusal::new(
                    503,
                    "token_review_failed",
                    "could not verify the token; retry",
                )
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Refusal::new(
                401,
                "invalid_token",
                "the token was not accepted for audience sluice",
            ));
        }
        if !status
            .audiences
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == AUDIENCE))
        {
            return Err(Refusal::new(
                401,
                "invalid_token",
                "the token is not meant for audience sluice",
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let bound = first(POD_NAME).map(|name| (name, first(POD_UID)));
        let (namespace, service_account) = parse_username(&username).ok_or_else(|| {
            Refusal::new(
                403,
                "not_a_service_account",
                "only service-account tokens are accepted",
            )
        })?;
        let who = Subject {
            namespace,
            service_account,
            pod: bound,
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_MAX {
                entries.retain(|_, (_, at)| at.elapsed() < REVIEW_TTL);
                if entries.len() >= CACHE_MAX {
                    entries.clear();
                }
            }
            entries.insert(hash, (who.clone(), Instant::now()));
        }
        Ok(who)
    }

    /// Checks that `token` may act as the sidecar of `namespace/pod`.
    pub async fn authorize(
        &self,
        ctx: &Context,
        token: Option<&str>,
        namespace: &str,
        pod: &str,
    ) -> Result<PodInfo, Refusal> {
        let token = token.ok_or_else(|| {
            Refusal::new(
                401,
                "missing_token",
                "Authorization: Bearer <service-account token> is required",
            )
        })?;
        let who = self.review(ctx, token).await?;
        let (token_ns, sa) = (&who.namespace, &who.service_account);
        if token_ns != namespace {
            return Err(Refusal::new(
                403,
                "namespace_mismatch",
                format!("a token of namespace {token_ns} cannot read namespace {namespace}"),
            ));
        }
        // A projected token is bound to its pod: it speaks for that pod
        // only (and, by uid, not for a later pod of the same name).
        if let Some((bound, _)) = &who.pod
            && bound != pod
        {
            return Err(Refusal::new(
                403,
                "pod_mismatch",
                format!("the token is bound to pod {bound}, not {pod}"),
            ));
        }
        let found = ctx
            .pod(namespace, pod)
            .filter(|p| service_account_of(p) == *sa)
            .filter(|p| match &who.pod {
                Some((_, Some(uid))) => p.metadata.uid.as_deref() == Some(uid.as_str()),
                _ => true,
            })
            .ok_or_else(|| {
                Refusal::new(
                    403,
                    "pod_not_found",
                    format!("no pod {pod} with a Sluice sidecar runs as service account {sa} in namespace {namespace}"),
                )
            })?;
        Ok(pod_info(&found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_headers() {
        assert_eq!(
            parse_username("system:serviceaccount:shop:web"),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(parse_username("admin"), None);
        assert_eq!(parse_username("system:serviceaccount:shop"), None);
        assert_eq!(parse_username("system:serviceaccount::web"), None);
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
