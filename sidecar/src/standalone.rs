//! Standalone mode (`--config FILE`): the same Provider/LLMRoute/Budget YAML
//! users apply to a cluster, validated by `sluice-crds` exactly as admission
//! would, credentials read from the environment (`credentials.env`), turned
//! into a [`Snapshot`] and from there into the runtime [`Config`].
//!
//! The file is re-read every second; a change is taken once it reads the
//! same twice, 50 ms apart (an in-place rewrite can be read halfway). A
//! changed file that does not load — one with no resources at all among
//! them — is logged with every reason and the last good configuration
//! keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_crds::load::Admission;
use sluice_crds::route::LLMRoute;
use sluice_crds::snapshot::{Credential, PodIdentity, ProviderEntry, RouteEntry, Snapshot};

use crate::config::{Config, ConfigHandle};

/// Every reason a configuration file was refused, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", path.display(), reasons.join("; "))]
pub struct LoadError {
    pub path: PathBuf,
    pub reasons: Vec<String>,
}

/// Loads `yaml` into a runtime configuration. `env` looks up environment
/// variables (passed in so tests need not touch the process environment).
pub fn load(
    admission: &Admission,
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let loaded = admission
        .load(yaml)
        .map_err(|issues| issues.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    for w in &loaded.warnings {
        tracing::warn!(kind = w.kind, name = %w.name, field = %w.field, reason = w.reason.as_str(), message = %w.message, "configuration warning");
    }
    let catalog = loaded.catalog;
    // A file with nothing in it is what a reader sees halfway through an
    // in-place rewrite (truncated, not yet filled) more often than a wish
    // to route nothing; serving nothing would answer every request 404.
    if catalog.providers.is_empty() && catalog.routes.is_empty() && catalog.budgets.is_empty() {
        return Err(vec![
            "the file holds no Provider, LLMRoute or Budget".to_owned(),
        ]);
    }
    let mut problems = Vec::new();
    let namespace = |ns: Option<String>| ns.unwrap_or_else(|| "default".to_owned());
    let mut providers = Vec::new();
    for p in &catalog.providers {
        let what = format!("Provider/{}", name_of(&p.metadata));
        let credential = match &p.spec.credentials {
            None => None,
            Some(c) => match (&c.env, &c.secret_ref) {
                (Some(var), _) => match env(var) {
                    Some(v) if !v.is_empty() => Some(Credential::new(v)),
                    _ => {
                        problems.push(format!(
                            "{what}: spec.credentials.env: environment variable {var} is not set"
                        ));
                        None
                    }
                },
                (None, Some(_)) => {
                    problems.push(format!(
                        "{what}: spec.credentials.secretRef needs a cluster; standalone mode reads credentials.env"
                    ));
                    None
                }
                (None, None) => None,
            },
        };
        providers.push(ProviderEntry {
            name: name_of(&p.metadata),
            namespace: namespace(p.metadata.namespace.clone()),
            spec: p.spec.clone(),
            credential,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let routes = catalog
        .routes
        .iter()
        .map(|r| RouteEntry {
            name: name_of(&r.metadata),
            namespace: namespace(r.metadata.namespace.clone()),
            generation: r.metadata.generation.unwrap_or(0),
            spec: r.spec.clone(),
        })
        .collect();
    // Budgets enforce the whole limit here (no operator splits it), so
    // their ledgers are built below instead of from snapshot allowances.
    let snapshot = Snapshot {
        version: String::new(),
        pod: PodIdentity::default(),
        report_interval: sluice_crds::Duration::from_secs(2),
        routes,
        providers,
        budgets: Vec::new(),
        held_routes: Vec::new(),
    }
    .seal();
    let mut config = Config::try_from(&snapshot).map_err(|e| e.0)?;
    let now = jiff::Timestamp::now();
    config.budgets = crate::budget::Budgets::new(
        catalog
            .budgets
            .iter()
            .map(|b| {
                crate::budget::Budget::standalone(
                    name_of(&b.metadata),
                    b.spec.clone(),
                    budget_routes(&name_of(&b.metadata), &b.spec, &catalog.routes),
                    crate::budget::applies_to_pod(&b.spec, None),
                    now,
                )
            })
            .collect(),
    );
    config.mark_token_needs();
    Ok(config)
}

/// The routes a budget counts: those it names, those its `routeSelector`
/// selects by their labels, and those whose `budgetRefs` name it — as the
/// operator decides it in a cluster (`sluice_crds::semantic`).
fn budget_routes(
    budget: &str,
    spec: &sluice_crds::budget::BudgetSpec,
    routes: &[LLMRoute],
) -> Vec<String> {
    let mut names = spec.routes.clone();
    for r in routes {
        let name = name_of(&r.metadata);
        let selected = spec
            .route_selector
            .as_ref()
            .is_some_and(|sel| sluice_crds::selector::matches(sel, r.metadata.labels.as_ref()));
        let refers = r.spec.budget_refs.iter().any(|b| b.name == budget);
        if (selected || refers) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Reads and loads the file at `path`.
pub fn load_file(
    admission: &Admission,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, LoadError> {
    let err = |reasons| LoadError {
        path: path.to_owned(),
        reasons,
    };
    let bytes = std::fs::read(path).map_err(|e| err(vec![format!("cannot read: {e}")]))?;
    load_bytes(admission, &bytes, env).map_err(err)
}

/// Loads file content, refusing what is not UTF-8.
pub fn load_bytes(
    admission: &Admission,
    bytes: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let yaml = std::str::from_utf8(bytes).map_err(|e| vec![format!("not UTF-8: {e}")])?;
    load(admission, yaml, env)
}

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// How long a changed file must stay the same before it is loaded.
const SETTLE: Duration = Duration::from_millis(50);

/// Re-reads `path` every `interval` and puts a changed, valid file in force,
/// resolving credentials with `env`. `loaded` is the content already in
/// force, so an edit made before the first look is not missed. Runs until
/// the task is dropped.
pub async fn watch<E>(
    admission: Admission,
    path: PathBuf,
    loaded: Vec<u8>,
    handle: ConfigHandle,
    interval: Duration,
    env: E,
) where
    E: Fn(&str) -> Option<String> + Send + 'static,
{
    let mut last = Some(loaded);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "configuration file unreadable; keeping the last good configuration");
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(&now[..]) {
            continue;
        }
        // An editor or `echo >` rewriting the file in place can be read
        // halfway (the first documents only): a change is taken once it
        // reads the same twice, [`SETTLE`] apart; else at a later tick.
        tokio::time::sleep(SETTLE).await;
        match tokio::fs::read(&path).await {
            Ok(again) if again == now => {}
            _ => continue,
        }
        let result = load_bytes(&admission, &now, &env);
        last = Some(now);
        match result {
            Ok(config) => {
                tracing::info!(path = %path.display(), version = %config.version, routes = config.routes.len(), providers = config.providers.len(), "configuration reloaded");
                handle.set(config);
            }
            Err(e) => {
                for reason in &e {
                    tracing::error!(path = %path.display(), reason = %reason, "configuration refused");
                }
                tracing::error!(path = %path.display(), problems = e.len(), "configuration refused; the last good configuration keeps serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: openai}
spec:
  type: openai
  credentials: {env: OPENAI_KEY}
  models: [{name: gpt-4o-mini}]
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: local}
spec:
  type: mock
  models: [{name: m}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  model: chat
  aliases: [gpt-4o]
  targets:
  - {providerRef: {name: local}, model: m, priority: 2}
  - {providerRef: {name: openai}, model: gpt-4o-mini, priority: 1}
"#;

    #[test]
    fn loads_with_env_credentials_in_priority_order() {
        let env = |k: &str| (k == "OPENAI_KEY").then(|| "sk-secret".to_owned());
        let config = load(&Admission::new(), YAML, &env).expect("loads");
        let route = config.route("gpt-4o").expect("alias");
        assert_eq!(route.name, "chat");
        assert_eq!(route.targets[0].provider.name, "openai");
        assert_eq!(route.targets[1].provider.endpoint.base_url, "mock://local");
        assert_eq!(config.model_names(), vec!["chat", "gpt-4o"]);
        let shown = serde_json::to_string(&config.redacted()).expect("json");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }

    #[test]
    fn missing_env_names_the_variable_not_a_value() {
        let err = load(&Admission::new(), YAML, &|_| None).expect_err("refused");
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("OPENAI_KEY is not set"), "{}", err[0]);
    }

    #[test]
    fn schema_errors_are_all_reported() {
        let bad = YAML
            .replace("type: mock", "type: nope")
            .replace("model: chat", "model: 7");
        let err = load(&Admission::new(), &bad, &|_| Some("k".into())).expect_err("refused");
        assert!(err.iter().any(|e| e.contains("spec.type")), "{err:?}");
    }

    /// What a reader sees between the truncation and the write of an
    /// in-place rewrite is refused, not served as "no routes".
    #[test]
    fn a_file_with_no_resources_is_refused() {
        for empty in ["", "\n", "# nothing yet\n", "---\n---\n"] {
            let err = load(&Admission::new(), empty, &|_| None).expect_err("refused");
            assert_eq!(
                err,
                ["the file holds no Provider, LLMRoute or Budget"],
                "{empty:?}"
            );
        }
    }
}
