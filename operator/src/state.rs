//! The operator's one [`Context`]: the reflector caches of the five kinds it
//! watches, the aggregator, the latest compile output and the snapshot hub;
//! plus [`gather`], which turns the caches into compile's input, and the
//! debounced compile loop.
//!
//! A pod carries a Sluice sidecar when it is labelled
//! [`SIDECAR_LABEL`]`=`[`SIDECAR_INJECTED`] (the injection webhook sets it);
//! only such pods are watched. Pods that finished (`Succeeded`/`Failed`)
//! get no snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use sluice_crds::budget::WindowBounds;
use sluice_crds::snapshot::Credential;
use sluice_crds::{Budget, LLMRoute, Provider};
use tokio::sync::{Notify, watch};

use crate::aggregate::Aggregator;
use crate::allowance::Policy;
use crate::compile::{ClusterState, Compiled, Key, PodInfo, Secrets, compile_incremental};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The label that marks a pod with an injected sidecar.
pub const SIDECAR_LABEL: &str = "sluice.dev/sidecar";
/// Its value.
pub const SIDECAR_INJECTED: &str = "injected";
/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// The TokenReview audience sidecar tokens must carry.
pub const AUDIENCE: &str = "sluice";

/// Reflector caches.
#[derive(Clone)]
pub struct Stores {
    pub providers: Store<Provider>,
    pub routes: Store<LLMRoute>,
    pub budgets: Store<Budget>,
    pub secrets: Store<Secret>,
    pub pods: Store<Pod>,
}

/// The writers behind [`Stores`], consumed by [`Context::watch`].
pub struct Writers {
    providers: reflector::store::Writer<Provider>,
    routes: reflector::store::Writer<LLMRoute>,
    budgets: reflector::store::Writer<Budget>,
    secrets: reflector::store::Writer<Secret>,
    pods: reflector::store::Writer<Pod>,
}

/// Bookkeeping for persisting budget spend with group commit.
///
/// Every ingest of a report gets a number (`ingests`); the budgets it
/// touched are marked `pending` with that number while the aggregator is
/// still locked, so a mark is only visible once its spend is in the
/// aggregator. A persist of some budgets (serialized by `writer`, so an
/// older computation never lands after a newer one) reads the current
/// number *before* computing any status, writes each of those budgets that
/// is pending, and clears a mark only if no ingest after that number
/// re-marked it. Hence a budget that is not pending has every fold marked
/// so far persisted: a report waiting on the writer finds its budgets
/// already written by whoever went first (one status write serves many
/// reports), and a budget whose writes fail holds back only the reports
/// that name it.
#[derive(Debug, Default)]
pub struct Persistence {
    pub writer: tokio::sync::Mutex<()>,
    pub pending: Mutex<BTreeMap<Key, u64>>,
    pub ingests: std::sync::atomic::AtomicU64,
}

impl Persistence {
    /// Marks `budgets` pending for a new ingest (call with the aggregator
    /// locked, right after ingesting); returns the ingest's number.
    pub fn mark(&self, budgets: &[Key]) -> u64 {
        let n = self
            .ingests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if let Ok(mut pending) = self.pending.lock() {
            for b in budgets {
                pending.insert(b.clone(), n);
            }
        }
        n
    }
}

/// Shared by controllers, the compile loop and the distribution server.
pub struct Context {
    pub client: Client,
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub report_interval: sluice_crds::Duration,
    pub stores: Stores,
    pub aggregator: Mutex<Aggregator>,
    /// Budget spend not yet persisted (see [`Persistence`]).
    pub persistence: Persistence,
    compiled: RwLock<Arc<Compiled>>,
    /// The previous compile's snapshots, so unchanged pods are not rebuilt.
    memo: Mutex<crate::compile::Memo>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    compile_requested: Notify,
    /// Bumped after every compile; controllers re-reconcile on it.
    pub compiled_tx: watch::Sender<u64>,
    /// True once this replica leads and its caches are synced.
    pub serving: watch::Sender<bool>,
    /// Consecutive reconcile failures per object, for backoff.
    pub failures: Mutex<std::collections::HashMap<String, u32>>,
    /// Publishes Kubernetes Events (see [`crate::events`]).
    pub events: crate::events::Publisher,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, the aggregator's clock.
pub fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

impl Context {
    pub fn new(
        client: Client,
        identity: &str,
        namespace: Option<String>,
        report_interval: sluice_crds::Duration,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Writers) {
        let (providers, pw) = reflector::store();
        let (routes, rw) = reflector::store();
        let (budgets, bw) = reflector::store();
        let (secrets, sw) = reflector::store();
        let (pods, podw) = reflector::store();
        let interval_ms = report_interval.as_millis().max(1);
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        let ctx = Self {
            events: crate::events::Publisher::new(recorder),
            failures: Mutex::new(std::collections::HashMap::new()),
            client,
            namespace,
            report_interval,
            stores: Stores {
                providers,
                routes,
                budgets,
                secrets,
                pods,
            },
            // Health older than three report intervals no longer counts.
            aggregator: Mutex::new(Aggregator::new(Policy::default(), interval_ms)),
            persistence: Persistence::default(),
            compiled: RwLock::new(Arc::new(Compiled::default())),
            memo: Mutex::new(crate::compile::Memo::default()),
            hub: Hub::default(),
            metrics,
            compile_requested: Notify::new(),
            compiled_tx: watch::channel(0).0,
            serving: watch::channel(false).0,
        };
        (
            Arc::new(ctx),
            Writers {
                providers: pw,
                routes: rw,
                budgets: bw,
                secrets: sw,
                pods: podw,
            },
        )
    }

    /// An `Api` over the watched namespace(s).
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// The latest compile output.
    pub fn compiled(&self) -> Arc<Compiled> {
        self.compiled
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Asks the compile loop for a new compile soon.
    pub fn request_compile(&self) {
        self.compile_requested.notify_one();
    }

    /// The aggregator, even if a panic poisoned its lock (its state is a
    /// set of monotonic counters: still the best we have).
    pub fn aggregator(&self) -> std::sync::MutexGuard<'_, Aggregator> {
        self.aggregator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the five reflectors; every change asks for a compile. Never
    /// returns (watchers retry with backoff).
    pub async fn watch(self: Arc<Self>, writers: Writers) {
        let pods_cfg =
            watcher::Config::default().labels(&format!("{SIDECAR_LABEL}={SIDECAR_INJECTED}"));
        let cfg = watcher::Config::default;
        let providers = self.reflect(writers.providers, self.api::<Provider>(), cfg(), trim_meta);
        let routes = self.reflect(writers.routes, self.api::<LLMRoute>(), cfg(), trim_meta);
        let budgets = self.reflect(writers.budgets, self.api::<Budget>(), cfg(), trim_meta);
        let secrets = self.reflect(writers.secrets, self.api::<Secret>(), cfg(), trim_secret);
        let pods = self.reflect(writers.pods, self.api::<Pod>(), pods_cfg, trim_pod);
        futures::join!(providers, routes, budgets, secrets, pods);
    }

    async fn reflect<K>(
        &self,
        writer: reflector::store::Writer<K>,
        api: Api<K>,
        cfg: watcher::Config,
        trim: fn(&mut K),
    ) where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    {
        let mut stream = reflector::reflector(writer, watcher(api, cfg).modify(trim))
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => self.request_compile(),
                Err(e) => tracing::warn!(
                    error = %e,
                    kind = %K::kind(&K::DynamicType::default()),
                    "watch failed; retrying"
                ),
            }
        }
    }

    /// Waits for every cache's first list.
    pub async fn caches_ready(&self) {
        let s = &self.stores;
        let _ = futures::join!(
            s.providers.wait_until_ready(),
            s.routes.wait_until_ready(),
            s.budgets.wait_until_ready(),
            s.secrets.wait_until_ready(),
            s.pods.wait_until_ready(),
        );
    }

    /// Compiles on every change (debounced) and at least once per report
    /// interval (allowances and health move with reports). Never returns.
    pub async fn compile_loop(self: Arc<Self>) {
        const DEBOUNCE: Duration = Duration::from_millis(50);
        let interval: Duration = self.report_interval.into();
        self.caches_ready().await;
        loop {
            self.compile_once();
            let _ = tokio::time::timeout(interval, self.compile_requested.notified()).await;
            tokio::time::sleep(DEBOUNCE).await;
        }
    }

    /// One compile: publish changed snapshots, store the verdicts, wake
    /// the controllers.
    pub fn compile_once(&self) {
        let state = gather(&self.stores);
        let now = jiff::Timestamp::now();
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        let compiled = {
            let mut agg = self.aggregator();
            agg.reclaim(now_ms());
            compile_incremental(&state, now, self.report_interval, &mut *agg, &mut memo)
        };
        self.metrics.snapshots_built.inc_by(memo.rebuilt as u64);
        drop(memo);
        let pushed = self.hub.publish(&compiled.snapshots);
        self.metrics.compiles.inc();
        self.metrics.snapshots_pushed.inc_by(pushed as u64);
        if let Ok(mut slot) = self.compiled.write() {
            *slot = Arc::new(compiled);
        }
        self.compiled_tx.send_modify(|n| *n += 1);
    }

    /// The Budgets of `namespace` with their current windows, as
    /// [`Aggregator::ingest`] wants them.
    pub fn budgets_of(&self, namespace: &str) -> Vec<(Arc<Budget>, WindowBounds)> {
        let now = jiff::Timestamp::now();
        self.stores
            .budgets
            .state()
            .into_iter()
            .filter(|b| b.namespace().as_deref() == Some(namespace))
            .map(|b| {
                let w = b.spec.window.bounds_rfc3339(now);
                (b, w)
            })
            .collect()
    }

    /// The pod `namespace/name` if it carries a sidecar.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.stores
            .pods
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|p| has_sidecar(p))
    }
}

/// Drops what the caches never read: managed fields.
fn trim_meta<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Secret types that never hold a provider key: their data is not kept.
const KEYLESS_SECRET_TYPES: &[&str] = &[
    "helm.sh/release.v1",
    "kubernetes.io/service-account-token",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
    "bootstrap.kubernetes.io/token",
];

/// Secrets are cached only for the Providers that reference them; the
/// data of types that cannot hold a key is dropped, and so is kubectl's
/// last-applied annotation (a second copy of the data).
fn trim_secret(secret: &mut Secret) {
    trim_meta(secret);
    if let Some(a) = secret.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if secret
        .type_
        .as_deref()
        .is_some_and(|t| KEYLESS_SECRET_TYPES.contains(&t))
    {
        secret.data = None;
        secret.string_data = None;
    }
}

/// Pods are cached with only what [`pod_info`] and [`has_sidecar`] read.
fn trim_pod(pod: &mut Pod) {
    trim_meta(pod);
    pod.metadata.annotations = None;
    pod.spec = pod
        .spec
        .as_ref()
        .map(|s| k8s_openapi::api::core::v1::PodSpec {
            service_account_name: s.service_account_name.clone(),
            ..Default::default()
        });
    pod.status = pod
        .status
        .as_ref()
        .map(|s| k8s_openapi::api::core::v1::PodStatus {
            phase: s.phase.clone(),
            ..Default::default()
        });
}

/// Whether compile should consider the pod.
pub fn has_sidecar(pod: &Pod) -> bool {
    let labelled = pod
        .labels()
        .get(SIDECAR_LABEL)
        .is_some_and(|v| v == SIDECAR_INJECTED);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    labelled && !finished
}

/// A pod as compile sees it.
pub fn pod_info(pod: &Pod) -> PodInfo {
    PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        service_account: Some(service_account_of(pod)),
        labels: pod.labels().clone(),
        workload: workload_of(pod),
    }
}

/// The pod's owning workload, for cost attribution: its controller, with a
/// Deployment's ReplicaSet named as the Deployment (the ReplicaSet's name
/// is the Deployment's plus `-<pod-template-hash>`).
pub fn workload_of(pod: &Pod) -> Option<String> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        && !deployment.is_empty()
    {
        return Some(format!("Deployment/{deployment}"));
    }
    Some(format!("{}/{}", owner.kind, owner.name))
}

/// The pod's service account (`default` when unset, as the API server fills it).
pub fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// Compile's input from the caches: only Secrets that Providers reference
/// are read.
pub fn gather(stores: &Stores) -> ClusterState {
    let providers: Vec<Provider> = stores
        .providers
        .state()
        .iter()
        .map(|p| (**p).clone())
        .collect();
    let mut secrets: Secrets = BTreeMap::new();
    for p in &providers {
        let ns = p.namespace().unwrap_or_default();
        let Some(r) = p
            .spec
            .credentials
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
        else {
            continue;
        };
        let key = (ns.clone(), r.name.clone());
        if secrets.contains_key(&key) {
            continue;
        }
        let Some(secret) = stores.secrets.get(&ObjectRef::new(&r.name).within(&ns)) else {
            continue;
        };
        let data = secret
            .data
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let text = String::from_utf8(v.0.clone()).ok()?;
                Some((
                    k.clone(),
                    Credential::new(text.trim_end_matches(['\n', '\r']).to_owned()),
                ))
            })
            .collect();
        secrets.insert(key, data);
    }
    let mut pods: Vec<PodInfo> = stores
        .pods
        .state()
        .iter()
        .filter(|p| has_sidecar(p))
        .map(|p| pod_info(p))
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ClusterState {
        providers,
        routes: stores
            .routes
            .state()
            .iter()
            .map(|r| (**r).clone())
            .collect(),
        budgets: stores
            .budgets
            .state()
            .iter()
            .map(|b| (**b).clone())
            .collect(),
        secrets,
        pods,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    #[test]
    fn workloads_name_deployments_not_replica_sets() {
        let owned = |kind: &str, name: &str, labels: serde_json::Value| {
            pod(
                serde_json::json!({"metadata": {"name": "p", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                    "uid": "u", "controller": true}]}}),
            )
        };
        let hash = serde_json::json!({"pod-template-hash": "5d8f9c"});
        assert_eq!(
            workload_of(&owned("ReplicaSet", "shop-5d8f9c", hash.clone())).as_deref(),
            Some("Deployment/shop")
        );
        assert_eq!(
            workload_of(&owned("ReplicaSet", "shop-other", hash)).as_deref(),
            Some("ReplicaSet/shop-other")
        );
        assert_eq!(
            workload_of(&owned("StatefulSet", "db", serde_json::json!({}))).as_deref(),
            Some("StatefulSet/db")
        );
        assert_eq!(
            workload_of(&pod(serde_json::json!({"metadata": {"name": "bare"}}))),
            None
        );
    }

    #[test]
    fn only_labelled_running_pods_have_a_sidecar() {
        let labelled = serde_json::json!({"sluice.dev/sidecar": "injected"});
        assert!(has_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a", "labels": labelled}})
        )));
        assert!(!has_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a", "labels": labelled},
            "status": {"phase": "Succeeded"}})
        )));
        assert!(!has_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a"}})
        )));
        let mut p = pod(
            serde_json::json!({"metadata": {"name": "a", "labels": labelled},
            "spec": {"containers": [{"name": "app", "image": "i"}]}}),
        );
        assert_eq!(service_account_of(&p), "default");
        trim_pod(&mut p);
        assert_eq!(
            pod_info(&p).labels.get(SIDECAR_LABEL).map(String::as_str),
            Some("injected")
        );
    }

    #[test]
    fn keyless_secret_types_lose_their_data_in_the_cache() {
        let secret = |type_: &str| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}, "type": type_,
                "data": {"k": "dmFsdWU="}}))
            .expect("secret")
        };
        let mut helm = secret("helm.sh/release.v1");
        trim_secret(&mut helm);
        assert!(helm.data.is_none());
        let mut opaque = secret("Opaque");
        trim_secret(&mut opaque);
        assert!(opaque.data.is_some());
    }
}
