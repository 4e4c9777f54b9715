//! The CRDs in `charts/sluice/crds/` are exactly what the types generate, and
//! they are structural schemas the real API server accepts.

use serde_json::Value;
use sluice_crds::crd;

fn chart_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/crds")
}

#[test]
fn committed_crds_match_the_types() {
    for (file, c) in crd::all() {
        let generated = crd::to_yaml(&c).expect("renders");
        let path = chart_dir().join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `cargo run -p sluice-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_name_group_version_scope_and_printer_columns() {
    let want = [
        (
            "Provider",
            "llmp",
            vec!["Type", "State", "Err%", "P95", "TTFT", "Open", "Age"],
        ),
        (
            "LLMRoute",
            "llmr",
            vec!["Model", "Strategy", "Targets", "Synced", "Healthy", "Age"],
        ),
        (
            "Budget",
            "llmb",
            vec!["Limit", "Spent", "Used", "State", "Resets", "Age"],
        ),
    ];
    for ((_, c), (kind, short, columns)) in crd::all().into_iter().zip(want) {
        assert_eq!(c.spec.group, "sluice.dev");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(c.spec.names.kind, kind);
        assert_eq!(c.spec.names.short_names, Some(vec![short.to_string()]));
        assert_eq!(c.spec.names.categories, Some(vec!["sluice".to_string()]));
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has a status subresource"
        );
        let names: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, columns, "{kind}");
    }
}

/// Walks a schema node and reports what the API server would refuse in a
/// structural schema (and what we refuse by policy).
fn structural_problems(node: &Value, path: &str, in_spec: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for bare in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
        if obj.contains_key(bare) {
            out.push(format!(
                "{path}: has {bare}; structural schemas need explicit types"
            ));
        }
    }
    if obj.contains_key("x-kubernetes-preserve-unknown-fields") {
        out.push(format!(
            "{path}: preserves unknown fields; nothing in our API should"
        ));
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string").is_some();
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string {
        out.push(format!("{path}: has no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: has both properties and additionalProperties"
        ));
    }
    if in_spec
        && !path.is_empty()
        && obj.get("description").is_none()
        && !path.ends_with("[]")
        && !path.ends_with("{}")
    {
        out.push(format!(
            "{path}: has no description (kubectl explain would show nothing)"
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            out.push(format!("{path}: has properties but is not of type object"));
        }
        for (k, v) in props {
            let spec = in_spec || (path.is_empty() && k == "spec");
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            // Label selectors come from k8s-openapi with upstream docs.
            let upstream = k == "podSelector" || k == "routeSelector";
            structural_problems(v, &child, spec && !upstream, out);
        }
    }
    if let Some(items) = obj.get("items") {
        if ty != Some("array") {
            out.push(format!("{path}: has items but is not of type array"));
        }
        structural_problems(items, &format!("{path}[]"), in_spec, out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_problems(extra, &format!("{path}{{}}"), in_spec, out);
    }
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys: Vec<&str> = obj
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let required: Vec<&str> = obj
            .get("items")
            .and_then(|i| i.get("required"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for k in keys {
            if !required.contains(&k) {
                out.push(format!(
                    "{path}: list-map key {k} must be required in its items"
                ));
            }
        }
    }
}

#[test]
fn schemas_are_structural() {
    for (_, c) in crd::all() {
        let schema = crd::schema_of(&c);
        let mut problems = Vec::new();
        structural_problems(&schema, "", false, &mut problems);
        let root: Vec<&String> = schema["properties"]
            .as_object()
            .expect("root properties")
            .keys()
            .collect();
        for k in &root {
            assert!(
                ["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()),
                "{}: unexpected root property {k}",
                c.spec.names.kind
            );
        }
        let meta = &schema["properties"]["metadata"];
        assert!(
            meta.is_null() || *meta == serde_json::json!({"type": "object"}),
            "metadata is the API server's"
        );
        assert!(
            schema["required"]
                .as_array()
                .is_some_and(|r| r.contains(&"spec".into())),
            "spec is required"
        );
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            c.spec.names.kind,
            problems.join("\n")
        );
    }
}

#[test]
fn defaults_in_the_schema_pass_the_schema() {
    // The API server refuses a CRD whose defaults do not validate.
    fn walk(node: &Value, path: &str, checker: &mut sluice_crds::schema_check::Checker) {
        if let Some(d) = node.get("default") {
            let errs = checker.check(node, d, path);
            assert!(errs.is_empty(), "default of {path} is invalid: {errs:?}");
        }
        for (k, v) in node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk(v, &format!("{path}.{k}"), checker);
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), checker);
        }
    }
    let mut checker = sluice_crds::schema_check::Checker::new();
    for (_, c) in crd::all() {
        walk(&crd::schema_of(&c), "", &mut checker);
    }
}
