//! A stand-in for a Kubernetes Service on one host: a loopback TCP port
//! that forwards each connection to one of the operator replicas, round
//! robin, skipping replicas that refuse connections (kube-proxy stops
//! sending to a pod whose readiness probe fails; the chart probes the
//! metrics port, which both replicas answer, so the standby gets
//! connections too and answers `503 not_leader` on the distribution port).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Endpoints: (replica name, address).
type Endpoints = Arc<Mutex<Vec<(String, SocketAddr)>>>;

pub struct Service {
    pub addr: SocketAddr,
    endpoints: Endpoints,
    task: JoinHandle<()>,
}

impl Service {
    pub async fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the service port");
        let addr = listener.local_addr().expect("service address");
        let endpoints: Endpoints = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let eps = endpoints.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let eps = eps.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let candidates: Vec<SocketAddr> = {
                        let list = eps.lock().expect("endpoints lock");
                        let start = next.fetch_add(1, Ordering::Relaxed);
                        (0..list.len())
                            .map(|i| list[(start + i) % list.len()].1)
                            .collect()
                    };
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
            task,
        }
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

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}
