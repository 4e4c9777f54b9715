//! Bearer tokens: the admin token written into the kubeconfig, and
//! service-account tokens the emulator issues (through
//! [`Emulator::issue_token`](super::Emulator::issue_token), `POST
//! /emulator/v1/tokens`, or the real TokenRequest subresource) and later
//! answers TokenReviews for.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The audience the real API server assigns when none is requested.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `system:serviceaccount:<ns>:<name>` or `admin`.
    pub username: String,
    /// A stable uid for the identity.
    pub uid: String,
    /// Groups of the identity.
    pub groups: Vec<String>,
    /// Audiences the token is valid for.
    pub audiences: Vec<String>,
    /// `Some((namespace, serviceaccount))` for service-account tokens.
    pub service_account: Option<(String, String)>,
    /// The pod a service-account token is bound to: (name, uid).
    pub pod: Option<(String, String)>,
}

/// Issued tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: BTreeMap<String, Identity>,
    counter: u64,
}

impl Tokens {
    /// Registers the admin token (group `system:masters`).
    pub fn add_admin(&mut self, token: &str) {
        self.by_token.insert(
            token.to_string(),
            Identity {
                username: "admin".to_string(),
                uid: "admin".to_string(),
                groups: vec![
                    "system:masters".to_string(),
                    "system:authenticated".to_string(),
                ],
                audiences: vec![API_AUDIENCE.to_string()],
                service_account: None,
                pod: None,
            },
        );
    }

    /// Issues a token for a service account, optionally bound to a pod
    /// (name, uid); no audiences means the API server's own audience.
    pub fn issue(
        &mut self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
        pod: Option<(String, String)>,
        entropy: u64,
    ) -> String {
        self.counter += 1;
        let token = format!("emu-sa.{:016x}{:08x}", entropy, self.counter);
        let audiences = if audiences.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            audiences.to_vec()
        };
        self.by_token.insert(
            token.clone(),
            Identity {
                username: format!("system:serviceaccount:{namespace}:{service_account}"),
                uid: format!("sa-{namespace}-{service_account}"),
                groups: vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".to_string(),
                ],
                audiences,
                service_account: Some((namespace.to_string(), service_account.to_string())),
                pod,
            },
        );
        token
    }

    /// The identity behind a token, if the emulator issued it.
    pub fn lookup(&self, token: &str) -> Option<&Identity> {
        self.by_token.get(token)
    }

    /// Answers a TokenReview request body the way the real server does.
    pub fn review(&self, request: &Value) -> Value {
        let token = request["spec"]["token"].as_str().unwrap_or("");
        let wanted: Vec<String> = request["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut response = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": request["spec"],
        });
        let wanted = if wanted.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            wanted
        };
        response["status"] = match self.lookup(token) {
            Some(identity) => {
                let matched: Vec<&String> = wanted
                    .iter()
                    .filter(|a| identity.audiences.contains(a))
                    .collect();
                if matched.is_empty() {
                    json!({"authenticated": false, "error": "[invalid bearer token, token audiences is invalid]", "user": {}})
                } else {
                    let mut user = json!({"username": identity.username, "uid": identity.uid, "groups": identity.groups});
                    if identity.service_account.is_some() {
                        user["extra"] = json!({
                            "authentication.kubernetes.io/credential-id": [format!("JTI={}", identity.uid)],
                        });
                        if let Some((pod, pod_uid)) = &identity.pod {
                            user["extra"]["authentication.kubernetes.io/pod-name"] = json!([pod]);
                            user["extra"]["authentication.kubernetes.io/pod-uid"] =
                                json!([pod_uid]);
                        }
                    }
                    json!({"authenticated": true, "user": user, "audiences": matched})
                }
            }
            None => json!({"authenticated": false, "error": "[invalid bearer token]", "user": {}}),
        };
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_checks_audiences() {
        let mut tokens = Tokens::default();
        let token = tokens.issue(
            "shop",
            "app",
            &["sluice".to_string()],
            Some(("app-1".to_string(), "u1".to_string())),
            7,
        );
        let ok = tokens.review(&json!({"spec": {"token": token, "audiences": ["sluice"]}}));
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(
            ok["status"]["user"]["username"],
            "system:serviceaccount:shop:app"
        );
        assert_eq!(ok["status"]["audiences"], json!(["sluice"]));
        assert_eq!(
            ok["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["app-1"])
        );
        let wrong = tokens.review(&json!({"spec": {"token": token, "audiences": ["other"]}}));
        assert_eq!(wrong["status"]["authenticated"], false);
        let default_audience = tokens.review(&json!({"spec": {"token": token}}));
        assert_eq!(default_audience["status"]["authenticated"], false);
        let unknown = tokens.review(&json!({"spec": {"token": "nope"}}));
        assert_eq!(unknown["status"]["authenticated"], false);
    }
}
