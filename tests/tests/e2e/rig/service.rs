//! A stand-in for a Kubernetes Service on one host: a loopback TCP port
//! that forwards each connection to one of the operator replicas, round
//! robin, skipping replicas that refuse connections.
//!
//! Like kube-proxy it sends only to pods the Service's selector matches:
//! [`Service::select`] polls the Service object and its pods in the API
//! (the chart's distribution Service selects the pod the leader labels
//! `sluice.dev/leader=true`, so which replica gets sidecars is decided by
//! the operator, as in a cluster). A replica enters the endpoints when the
//! rig has seen its readiness probe pass ([`Service::set`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service as ServiceObject};
use kube::api::{Api, ListParams};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Endpoints: (replica name, address).
type Endpoints = Arc<Mutex<Vec<(String, SocketAddr)>>>;
/// The pods the selector matches; `None` until a selector is known (or
/// when the Service is not selector-driven): every endpoint is used.
type Selected = Arc<Mutex<Option<BTreeSet<String>>>>;

pub struct Service {
    pub addr: SocketAddr,
    endpoints: Endpoints,
    selected: Selected,
    task: JoinHandle<()>,
    poll: Option<JoinHandle<()>>,
}

impl Service {
    pub async fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the service port");
        let addr = listener.local_addr().expect("service address");
        let endpoints: Endpoints = Arc::default();
        let selected: Selected = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let (eps, sel) = (endpoints.clone(), selected.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let candidates: Vec<SocketAddr> = {
                    let list = eps.lock().expect("endpoints lock");
                    let chosen = sel.lock().expect("selection lock");
                    let ready: Vec<SocketAddr> = list
                        .iter()
                        .filter(|(name, _)| chosen.as_ref().is_none_or(|s| s.contains(name)))
                        .map(|(_, a)| *a)
                        .collect();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    (0..ready.len())
                        .map(|i| ready[(start + i) % ready.len()])
                        .collect()
                };
                tokio::spawn(async move {
                    for target in candidates {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // No endpoint: the connection is closed, as a Service
                    // without ready endpoints refuses it.
                });
            }
        });
        Service {
            addr,
            endpoints,
            selected,
            task,
            poll: None,
        }
    }

    /// From now on, sends only to pods that the Service object `name` in
    /// `ns` selects, as read from the API every 100 ms.
    pub fn select(&mut self, client: kube::Client, ns: &str, name: &str) {
        let services: Api<ServiceObject> = Api::namespaced(client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let (name, selected) = (name.to_owned(), self.selected.clone());
        self.poll = Some(tokio::spawn(async move {
            loop {
                if let Some(matched) = selected_pods(&services, &pods, &name).await {
                    *selected.lock().expect("selection lock") = Some(matched);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    /// Adds or replaces a replica's endpoint.
    pub fn set(&self, name: &str, addr: SocketAddr) {
        let mut list = self.endpoints.lock().expect("endpoints lock");
        list.retain(|(n, _)| n != name);
        list.push((name.to_owned(), addr));
    }

    /// Removes a replica's endpoint.
    pub fn remove(&self, name: &str) {
        self.endpoints
            .lock()
            .expect("endpoints lock")
            .retain(|(n, _)| n != name);
    }
}

/// The names of the pods the Service's selector matches; `None` when the
/// API cannot be read (the last answer stands, as kube-proxy keeps its
/// rules while the API server is away).
async fn selected_pods(
    services: &Api<ServiceObject>,
    pods: &Api<Pod>,
    name: &str,
) -> Option<BTreeSet<String>> {
    let service = services.get_opt(name).await.ok()??;
    let selector = service.spec?.selector.unwrap_or_default();
    if selector.is_empty() {
        // A Service without a selector has no endpoints from pods.
        return Some(BTreeSet::new());
    }
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods
        .list(&ListParams::default().labels(&labels))
        .await
        .ok()?;
    Some(list.into_iter().filter_map(|p| p.metadata.name).collect())
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(p) = &self.poll {
            p.abort();
        }
    }
}
