//! A connection future that wakes itself while it is being polled is
//! polled again at once, on the same thread, instead of being handed back
//! to tokio.
//!
//! Why: the app-facing connection wakes itself on every request. hyper's
//! request body is a one-slot channel whose sender (the connection's
//! reader) and receiver (our handler, reading the body) live in the same
//! task, so taking the body out of the slot wakes the connection; so does
//! a stream's response channel, fed and drained by the same connection
//! (`body::driven`). tokio's multi-thread scheduler treats a task woken
//! during its own poll as a yield: it goes to the back of the run queue
//! and a parked worker is woken to steal it. That cost a futex wake, a
//! second thread waking up and the request moving between cores, on every
//! request (`strace -f`: 2 futex calls a request, 0 for the bare proxy,
//! whose request bodies are read by another task). Polling again right
//! away is what the yield would have led to, without the hand-off.
//!
//! At most [`MAX_REPOLLS`] times in a row: a future that keeps waking
//! itself (hyper yielding after a burst of pipelined requests, tokio's
//! cooperative budget spent) is then handed back to tokio as before, so
//! fairness between connections is kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Immediate re-polls after self-wakes before yielding to tokio. A request
/// body's slot wakes the connection twice (its data, its end), a stream's
/// first frames once more.
pub const MAX_REPOLLS: u32 = 4;

/// Not being polled.
const IDLE: u8 = 0;
/// Inside the inner poll, not woken yet.
const POLLING: u8 = 1;
/// Inside the inner poll, and woken meanwhile.
const WOKEN: u8 = 2;

/// See the module documentation.
pub struct Repoll<F> {
    inner: Pin<Box<F>>,
    wake: Arc<Absorb>,
    /// `wake` as a waker, built once.
    waker: Waker,
}

impl<F: Future> Repoll<F> {
    pub fn new(inner: F) -> Self {
        let wake = Arc::new(Absorb {
            state: AtomicU8::new(IDLE),
            outer: Mutex::new(None),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

/// The inner future's waker: a wake during the inner poll is noted (and
/// answered by polling again); any other wake goes to the task's waker.
struct Absorb {
    state: AtomicU8,
    /// The task's waker, from its latest poll.
    outer: Mutex<Option<Waker>>,
}

impl Absorb {
    fn outer(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        match self.outer.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Wake for Absorb {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During the inner poll (on its own thread or from another one)
        // the poll loop sees WOKEN when the inner poll returns. Otherwise
        // the task is woken as usual.
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                if let Some(w) = self.outer().as_ref() {
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut outer = this.wake.outer();
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=MAX_REPOLLS {
            this.wake.state.store(POLLING, Ordering::Release);
            let poll = this.inner.as_mut().poll(&mut inner_cx);
            // A wake racing with this swap either saw POLLING (and is seen
            // here as WOKEN) or sees IDLE and wakes the task: none is lost.
            let woken = this.wake.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if poll.is_ready() {
                return poll;
            }
            if !woken {
                return Poll::Pending;
            }
        }
        // Still waking itself: let tokio schedule the others first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Wakes itself `n` times, then is ready; counts its polls.
    struct SelfWaking {
        left: u32,
        polls: Arc<AtomicU32>,
    }

    impl Future for SelfWaking {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.left == 0 {
                return Poll::Ready(());
            }
            self.left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Counts the wakes of the outer task.
    struct Count(AtomicU32);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls a future that wakes itself `left` times, once: whether it
    /// finished, how often it was polled, how often the task was woken.
    fn poll_self_waking(left: u32) -> (bool, u32, u32) {
        let polls = Arc::new(AtomicU32::new(0));
        let wakes = Arc::new(Count(AtomicU32::new(0)));
        let mut f = Repoll::new(SelfWaking {
            left,
            polls: polls.clone(),
        });
        let waker = Waker::from(wakes.clone());
        let ready = Pin::new(&mut f)
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        (
            ready,
            polls.load(Ordering::SeqCst),
            wakes.0.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn a_self_wake_is_answered_by_polling_again_without_waking_the_task() {
        assert_eq!(poll_self_waking(2), (true, 3, 0));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_is_handed_back_to_the_scheduler() {
        assert_eq!(poll_self_waking(100), (false, MAX_REPOLLS + 1, 1));
    }

    #[tokio::test]
    async fn a_wake_from_elsewhere_after_the_poll_wakes_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let task = tokio::spawn(Repoll::new(rx));
        tokio::task::yield_now().await;
        tx.send(7).expect("receiver alive");
        assert_eq!(task.await.expect("joined"), Ok(7));
    }
}
