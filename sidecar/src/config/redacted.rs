//! What `/debug/config` shows of a [`Config`]: everything but secrets.

use serde::Serialize;

use super::Config;

impl Config {
    /// What `/debug/config` shows: everything but secrets.
    pub fn redacted(&self) -> RedactedConfig<'_> {
        RedactedConfig {
            version: &self.version,
            routes: self
                .routes
                .iter()
                .map(|r| RedactedRoute {
                    name: &r.name,
                    namespace: &r.namespace,
                    model: &r.model,
                    aliases: &r.aliases,
                    targets: r
                        .targets
                        .iter()
                        .map(|t| RedactedTarget {
                            provider: &t.provider.name,
                            model: &t.model,
                            priority: t.priority,
                            weight: t.weight,
                        })
                        .collect(),
                    fallback_triggers: r.fallback_triggers.iter().map(|t| t.as_str()).collect(),
                })
                .collect(),
            budgets: self.budgets.names(),
            providers: self
                .providers
                .iter()
                .map(|p| RedactedProvider {
                    name: &p.name,
                    namespace: &p.namespace,
                    kind: p.endpoint.kind.as_str(),
                    endpoint: &p.endpoint.base_url,
                    credential: p.endpoint.credential.as_ref().map(|_| "<redacted>"),
                    headers: p
                        .endpoint
                        .headers
                        .iter()
                        .map(|(k, _)| (k.as_str(), "<redacted>"))
                        .collect(),
                    models: p.spec.models.iter().map(|m| m.name.as_str()).collect(),
                    timeouts_ms: [
                        p.timeouts.connect.as_millis(),
                        p.timeouts.first_token.as_millis(),
                        p.timeouts.idle.as_millis(),
                        p.timeouts.total.as_millis(),
                    ],
                })
                .collect(),
        }
    }
}

/// The redacted view of a [`Config`].
#[derive(Serialize)]
pub struct RedactedConfig<'a> {
    version: &'a str,
    routes: Vec<RedactedRoute<'a>>,
    /// The budgets this sidecar enforces.
    budgets: Vec<&'a str>,
    providers: Vec<RedactedProvider<'a>>,
}

#[derive(Serialize)]
struct RedactedRoute<'a> {
    name: &'a str,
    namespace: &'a str,
    model: &'a str,
    aliases: &'a [String],
    targets: Vec<RedactedTarget<'a>>,
    fallback_triggers: Vec<&'static str>,
}

#[derive(Serialize)]
struct RedactedTarget<'a> {
    provider: &'a str,
    model: &'a str,
    priority: u32,
    weight: u32,
}

#[derive(Serialize)]
struct RedactedProvider<'a> {
    name: &'a str,
    namespace: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    endpoint: &'a str,
    credential: Option<&'static str>,
    headers: Vec<(&'a str, &'static str)>,
    models: Vec<&'a str>,
    /// connect, firstToken, idle, total.
    timeouts_ms: [u64; 4],
}
