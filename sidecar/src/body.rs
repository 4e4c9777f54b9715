//! Response bodies the server writes: a whole buffer, or a channel the
//! streaming task feeds frame by frame (never buffered whole). When the
//! client goes away hyper drops the body, the receiver with it, and the
//! streaming task sees its next send fail: that is how a disconnect cancels
//! the upstream call.
//!
//! [`driven`] is the channel without the task: the future that feeds it is
//! polled by the body itself, on the connection's own task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use tokio::sync::mpsc;

/// The body type of every response.
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A body fed by a channel; dropping the sender ends it.
pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// The feeding future of a [`driven`] body.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A body fed by the future `make` builds around the channel's sender,
/// which the body polls itself whenever hyper asks it for a frame, instead
/// of a spawned task. Why: with a task, hyper found the body empty when it
/// wrote the response head, sent the head on its own, and only wrote the
/// first frames after the task ran and woke it (one more wake-up and one
/// more write before the client's first byte, and a task hop per chunk
/// after that). Polled here, what the future can produce at once goes out
/// with the head. Dropping the body (the client went away) drops the
/// future, which is how a disconnect cancels the upstream call.
pub fn driven<F, Fut>(capacity: usize, make: F) -> Body
where
    F: FnOnce(mpsc::Sender<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    DrivenBody {
        rx,
        // A Mutex only to make the body `Sync` as `BoxBody` wants; it is
        // reached through `get_mut`, never locked.
        driver: Mutex::new(Some(Box::pin(make(tx)))),
    }
    .boxed()
}

struct DrivenBody {
    rx: mpsc::Receiver<Bytes>,
    driver: Mutex<Option<Driver>>,
}

impl http_body::Body for DrivenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let driver = match this.driver.get_mut() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The driver first, so that whatever it can send now is read below.
        // A driver waiting for room in the channel is woken (through this
        // same task) when the receive below makes room.
        if let Some(f) = driver
            && f.as_mut().poll(cx).is_ready()
        {
            *driver = None;
        }
        this.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_driven_body_yields_what_its_future_sends_then_ends() {
        let body = driven(2, |tx| async move {
            for i in 0..5u8 {
                if tx.send(Bytes::from(vec![i])).await.is_err() {
                    return;
                }
            }
        });
        let bytes = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&bytes[..], &[0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn dropping_a_driven_body_drops_its_future() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let mut body = driven(1, move |tx| async move {
            let _flag = flag;
            let _ = tx.send(Bytes::from_static(b"first")).await;
            std::future::pending::<()>().await;
        });
        let first = body.frame().await.expect("a frame").expect("infallible");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"first")
        );
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        drop(body);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
