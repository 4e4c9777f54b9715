//! Admission without an API server: checks objects against the CRD schema
//! and CEL rules exactly as the cluster would, and loads the standalone
//! sidecar's YAML (the same documents users `kubectl apply`).

use std::fmt;
use std::sync::Mutex;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::common::API_VERSION;
use crate::schema_check::{Checker, FieldError};
use crate::semantic::{Namespace, Problem, Severity};
use crate::{Budget, LLMRoute, Provider};

/// The three kinds, for dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Provider,
    LLMRoute,
    Budget,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "Provider" => Some(Kind::Provider),
            "LLMRoute" => Some(Kind::LLMRoute),
            "Budget" => Some(Kind::Budget),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Provider => "Provider",
            Kind::LLMRoute => "LLMRoute",
            Kind::Budget => "Budget",
        }
    }
}

/// The schemas of the three kinds, compiled once.
pub struct Admission {
    kinds: Vec<(Kind, Value, CompiledSchema)>,
    checker: Mutex<Checker>,
    validator: Validator,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Admission")
    }
}

impl Admission {
    pub fn new() -> Self {
        let kinds = crate::crd::all()
            .into_iter()
            .map(|(_, crd)| {
                let kind = Kind::parse(&crd.spec.names.kind).unwrap_or(Kind::Provider);
                let schema = crate::crd::schema_of(&crd);
                let compiled = compile_schema(&schema);
                (kind, schema, compiled)
            })
            .collect();
        Self {
            kinds,
            checker: Mutex::new(Checker::new()),
            validator: Validator::new(),
        }
    }

    fn schema(&self, kind: Kind) -> Option<(&Value, &CompiledSchema)> {
        self.kinds
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, s, c)| (s, c))
    }

    /// Every problem the API server would report when `object` (a whole
    /// custom resource, as JSON) is created: metadata, schema, then CEL.
    pub fn check(&self, kind: Kind, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let name = object.pointer("/metadata/name").and_then(Value::as_str);
        match name {
            None => errors.push(field("metadata.name", "Required value: name is required")),
            Some(n) if !is_dns_subdomain(n) => errors.push(field(
                "metadata.name",
                &format!("Invalid value: {n:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            )),
            Some(_) => {}
        }
        let Some((schema, compiled)) = self.schema(kind) else {
            return errors;
        };
        let structural = match self.checker.lock() {
            Ok(mut checker) => checker.check(schema, &strip_meta(object), ""),
            Err(_) => vec![field("", "internal error: schema checker poisoned")],
        };
        let structural_ok = structural.is_empty();
        errors.extend(structural);
        // CEL rules assume a structurally valid object, as on the API server.
        if structural_ok && let Err(cel) = self.validator.validate_compiled(compiled, object, None)
        {
            errors.extend(cel.iter().map(|e| FieldError {
                field: e.field_path.clone(),
                message: format!("Invalid value: {}", e.message),
            }));
        }
        errors
    }

    /// Checks then converts to the typed object.
    pub fn admit<T: DeserializeOwned>(
        &self,
        kind: Kind,
        object: &Value,
    ) -> Result<T, Vec<FieldError>> {
        let errors = self.check(kind, object);
        if !errors.is_empty() {
            return Err(errors);
        }
        serde_path_to_error::deserialize(object).map_err(|e| {
            vec![FieldError {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            }]
        })
    }
}

fn field(path: &str, message: &str) -> FieldError {
    FieldError {
        field: path.to_owned(),
        message: message.to_owned(),
    }
}

/// `apiVersion`, `kind` and `metadata` are the API server's, not the schema's.
fn strip_meta(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        map.remove("metadata");
    }
    o
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The objects of a standalone configuration.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub providers: Vec<Provider>,
    pub routes: Vec<LLMRoute>,
    pub budgets: Vec<Budget>,
}

/// One reason a configuration file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadIssue {
    /// 1-based index of the YAML document.
    pub document: usize,
    /// `Kind/name` when known.
    pub object: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for LoadIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A loaded configuration and the warnings it carries.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub catalog: Catalog,
    pub warnings: Vec<Problem>,
}

impl Admission {
    /// Parses multi-document YAML and admits every object. Every problem of
    /// every document is reported, not just the first.
    pub fn parse_documents(&self, yaml: &str) -> Result<Catalog, Vec<LoadIssue>> {
        let mut catalog = Catalog::default();
        let mut issues = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let document = i + 1;
            let issue = |object: Option<String>, field: &str, message: String| LoadIssue {
                document,
                object,
                field: field.to_owned(),
                message,
            };
            let value: Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    issues.push(issue(None, "", format!("not valid YAML: {e}")));
                    continue;
                }
            };
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or("");
            let object = Some(format!(
                "{kind_name}/{}",
                value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ));
            let Some(kind) = Kind::parse(kind_name) else {
                issues.push(issue(
                    object,
                    "kind",
                    format!("{kind_name:?} is not a Sluice kind (Provider, LLMRoute or Budget)"),
                ));
                continue;
            };
            if value.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
                issues.push(issue(
                    object,
                    "apiVersion",
                    format!("must be {API_VERSION}"),
                ));
                continue;
            }
            let errors = match kind {
                Kind::Provider => self.admit(kind, &value).map(|p| catalog.providers.push(p)),
                Kind::LLMRoute => self.admit(kind, &value).map(|r| catalog.routes.push(r)),
                Kind::Budget => self.admit(kind, &value).map(|b| catalog.budgets.push(b)),
            };
            if let Err(errors) = errors {
                issues.extend(
                    errors
                        .into_iter()
                        .map(|e| issue(object.clone(), &e.field, e.message)),
                );
            }
        }
        check_duplicates(&catalog, &mut issues);
        if issues.is_empty() {
            Ok(catalog)
        } else {
            Err(issues)
        }
    }

    /// Parses, admits and checks references: what the standalone sidecar
    /// does with `--config`. Error-level problems refuse the file;
    /// warnings come back with the catalog.
    pub fn load(&self, yaml: &str) -> Result<Loaded, Vec<LoadIssue>> {
        let catalog = self.parse_documents(yaml)?;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for (ns, objects) in Namespace::group(&catalog.providers, &catalog.routes, &catalog.budgets)
        {
            for p in objects.check(&ns) {
                match p.severity {
                    Severity::Error => errors.push(LoadIssue {
                        document: 0,
                        object: Some(format!("{}/{}", p.kind, p.name)),
                        field: p.field.clone(),
                        message: format!("{} ({})", p.message, p.reason.as_str()),
                    }),
                    Severity::Warning => warnings.push(p),
                }
            }
        }
        if errors.is_empty() {
            Ok(Loaded { catalog, warnings })
        } else {
            Err(errors)
        }
    }
}

fn check_duplicates(catalog: &Catalog, issues: &mut Vec<LoadIssue>) {
    use kube::ResourceExt;
    let mut seen = std::collections::BTreeSet::new();
    let names = catalog
        .providers
        .iter()
        .map(|o| ("Provider", o.namespace(), o.name_any()))
        .chain(
            catalog
                .routes
                .iter()
                .map(|o| ("LLMRoute", o.namespace(), o.name_any())),
        )
        .chain(
            catalog
                .budgets
                .iter()
                .map(|o| ("Budget", o.namespace(), o.name_any())),
        );
    for (kind, ns, name) in names {
        if !seen.insert((kind, ns.clone(), name.clone())) {
            issues.push(LoadIssue {
                document: 0,
                object: Some(format!("{kind}/{name}")),
                field: "metadata.name".into(),
                message: format!(
                    "{kind} {name:?} is defined twice in namespace {:?}",
                    ns.unwrap_or_else(|| "default".into())
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(is_dns_subdomain("chat"));
        assert!(is_dns_subdomain("a.b-c"));
        for bad in ["", "Chat", "-a", "a-", "a..b", "a_b"] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_bad_document_is_reported_at_once() {
        let yaml = r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: a}
spec: {type: nope, models: []}
---
kind: Secret
apiVersion: v1
metadata: {name: s}
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: r}
spec: {model: chat, targets: [], colour: blue}
"#;
        let issues = Admission::new().parse_documents(yaml).expect_err("invalid");
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("document 1 (Provider/a): spec.type: Unsupported value: \"nope\""),
            "{all}"
        );
        assert!(
            all.contains("spec.models: Required value: must have at least 1 items"),
            "{all}"
        );
        assert!(all.contains("document 2 (Secret/s): kind"), "{all}");
        assert!(
            all.contains("document 3 (LLMRoute/r): spec.colour: unknown field"),
            "{all}"
        );
        assert!(all.contains("spec.targets: Required value"), "{all}");
    }

    #[test]
    fn duplicates_are_refused() {
        let doc = "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: m}\nspec: {type: mock, models: [{name: x}]}\n";
        let issues = Admission::new()
            .parse_documents(&format!("{doc}---\n{doc}"))
            .expect_err("duplicate");
        assert!(issues[0].message.contains("defined twice"), "{}", issues[0]);
    }
}
