//! Response bodies: whole, or fed frame by frame by a pacing task that
//! applies chunk delays and ends the body completely, by aborting the
//! connection (a cut), or by stalling until the client gives up.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::behaviour::Behaviour;
use super::render::Rendered;
use super::server::Shared;

/// How a response body ends after its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Complete,
    Abort,
    Stall,
}

pub(crate) fn into_response(r: Rendered) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::Full(Some(r.body())));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    resp
}

pub(crate) fn respond(r: Rendered, end: End, b: &Behaviour, guard: InFlight) -> Response<MockBody> {
    let paced = !b.first_chunk_delay.is_zero() || !b.chunk_delay.is_zero();
    if end == End::Complete && !paced && !r.streaming {
        guard.settle();
        return into_response(r);
    }
    let (tx, rx) = mpsc::channel(1);
    let mut resp = Response::new(MockBody::Channel(rx));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    let (first, each) = (b.first_chunk_delay, b.chunk_delay);
    tokio::spawn(pace(r.frames, end, first, each, tx, guard));
    resp
}

async fn pace(
    frames: Vec<Bytes>,
    end: End,
    first: Duration,
    each: Duration,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    guard: InFlight,
) {
    let mut shutdown = guard.shared.shutdown.clone();
    for (i, frame) in frames.into_iter().enumerate() {
        let delay = if i == 0 { first } else { each };
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // The client left: `guard` drops unsettled and counts it.
                _ = tx.closed() => return,
                _ = shutdown.changed() => return guard.settle(),
            }
        }
        if tx.send(Ok(frame)).await.is_err() {
            return;
        }
    }
    match end {
        End::Complete => {}
        End::Abort => {
            let _ = tx
                .send(Err(std::io::Error::other("mock cut the stream (scripted)")))
                .await;
        }
        End::Stall => tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.changed() => {}
        },
    }
    guard.settle();
}

/// Counts a model call as in flight until its response is done. Dropped
/// without [`InFlight::settle`] — hyper dropped the request or the body
/// because the client left — it counts an abandoned response.
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    settled: bool,
}

impl InFlight {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            shared,
            settled: false,
        }
    }

    /// The response ended as the mock meant it to (or the mock shut down).
    pub(crate) fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.settled {
            self.shared.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A response body: whole, or fed frame by frame from a pacing task.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Channel(_) => SizeHint::default(),
        }
    }
}
