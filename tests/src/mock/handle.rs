//! The handle a test holds on a running mock: its address, the run-time
//! script, and what the mock received and answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ProviderKind;
use super::behaviour::Behaviour;
use super::record::RecordedRequest;
use super::server::Shared;

/// A running mock. Dropping it stops the server and every open connection.
pub struct MockHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The CA (PEM, DER) of a TLS mock.
    pub(crate) ca: Option<(String, CertificateDer<'static>)>,
}

impl MockHandle {
    /// Which provider this mock speaks.
    pub fn kind(&self) -> ProviderKind {
        self.shared.kind
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` for a TLS mock), no trailing
    /// slash.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A TLS mock's CA certificate in PEM, for the client's extra-CA option.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(pem, _)| pem.as_str())
    }

    /// A TLS mock's CA certificate in DER.
    pub fn ca_der(&self) -> Option<&CertificateDer<'static>> {
        self.ca.as_ref().map(|(_, der)| der)
    }

    /// Queue `behaviour` for the next `times` model calls (after anything
    /// already queued). Auth failures, unknown paths and model listings do
    /// not consume steps.
    pub fn enqueue(&self, times: usize, behaviour: impl Into<Behaviour>) {
        self.shared.push_script(None, times, behaviour.into());
    }

    /// Queue `behaviour` for the next `times` calls to `model` only; they
    /// come before the shared queue.
    pub fn enqueue_for(&self, model: &str, times: usize, behaviour: impl Into<Behaviour>) {
        self.shared
            .push_script(Some(model), times, behaviour.into());
    }

    /// What calls to `model` get once its queue and the shared queue are
    /// empty (instead of the shared default).
    pub fn set_default_for(&self, model: &str, behaviour: impl Into<Behaviour>) {
        self.shared.set_default(Some(model), behaviour.into());
    }

    /// What every model call gets once the queue is empty.
    pub fn set_default(&self, behaviour: impl Into<Behaviour>) {
        self.shared.set_default(None, behaviour.into());
    }

    /// Drop queued steps (the default stays).
    pub fn clear_script(&self) {
        self.shared.state().script.clear();
    }

    /// Queued steps not yet consumed.
    pub fn pending_steps(&self) -> usize {
        self.shared.state().script.pending()
    }

    /// The requests received so far, in order (the most recent
    /// `MockConfig::keep_requests` of them).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// How many requests were received since the last clear, including any
    /// no longer kept (control API calls excluded).
    pub fn request_count(&self) -> usize {
        self.shared.state().received
    }

    /// How many of the kept requests were received on `path`.
    pub fn count_path(&self, path: &str) -> usize {
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// How many of the kept requests were answered with `status`.
    pub fn count_status(&self, status: u16) -> usize {
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.status == Some(status))
            .count()
    }

    /// Forget recorded requests.
    pub fn clear_requests(&self) {
        let mut st = self.shared.state();
        st.requests.clear();
        st.received = 0;
    }

    /// Model calls whose response is still being produced.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Connections the mock accepted: how a test sees whether a client
    /// reuses its connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Model calls the client abandoned before the mock finished answering:
    /// it closed the connection or reset the stream while the mock waited
    /// (latency, hang) or was sending the body (paced, stalled, streamed).
    pub fn aborted_responses(&self) -> usize {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` requests arrived, or `timeout` passed; returns
    /// whether they did.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.request_count() >= n;
            }
        }
    }

    /// Wait until `aborted_responses()` reaches `n`, or `timeout` passed.
    pub async fn wait_for_aborts(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.aborted_responses() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stop serving and close every connection (also done on drop).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
