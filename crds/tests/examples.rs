//! Every example in `examples/` is valid: schema, CEL rules and the checks
//! across objects, as the cluster (or the standalone sidecar) would judge it.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_crds::load::{Admission, Kind};
use sluice_crds::semantic::{Namespace, SecretLookup, Severity, check_credentials};

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn quickstart_loads_standalone_without_problems() {
    let yaml =
        std::fs::read_to_string(examples().join("quickstart.yaml")).expect("quickstart.yaml");
    let loaded = Admission::new()
        .load(&yaml)
        .unwrap_or_else(|e| panic!("quickstart.yaml is refused: {e:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = loaded.catalog;
    assert_eq!(
        (c.providers.len(), c.routes.len(), c.budgets.len()),
        (2, 2, 1)
    );
    assert!(
        c.providers
            .iter()
            .all(|p| p.spec.type_ == sluice_crds::ProviderType::Mock),
        "offline"
    );
    let chat = c
        .routes
        .iter()
        .find(|r| r.spec.model == "chat")
        .expect("chat route");
    assert!(
        chat.spec.targets.len() >= 2,
        "the quickstart shows a fallback"
    );
}

#[test]
fn cluster_examples_are_valid_and_complete() {
    let admission = Admission::new();
    let mut secrets: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut yaml_sluice = String::new();
    let mut files: Vec<_> = std::fs::read_dir(examples().join("cluster"))
        .expect("examples/cluster")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            match v["kind"].as_str() {
                Some("Secret") => {
                    let keys = v["stringData"]
                        .as_object()
                        .expect("stringData")
                        .keys()
                        .cloned()
                        .collect();
                    let ns = v["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string();
                    secrets.insert(
                        (ns, v["metadata"]["name"].as_str().expect("name").into()),
                        keys,
                    );
                }
                Some(k) => {
                    let kind = Kind::parse(k)
                        .unwrap_or_else(|| panic!("{}: unexpected kind {k}", path.display()));
                    let errs = admission.check(kind, &v);
                    assert!(
                        errs.is_empty(),
                        "{}: {k}/{}: {errs:#?}",
                        path.display(),
                        v["metadata"]["name"]
                    );
                    yaml_sluice.push_str("---\n");
                    yaml_sluice.push_str(&serde_yaml::to_string(&v).expect("renders"));
                }
                None => panic!("{}: a document without kind", path.display()),
            }
        }
    }
    let c = admission.parse_documents(&yaml_sluice).expect("admitted");
    let strategies: std::collections::BTreeSet<_> =
        c.routes.iter().map(|r| r.spec.strategy.as_str()).collect();
    assert_eq!(
        strategies.len(),
        5,
        "every strategy has an example: {strategies:?}"
    );
    let types: std::collections::BTreeSet<_> =
        c.providers.iter().map(|p| p.spec.type_.as_str()).collect();
    assert!(
        types.is_superset(&["openai", "anthropic", "azure-openai"].into()),
        "{types:?}"
    );
    assert!(
        c.budgets.iter().any(|b| b.spec.tenant_header.is_some()),
        "a per-tenant budget"
    );

    let mut problems = Vec::new();
    for (ns, objects) in Namespace::group(&c.providers, &c.routes, &c.budgets) {
        problems.extend(objects.check(&ns));
    }
    for p in &c.providers {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        problems.extend(check_credentials(
            p,
            &ns,
            |name, key| match secrets.get(&(ns.clone(), name.to_string())) {
                None => SecretLookup::NoSecret,
                Some(keys) if keys.iter().any(|k| k == key) => SecretLookup::Found,
                Some(_) => SecretLookup::NoKey,
            },
            |_| false,
        ));
    }
    let errors: Vec<_> = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(problems.is_empty(), "warnings too: {problems:#?}");
}

#[test]
fn a_missing_secret_key_is_named() {
    let p: sluice_crds::Provider = serde_yaml::from_str(
        "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: openai, namespace: shop}\nspec:\n  type: openai\n  credentials: {secretRef: {name: keys, key: openai}}\n  models: [{name: gpt-4o}]\n",
    )
    .expect("valid");
    let got = check_credentials(&p, "shop", |_, _| SecretLookup::NoKey, |_| true);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason.as_str(), "SecretKeyNotFound");
    assert_eq!(got[0].message, "Secret \"keys\" has no key \"openai\"");
    let got = check_credentials(&p, "shop", |_, _| SecretLookup::NoSecret, |_| true);
    assert_eq!(got[0].reason.as_str(), "SecretNotFound");
}
