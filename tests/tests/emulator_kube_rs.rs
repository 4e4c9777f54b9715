//! The emulator driven by kube-rs: typed and dynamic clients, the status
//! subresource, server-side apply and `kube::runtime::watcher`.

mod common;

use std::time::Duration;

use common::{Cluster, WIDGET_CRD};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::json;

/// Bound on every wait for a watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("config map")
}

async fn widgets(cluster: &Cluster) -> Api<DynamicObject> {
    let client = cluster.client().await;
    let crd: CustomResourceDefinition = serde_yaml::from_str(WIDGET_CRD).expect("crd yaml");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("crd created");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client, "default", &resource)
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})).expect("widget")
}

#[tokio::test]
async fn typed_crud_selectors_and_optimistic_concurrency() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client().await);
    let created = api
        .create(
            &PostParams::default(),
            &config_map("a", json!({"app": "web"})),
        )
        .await
        .expect("create");
    api.create(
        &PostParams::default(),
        &config_map("b", json!({"app": "db"})),
    )
    .await
    .expect("create");
    assert_eq!(
        api_error(
            api.create(&PostParams::default(), &config_map("a", json!({})))
                .await
        )
        .reason,
        "AlreadyExists"
    );

    let web = api
        .list(&ListParams::default().labels("app in (web)"))
        .await
        .expect("list");
    assert_eq!(web.items.len(), 1);
    let not_web = api
        .list(&ListParams::default().labels("app!=web"))
        .await
        .expect("list");
    assert_eq!(not_web.items[0].metadata.name.as_deref(), Some("b"));

    let mut fresh = api.get("a").await.expect("get");
    fresh.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    // `fresh` still carries the old resourceVersion.
    let stale = api_error(api.replace("a", &PostParams::default(), &fresh).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_error(api.get("a").await).code, 404);
}

#[tokio::test]
async fn status_subresource_generation_and_apply() {
    let cluster = Cluster::start().await;
    let api = widgets(&cluster).await;
    let created = api
        .create(&PostParams::default(), &widget("w", json!({"size": 2})))
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.data["spec"]["max"], 10, "defaulted");

    let status = json!({"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}});
    let patched = api
        .patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status writes never bump generation"
    );
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Ready");

    let spec = json!({"spec": {"size": 3}, "status": {"observedGeneration": 99}});
    let patched = api
        .patch("w", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .expect("patch spec");
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        patched.data["status"]["observedGeneration"], 1,
        "main writes ignore status"
    );

    let bad_status = json!({"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}});
    let invalid = api_error(
        api.patch_status("w", &PatchParams::default(), &Patch::Merge(&bad_status))
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid
            .message
            .contains("status.conditions[0].status: Unsupported value: \"Maybe\""),
        "{}",
        invalid.message
    );

    // A controller writing status with server-side apply, repeatedly.
    let applied = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"observedGeneration": 2}});
    let params = PatchParams::apply("widget-controller").force();
    let first = api
        .patch_status("w", &params, &Patch::Apply(&applied))
        .await
        .expect("apply status");
    assert_eq!(first.data["status"]["observedGeneration"], 2);
    let again = api
        .patch_status("w", &params, &Patch::Apply(&applied))
        .await
        .expect("apply status again");
    assert_eq!(
        again.metadata.resource_version, first.metadata.resource_version,
        "an identical apply is a no-op"
    );

    let invalid = api_error(
        api.create(&PostParams::default(), &widget("big", json!({"size": 11})))
            .await,
    );
    assert_eq!(invalid.code, 422);
    assert!(
        invalid
            .message
            .starts_with("Widget.example.com \"big\" is invalid: spec"),
        "{}",
        invalid.message
    );
}

async fn next_event<S, T>(stream: &mut S) -> T
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Unpin,
{
    tokio::time::timeout(EVENT_TIMEOUT, stream.try_next())
        .await
        .expect("event in time")
        .expect("watch ok")
        .expect("stream open")
}

async fn watcher_sees_changes(config: watcher::Config) {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client().await);
    api.create(&PostParams::default(), &config_map("before", json!({})))
        .await
        .expect("create");
    let mut events = watcher(api.clone(), config).boxed();
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::Init
    ));
    match next_event(&mut events).await {
        watcher::Event::InitApply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("before")),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::InitDone
    ));
    api.create(&PostParams::default(), &config_map("after", json!({})))
        .await
        .expect("create");
    match next_event(&mut events).await {
        watcher::Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("after")),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    match next_event(&mut events).await {
        watcher::Event::Delete(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("before")),
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_watcher_with_list_then_watch() {
    watcher_sees_changes(watcher::Config::default()).await;
}

#[tokio::test]
async fn runtime_watcher_with_streaming_list() {
    watcher_sees_changes(watcher::Config::default().streaming_lists()).await;
}

type RawStream = futures::stream::BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>;

async fn next_raw(stream: &mut RawStream) -> WatchEvent<ConfigMap> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event decodes")
}

#[tokio::test]
async fn raw_watch_resumes_and_follows_selectors() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client().await);
    let first = api
        .create(
            &PostParams::default(),
            &config_map("one", json!({"app": "web"})),
        )
        .await
        .expect("create");
    api.create(
        &PostParams::default(),
        &config_map("two", json!({"app": "web"})),
    )
    .await
    .expect("create");
    let since = first.metadata.resource_version.expect("resourceVersion");

    let params = WatchParams::default().labels("app=web").timeout(5);
    let mut stream: RawStream = api.watch(&params, &since).await.expect("watch").boxed();
    match next_raw(&mut stream).await {
        WatchEvent::Added(cm) => assert_eq!(
            cm.metadata.name.as_deref(),
            Some("two"),
            "history after `since` is replayed"
        ),
        other => panic!("expected Added, got {other:?}"),
    }
    let relabel = json!({"metadata": {"labels": {"app": "db"}}});
    api.patch("one", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("relabel");
    match next_raw(&mut stream).await {
        WatchEvent::Deleted(cm) => assert_eq!(
            cm.metadata.name.as_deref(),
            Some("one"),
            "leaving the selector reads as deletion"
        ),
        other => panic!("expected Deleted, got {other:?}"),
    }
    let back = json!({"metadata": {"labels": {"app": "web"}}});
    api.patch("one", &PatchParams::default(), &Patch::Merge(&back))
        .await
        .expect("relabel back");
    assert!(matches!(next_raw(&mut stream).await, WatchEvent::Added(_)));
    // timeoutSeconds=5 ends the stream.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            assert!(
                matches!(
                    event,
                    Ok(WatchEvent::Bookmark(_)) | Ok(WatchEvent::Modified(_))
                ),
                "{event:?}"
            );
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch ends after timeoutSeconds");
}

#[tokio::test]
async fn expired_resource_version_gets_410() {
    let options = sluice_tests::emulator::EmulatorOptions {
        watch_history: 3,
        ..Default::default()
    };
    let cluster = Cluster::start_with(options).await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client().await);
    let first = api
        .create(&PostParams::default(), &config_map("c0", json!({})))
        .await
        .expect("create");
    for i in 1..6 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("c{i}"), json!({})),
        )
        .await
        .expect("create");
    }
    let since = first.metadata.resource_version.expect("resourceVersion");
    let mut stream: RawStream = api
        .watch(&WatchParams::default().timeout(5), &since)
        .await
        .expect("watch")
        .boxed();
    match next_raw(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    // The runtime watcher, which lists first, is not disturbed.
    let mut events = watcher(api, watcher::Config::default()).boxed();
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::Init
    ));
}

#[tokio::test]
async fn runtime_finalizer_helper_adds_and_removes_its_finalizer() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};
    use std::sync::Arc;

    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client().await);
    api.create(&PostParams::default(), &config_map("held", json!({})))
        .await
        .expect("create");
    let name = "example.com/cleanup";
    let run = |object: ConfigMap| {
        let api = api.clone();
        async move {
            finalizer(&api, name, Arc::new(object), |event| async move {
                Ok::<_, kube::Error>(match event {
                    Event::Apply(_) => Action::await_change(),
                    Event::Cleanup(_) => Action::await_change(),
                })
            })
            .await
            .expect("finalizer step")
        }
    };
    run(api.get("held").await.expect("get")).await;
    let held = api.get("held").await.expect("get");
    assert_eq!(held.metadata.finalizers, Some(vec![name.to_string()]));
    run(held).await;
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let deleting = api.get("held").await.expect("still there while finalized");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    run(deleting).await;
    assert_eq!(
        api_error(api.get("held").await).code,
        404,
        "removing the finalizer completes the deletion"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_reconciles_and_settles() {
    use kube::runtime::Controller;
    use kube::runtime::controller::Action;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct ReconcileError(#[from] kube::Error);

    let cluster = Cluster::start().await;
    let api = widgets(&cluster).await;
    api.create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .expect("create");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let reconciles = Arc::new(AtomicUsize::new(0));

    // Writes status.observedGeneration with server-side apply, as the
    // operator's controllers do.
    let reconcile = |object: Arc<DynamicObject>,
                     ctx: Arc<(Api<DynamicObject>, Arc<AtomicUsize>)>| async move {
        ctx.1.fetch_add(1, Ordering::SeqCst);
        let status = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "status": {"observedGeneration": object.metadata.generation}});
        let name = object.metadata.name.clone().unwrap_or_default();
        ctx.0
            .patch_status(
                &name,
                &PatchParams::apply("widget-controller").force(),
                &Patch::Apply(&status),
            )
            .await?;
        Ok::<_, ReconcileError>(Action::await_change())
    };
    let controller = Controller::new_with(api.clone(), watcher::Config::default(), resource)
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            Arc::new((api.clone(), reconciles.clone())),
        )
        .for_each(|_| async {});
    let driver = tokio::spawn(controller);

    let observed = |wanted: i64| {
        let api = api.clone();
        async move {
            tokio::time::timeout(EVENT_TIMEOUT, async {
                loop {
                    let w = api.get("w").await.expect("get");
                    if w.data["status"]["observedGeneration"] == wanted {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("status catches up");
        }
    };
    observed(1).await;
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .expect("spec change");
    observed(2).await;
    // Once the status is current, reconciles stop: wait for a quiet second
    // (a reconcile loop never gets one).
    let mut settled = reconciles.load(Ordering::SeqCst);
    let mut quiet = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = reconciles.load(Ordering::SeqCst);
        if now == settled {
            quiet = true;
            break;
        }
        settled = now;
    }
    assert!(quiet, "the controller keeps reconciling ({settled} so far)");
    assert!(settled <= 6, "{settled} reconciles for two generations");
    driver.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_applies_a_ca_bundle_into_a_kubectl_applied_webhook() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;

    let cluster = Cluster::start().await;
    let config = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: sluice}
webhooks:
- name: inject.sluice.dev
  clientConfig: {service: {name: sluice, namespace: sluice-system, path: /mutate}}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}]
  sideEffects: None
  admissionReviewVersions: [v1]
"#;
    cluster.apply(config, &[]).await;
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client().await);
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sluice"},
        "webhooks": [{"name": "inject.sluice.dev", "clientConfig": {"caBundle": "Q0E="}}],
    });
    let patched = api
        .patch(
            "sluice",
            &PatchParams::apply("sluice-operator"),
            &Patch::Apply(&patch),
        )
        .await
        .expect("apply caBundle");
    let webhook = &patched.webhooks.expect("webhooks")[0];
    assert_eq!(
        webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone()),
        Some(b"CA".to_vec())
    );
    assert!(
        webhook.client_config.service.is_some(),
        "the kubectl-applied fields stay"
    );
    assert_eq!(webhook.rules.as_ref().map(Vec::len), Some(1));
    // kubectl re-applying its file keeps the operator's caBundle.
    cluster.apply(config, &[]).await;
    let again = api.get("sluice").await.expect("get");
    assert!(
        again.webhooks.expect("webhooks")[0]
            .client_config
            .ca_bundle
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recorder_events_show_in_kubectl_describe() {
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let cluster = Cluster::start().await;
    let api = widgets(&cluster).await;
    let created = api
        .create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .expect("create");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let recorder = Recorder::new(
        cluster.client().await,
        Reporter {
            controller: "widget-controller".to_string(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "SoftLimit".to_string(),
        note: Some("80% of the budget is spent".to_string()),
        action: "Account".to_string(),
        secondary: None,
    };
    recorder
        .publish(&event, &created.object_ref(&resource))
        .await
        .expect("event published");
    let described = cluster.kubectl_ok(&["describe", "widget", "w"]).await;
    let events = described.split("Events:").nth(1).unwrap_or("");
    assert!(
        events.contains("Warning")
            && events.contains("SoftLimit")
            && events.contains("80% of the budget is spent"),
        "{described}"
    );
}
