//! Which resources the emulator serves: the built-in kinds Sluice and kubectl
//! touch, plus every CRD registered through `apiextensions.k8s.io/v1`. Also
//! renders the legacy discovery documents from that list.

use serde_json::{Value, json};

/// One served resource (a group/version/plural).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Served version.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Plural resource name used in URLs, e.g. `pods`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `sluice`).
    pub categories: Vec<String>,
    /// Whether a `/status` subresource exists (spec and status written apart).
    pub status_subresource: bool,
    /// Create-only verb set (TokenReview) instead of full CRUD.
    pub create_only: bool,
    /// Served for a CRD (custom resources take no strategic merge patch).
    pub custom: bool,
    /// The `openAPIV3Schema` of a CRD version, if any.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of a CRD version.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status_subresource: false,
            create_only: false,
            custom: false,
            schema: None,
            printer_columns: Vec::new(),
        }
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn with_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Printer columns for a built-in kind's Table (a few of the real ones).
    fn with_columns(mut self, columns: &[(&str, &str)]) -> Self {
        self.printer_columns = columns
            .iter()
            .map(|(name, path)| json!({"name": name, "type": "string", "jsonPath": path}))
            .collect();
        self
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    fn discovery_entry(&self) -> Value {
        let mut entry = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        entry
    }
}

/// The built-in kinds the emulator serves.
pub fn builtin_types() -> Vec<ResourceType> {
    let core = |kind: &str, plural: &str, namespaced: bool, short: &[&str]| {
        ResourceType::builtin("", "v1", kind, plural, namespaced, short)
    };
    let rbac = |kind: &str, plural: &str, namespaced: bool| {
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
            plural,
            namespaced,
            &[],
        )
    };
    let mut token_review = ResourceType::builtin(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
        &[],
    );
    token_review.create_only = true;
    let mut types = vec![
        core("Namespace", "namespaces", false, &["ns"])
            .with_status()
            .with_columns(&[("Status", ".status.phase")]),
        core("Pod", "pods", true, &["po"])
            .with_status()
            .with_categories(&["all"])
            .with_columns(&[("Status", ".status.phase")]),
        core("Secret", "secrets", true, &[]),
        core("ConfigMap", "configmaps", true, &["cm"]),
        core("Service", "services", true, &["svc"])
            .with_status()
            .with_categories(&["all"]),
        core("ServiceAccount", "serviceaccounts", true, &["sa"]),
        core("Event", "events", true, &["ev"]),
        core("Endpoints", "endpoints", true, &["ep"]),
        core("Node", "nodes", false, &["no"]).with_status(),
        ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true, &["ev"]),
        ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
        ResourceType::builtin("apps", "v1", "Deployment", "deployments", true, &["deploy"])
            .with_status()
            .with_categories(&["all"]),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
        )
        .with_status(),
        ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
            &[],
        ),
        rbac("Role", "roles", true),
        rbac("RoleBinding", "rolebindings", true),
        rbac("ClusterRole", "clusterroles", false),
        rbac("ClusterRoleBinding", "clusterrolebindings", false),
        token_review,
    ];
    // Stored and served with no behaviour, so rendered charts apply whole.
    let inert = [
        (
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            &["sts"][..],
        ),
        ("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"][..]),
        ("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"][..]),
        ("batch", "v1", "Job", "jobs", true, &[][..]),
        ("batch", "v1", "CronJob", "cronjobs", true, &["cj"][..]),
        (
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"][..],
        ),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"][..],
        ),
        (
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            true,
            &["ing"][..],
        ),
        (
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["hpa"][..],
        ),
        (
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            &[][..],
        ),
        (
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
            &[][..],
        ),
    ];
    for (group, version, kind, plural, namespaced, short) in inert {
        let mut rt = ResourceType::builtin(group, version, kind, plural, namespaced, short);
        if !matches!(kind, "EndpointSlice" | "ValidatingWebhookConfiguration") {
            rt.status_subresource = true;
        }
        types.push(rt);
    }
    types
}

/// Resource types declared by one CRD object (one per served version).
///
/// Returns an empty list for a CRD that lacks the fields every CRD has.
pub fn types_from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(kind), Some(plural)) = (
        spec["group"].as_str(),
        names["kind"].as_str(),
        names["plural"].as_str(),
    ) else {
        return Vec::new();
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| {
            Some(ResourceType {
                group: group.to_string(),
                version: v["name"].as_str()?.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_lowercase()),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                status_subresource: v["subresources"].get("status").is_some(),
                create_only: false,
                custom: true,
                schema: v["schema"].get("openAPIV3Schema").cloned(),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every non-core group with its versions.
pub fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => {
                versions.push(t.version.clone())
            }
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": entries, "preferredVersion": entries[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>/<version>` or `/api/v1`: the resources of one group version,
/// or `None` when nothing is served there.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let matching: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if matching.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in matching {
        resources.push(t.discovery_entry());
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}
