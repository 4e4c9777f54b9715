//! What the operator sends a sidecar: the routes that select its pod, the
//! providers they use with credentials resolved, and the budgets with the
//! spend so far and this sidecar's allowance. A content `version` names it.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::budget::{BudgetSpec, Spend, WindowBounds};
use crate::provider::ProviderSpec;
use crate::route::LLMRouteSpec;
use crate::units::{Duration, Money};

/// A provider's key. `Debug` never prints it and there is no `Display`; the
/// only way to the value is [`Credential::expose`], at the one place that
/// builds the upstream request.
#[derive(Clone)]
pub struct Credential(SecretString);

impl Credential {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The key itself. Call only where it goes into an upstream request.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Serialize for Credential {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Credential::new)
    }
}

/// The pod a sidecar runs in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The pod's labels, for budgets' `podSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The owning workload (`Deployment/shop`), for cost attribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// The whole configuration of one sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Content hash of everything below; changes whenever anything does.
    pub version: String,
    pub pod: PodIdentity,
    /// How often the sidecar reports.
    pub report_interval: Duration,
    pub routes: Vec<RouteEntry>,
    pub providers: Vec<ProviderEntry>,
    pub budgets: Vec<BudgetEntry>,
    /// Routes that select this pod but whose current spec is invalid or
    /// unresolved: the sidecar keeps serving the version of these it
    /// already has, and drops routes not listed anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_routes: Vec<String>,
}

/// One LLMRoute as the sidecar receives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    pub name: String,
    pub namespace: String,
    /// `metadata.generation` of the route this spec comes from.
    #[serde(default)]
    pub generation: i64,
    pub spec: LLMRouteSpec,
}

/// One Provider with its key resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEntry {
    pub name: String,
    pub namespace: String,
    pub spec: ProviderSpec,
    /// The key from the Secret (cluster) or the environment (standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

/// One Budget with what has been spent and what this sidecar may spend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetEntry {
    pub name: String,
    pub namespace: String,
    pub spec: BudgetSpec,
    /// Names of the routes whose traffic counts (selectors already resolved).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Whether this sidecar's pod is selected by the budget's `podSelector`.
    #[serde(default = "yes")]
    pub applies_to_pod: bool,
    /// The window the figures below belong to.
    pub window: WindowBounds,
    /// Spend across all sidecars so far in the window.
    #[serde(default)]
    pub spent: Spend,
    /// What this sidecar may still spend.
    pub allowance: Allowance,
}

fn yes() -> bool {
    true
}

/// Amounts a sidecar may spend. A `None` dimension is not limited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Amounts {
    #[serde(rename = "costUSD", default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// What one sidecar may spend of a budget beyond the usage it had reported
/// up to report `asOfSequence`. The operator never grants, summed over all
/// sidecars, more than the budget has left.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Allowance {
    /// The last report sequence whose usage is already deducted.
    #[serde(default)]
    pub as_of_sequence: u64,
    /// For the budget as a whole.
    #[serde(default)]
    pub total: Amounts,
    /// Per tenant, when the budget has a `tenantHeader`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, Amounts>,
    /// For tenants not listed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tenant: Option<Amounts>,
    /// What the budget as a whole still has neither spent nor granted to
    /// any sidecar (a `None` dimension is not limited): a sidecar whose
    /// allowance is spent waits for a renewal only when this could cover its
    /// request. Absent: unknown, never wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unallocated: Option<Amounts>,
    /// Set when this sidecar holds well over its share of recent use: hand
    /// back, in the next report ([`UsageDelta::released`]), the part of the
    /// total allowance beyond these amounts that is neither spent nor
    /// reserved. A `None` dimension: keep all.
    ///
    /// [`UsageDelta::released`]: crate::report::UsageDelta::released
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Amounts>,
}

impl Snapshot {
    /// The models of Provider `provider` this snapshot's routes and
    /// budgets may call.
    pub fn models_of<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.routes
            .iter()
            .flat_map(|r| r.spec.uses())
            .chain(self.budgets.iter().flat_map(|b| b.spec.uses()))
            .filter(move |(p, _)| *p == provider)
            .map(|(_, model)| model)
    }

    /// Computes and sets the content version. Deterministic: the same
    /// contents always give the same version.
    pub fn seal(mut self) -> Self {
        self.version = String::new();
        let bytes = serde_json::to_vec(&self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        self.version = hex::encode(&digest[..8]);
        self
    }

    /// Whether `version` matches the contents.
    pub fn is_sealed(&self) -> bool {
        self.clone().seal().version == self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Budget, LLMRoute, Provider};

    fn snapshot() -> Snapshot {
        let provider: Provider = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: openai}\nspec:\n  type: openai\n  credentials: {secretRef: {name: keys, key: openai}}\n  models: [{name: gpt-4o-mini, pricing: {inputPerMillion: \"0.15\", outputPerMillion: \"0.60\"}}]\n",
        )
        .expect("valid provider");
        let route: LLMRoute = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat}\nspec:\n  model: chat\n  targets: [{providerRef: {name: openai}, model: gpt-4o-mini}]\n",
        )
        .expect("valid route");
        let budget: Budget = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: Budget\nmetadata: {name: team}\nspec:\n  window: day\n  tenantHeader: x-sluice-tenant\n  limits: {costUSD: \"100\"}\n",
        )
        .expect("valid budget");
        Snapshot {
            version: String::new(),
            pod: PodIdentity {
                namespace: "shop".into(),
                name: "web-1".into(),
                service_account: Some("web".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                workload: Some("Deployment/web".into()),
            },
            report_interval: Duration::from_secs(2),
            routes: vec![RouteEntry {
                name: "chat".into(),
                namespace: "shop".into(),
                generation: 3,
                spec: route.spec,
            }],
            providers: vec![ProviderEntry {
                name: "openai".into(),
                namespace: "shop".into(),
                spec: provider.spec,
                credential: Some(Credential::new("sk-live-do-not-print")),
            }],
            budgets: vec![BudgetEntry {
                name: "team".into(),
                namespace: "shop".into(),
                spec: budget.spec,
                routes: vec!["chat".into()],
                applies_to_pod: true,
                window: WindowBounds {
                    start: "2026-11-21T00:00:00Z".into(),
                    end: "2026-11-22T00:00:00Z".into(),
                },
                spent: Spend {
                    cost_usd: "12.5".parse().expect("money"),
                    tokens: 1000,
                    requests: 10,
                },
                allowance: Allowance {
                    as_of_sequence: 7,
                    total: Amounts {
                        cost_usd: Some("10".parse().expect("money")),
                        ..Default::default()
                    },
                    tenants: [("acme".to_string(), Amounts::default())].into(),
                    new_tenant: Some(Amounts::default()),
                    unallocated: Some(Amounts {
                        requests: Some(3),
                        ..Default::default()
                    }),
                    keep: Some(Amounts {
                        requests: Some(2),
                        ..Default::default()
                    }),
                },
            }],
            held_routes: vec!["broken".into()],
        }
        .seal()
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = snapshot();
        let json = serde_json::to_string(&s).expect("serializes");
        let back: Snapshot = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, s);
        assert!(back.is_sealed());
    }

    #[test]
    fn version_is_deterministic_and_follows_content() {
        let a = snapshot();
        assert_eq!(a.version, snapshot().version);
        assert_eq!(a.version.len(), 16);
        let mut b = snapshot();
        b.providers[0].credential = Some(Credential::new("sk-rotated"));
        let b = b.seal();
        assert_ne!(a.version, b.version, "a rotated key is a new version");
        assert!(!a.version.contains("sk-"));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let s = snapshot();
        let debug = format!("{s:?}");
        assert!(!debug.contains("sk-live-do-not-print"), "{debug}");
        assert!(debug.contains("Credential(<redacted>)"));
        // Serialization is the one place it travels (operator → sidecar over TLS).
        assert!(
            serde_json::to_string(&s)
                .expect("serializes")
                .contains("sk-live-do-not-print")
        );
    }
}
