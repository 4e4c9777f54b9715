//! Pieces shared by the three kinds: references, conditions, failure classes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};

/// The API group of every Sluice kind.
pub const GROUP: &str = "sluice.dev";
/// The API version of every Sluice kind.
pub const VERSION: &str = "v1alpha1";
/// The `apiVersion` every Sluice object carries.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// A reference to a Provider in the same namespace.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ProviderRef {
    /// Name of the Provider, in the same namespace as the object referring to it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to a Budget in the same namespace.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct BudgetRef {
    /// Name of the Budget, in the same namespace as the route.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A provider and one of its models: where a request can be sent.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    /// The Provider serving the model.
    pub provider_ref: ProviderRef,
    /// A model the Provider lists in `spec.models`.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
}

/// How a call to a provider ended, when it did not succeed. Every upstream
/// outcome maps to exactly one class; routing, retries, fallback, breakers and
/// metrics all speak in these terms.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// Refused, DNS, TLS or connect timeout: the request was provably not sent.
    Connect,
    /// The connection closed before response headers arrived.
    Reset,
    /// No response headers within the timeout.
    TimeoutHeaders,
    /// Headers arrived but no first token within `firstToken`.
    TimeoutFirstToken,
    /// A stream stalled longer than `idle` between chunks.
    TimeoutIdle,
    /// The whole call exceeded `total` or the request's deadline.
    TimeoutTotal,
    /// HTTP 5xx other than overload.
    ServerError,
    /// 503/529 or a provider's explicit overload signal.
    Overloaded,
    /// A transient 429.
    RateLimited,
    /// The account's quota or credit is used up.
    QuotaExhausted,
    /// 401/403 or an invalid key.
    Auth,
    /// The model or endpoint does not exist.
    NotFound,
    /// The provider refused the request as malformed.
    BadRequest,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The input was blocked by the provider's content filter.
    ContentFilter,
    /// A 200 whose output was filtered or refused.
    Refusal,
    /// A stream ended without its terminating event.
    StreamInterrupted,
    /// A 200 carrying an error, HTML or invalid JSON.
    Malformed,
    /// The client went away; never the provider's fault.
    ClientCancelled,
}

impl FailureClass {
    /// Every class, in declaration order.
    pub const ALL: [FailureClass; 19] = [
        FailureClass::Connect,
        FailureClass::Reset,
        FailureClass::TimeoutHeaders,
        FailureClass::TimeoutFirstToken,
        FailureClass::TimeoutIdle,
        FailureClass::TimeoutTotal,
        FailureClass::ServerError,
        FailureClass::Overloaded,
        FailureClass::RateLimited,
        FailureClass::QuotaExhausted,
        FailureClass::Auth,
        FailureClass::NotFound,
        FailureClass::BadRequest,
        FailureClass::ContextLength,
        FailureClass::ContentFilter,
        FailureClass::Refusal,
        FailureClass::StreamInterrupted,
        FailureClass::Malformed,
        FailureClass::ClientCancelled,
    ];

    /// The name used on the wire, in metrics and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Connect => "connect",
            FailureClass::Reset => "reset",
            FailureClass::TimeoutHeaders => "timeout-headers",
            FailureClass::TimeoutFirstToken => "timeout-first-token",
            FailureClass::TimeoutIdle => "timeout-idle",
            FailureClass::TimeoutTotal => "timeout-total",
            FailureClass::ServerError => "server-error",
            FailureClass::Overloaded => "overloaded",
            FailureClass::RateLimited => "rate-limited",
            FailureClass::QuotaExhausted => "quota-exhausted",
            FailureClass::Auth => "auth",
            FailureClass::NotFound => "not-found",
            FailureClass::BadRequest => "bad-request",
            FailureClass::ContextLength => "context-length",
            FailureClass::ContentFilter => "content-filter",
            FailureClass::Refusal => "refusal",
            FailureClass::StreamInterrupted => "stream-interrupted",
            FailureClass::Malformed => "malformed",
            FailureClass::ClientCancelled => "client-cancelled",
        }
    }

    /// The trigger name (as written in `retry.triggers` / `fallback.triggers`)
    /// that covers this class, if any.
    pub fn trigger(self) -> Option<Trigger> {
        Some(match self {
            FailureClass::Connect => Trigger::Connect,
            FailureClass::Reset => Trigger::Reset,
            FailureClass::TimeoutHeaders
            | FailureClass::TimeoutFirstToken
            | FailureClass::TimeoutIdle
            | FailureClass::TimeoutTotal => Trigger::Timeout,
            FailureClass::ServerError => Trigger::ServerError,
            FailureClass::Overloaded => Trigger::Overloaded,
            FailureClass::RateLimited => Trigger::RateLimited,
            FailureClass::QuotaExhausted => Trigger::QuotaExhausted,
            FailureClass::Auth => Trigger::Auth,
            FailureClass::NotFound => Trigger::NotFound,
            FailureClass::ContextLength => Trigger::ContextLength,
            FailureClass::ContentFilter => Trigger::ContentFilter,
            FailureClass::Refusal => Trigger::Refusal,
            FailureClass::StreamInterrupted => Trigger::StreamInterrupted,
            FailureClass::Malformed => Trigger::Malformed,
            FailureClass::BadRequest | FailureClass::ClientCancelled => return None,
        })
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group of failure classes as named in `retry.triggers` and
/// `fallback.triggers`. `timeout` covers every timeout class. A bad request
/// and a cancelled client are never triggers.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Connect,
    Reset,
    Timeout,
    ServerError,
    Overloaded,
    RateLimited,
    QuotaExhausted,
    Auth,
    NotFound,
    ContextLength,
    ContentFilter,
    Refusal,
    StreamInterrupted,
    Malformed,
}

impl Trigger {
    /// Whether retrying the same target can help. Auth, quota, missing models,
    /// oversized prompts and content decisions do not change on a retry.
    pub fn is_retryable(self) -> bool {
        match self {
            Trigger::Connect
            | Trigger::Reset
            | Trigger::Timeout
            | Trigger::ServerError
            | Trigger::Overloaded
            | Trigger::RateLimited
            | Trigger::StreamInterrupted
            | Trigger::Malformed => true,
            Trigger::QuotaExhausted
            | Trigger::Auth
            | Trigger::NotFound
            | Trigger::ContextLength
            | Trigger::ContentFilter
            | Trigger::Refusal => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Connect => "connect",
            Trigger::Reset => "reset",
            Trigger::Timeout => "timeout",
            Trigger::ServerError => "server-error",
            Trigger::Overloaded => "overloaded",
            Trigger::RateLimited => "rate-limited",
            Trigger::QuotaExhausted => "quota-exhausted",
            Trigger::Auth => "auth",
            Trigger::NotFound => "not-found",
            Trigger::ContextLength => "context-length",
            Trigger::ContentFilter => "content-filter",
            Trigger::Refusal => "refusal",
            Trigger::StreamInterrupted => "stream-interrupted",
            Trigger::Malformed => "malformed",
        }
    }
}

/// Conditions of status, with the helpers every status writer needs.
pub mod conditions {
    use super::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// Sets or replaces the condition of `type_`, keeping its
    /// `lastTransitionTime` when the status did not change.
    pub fn set(
        conditions: &mut Vec<Condition>,
        type_: &str,
        ok: bool,
        reason: &str,
        message: &str,
        generation: Option<i64>,
        now: Time,
    ) {
        let status = if ok { "True" } else { "False" };
        let new = Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: generation,
            last_transition_time: now,
        };
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(old) => {
                let keep_time = old.status == new.status;
                let time = old.last_transition_time.clone();
                *old = new;
                if keep_time {
                    old.last_transition_time = time;
                }
            }
            None => conditions.push(new),
        }
    }

    /// Whether the condition of `type_` is present and `True`.
    pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_names_itself_as_serde_does() {
        for class in FailureClass::ALL {
            let json = serde_json::to_value(class).expect("serializes");
            assert_eq!(json, serde_json::Value::from(class.as_str()));
        }
    }

    #[test]
    fn triggers_that_cannot_change_on_retry_are_not_retryable() {
        assert!(!Trigger::Auth.is_retryable());
        assert!(!Trigger::ContentFilter.is_retryable());
        assert!(!Trigger::ContextLength.is_retryable());
        assert!(Trigger::RateLimited.is_retryable());
        assert_eq!(FailureClass::BadRequest.trigger(), None);
        assert_eq!(FailureClass::TimeoutIdle.trigger(), Some(Trigger::Timeout));
    }

    #[test]
    fn condition_keeps_transition_time_when_status_holds() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("valid"));
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("valid"));
        let mut c = Vec::new();
        conditions::set(&mut c, "Ready", true, "Ok", "fine", Some(1), t0.clone());
        conditions::set(
            &mut c,
            "Ready",
            true,
            "Ok",
            "still fine",
            Some(2),
            t1.clone(),
        );
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].observed_generation, Some(2));
        conditions::set(
            &mut c,
            "Ready",
            false,
            "Broken",
            "not fine",
            Some(2),
            t1.clone(),
        );
        assert_eq!(c[0].last_transition_time, t1);
        assert!(!conditions::is_true(&c, "Ready"));
    }
}
