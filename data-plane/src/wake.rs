//! Wake-ups a task gives itself while it is being polled, handled inside that poll.
//!
//! Tokio treats a task woken while it runs as one that yielded: it goes to the back of the run queue
//! and, when a worker is parked, that worker is woken to take it (a futex wake and a thread
//! switch). One call wakes its own task several times: reading the request's body signals hyper's
//! connection, which runs in the same task; an upstream connection this task drives hands the answer
//! to it. [`Relay`] polls the work again at once instead, and wakes the task only for what happens
//! between its polls.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Rounds one poll may take before it yields to other tasks after all.
const ROUNDS: usize = 32;

/// The waker work is polled with (see the module's comment).
#[derive(Default)]
pub struct Relay {
    task: AtomicWaker,
    state: AtomicU8,
}

/// [`Relay::state`]: not being polled (wake-ups go to the task), being polled, being polled and
/// woken since the poll began.
const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl Relay {
    /// A relay and the waker to poll with through it.
    pub fn new() -> (Arc<Relay>, Waker) {
        let relay = Arc::new(Relay::default());
        let waker = Waker::from(relay.clone());
        (relay, waker)
    }

    /// Polls `work` with `waker` (this relay's) until it is ready or nothing woke it during the
    /// poll; what wakes it later wakes the task of `cx`.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        waker: &Waker,
        mut work: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.task.register(cx.waker());
        let mut inner = Context::from_waker(waker);
        for _ in 0..ROUNDS {
            self.state.store(POLLING, Ordering::SeqCst);
            let polled = work(&mut inner);
            // Fails only when a wake-up came during the poll: then the work goes round again.
            let quiet = self.state.compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if polled.is_ready() || quiet {
                self.state.store(IDLE, Ordering::SeqCst);
                return polled;
            }
        }
        self.state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forgets the task last registered, for work put aside (an idle connection must not wake the
    /// task that used it last).
    pub fn release(&self) {
        self.task.take();
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked as woken while a poll runs (which then goes round again); otherwise the task is
        // woken. One atomic step decides which, so no wake-up falls between the two.
        if let Err(IDLE) = self.state.compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// A future polled through a [`Relay`]: a task spawned as one does not reschedule itself for the
/// wake-ups it gives itself.
pub struct Relayed<F> {
    future: Pin<Box<F>>,
    relay: Arc<Relay>,
    waker: Waker,
}

impl<F: Future> Relayed<F> {
    pub fn new(future: F) -> Self {
        let (relay, waker) = Relay::new();
        Relayed { future: Box::pin(future), relay, waker }
    }
}

impl<F: Future> Future for Relayed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.relay.poll(cx, &this.waker, |inner| this.future.as_mut().poll(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Counts the wake-ups its task gets.
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wake_ups_during_a_poll_are_handled_in_it_and_later_ones_wake_the_task() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let task = Waker::from(counting.clone());
        let mut cx = Context::from_waker(&task);
        let kept = Arc::new(std::sync::Mutex::new(None::<Waker>));
        // Wakes itself twice, then waits for someone else.
        let mut polls = 0;
        let slot = kept.clone();
        let mut future = Relayed::new(std::future::poll_fn(move |cx| {
            polls += 1;
            match polls {
                1 | 2 => cx.waker().wake_by_ref(),
                3 => *slot.lock().unwrap() = Some(cx.waker().clone()),
                _ => return Poll::Ready(polls),
            }
            Poll::Pending
        }));
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert_eq!(counting.0.load(Ordering::SeqCst), 0, "three polls in one, the task not woken");
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!(counting.0.load(Ordering::SeqCst), 1, "woken from outside a poll");
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Ready(4));
    }

    #[test]
    fn work_that_keeps_waking_itself_yields_after_a_bound() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let task = Waker::from(counting.clone());
        let mut cx = Context::from_waker(&task);
        let mut future = Relayed::new(std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<()> {
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert_eq!(counting.0.load(Ordering::SeqCst), 1, "yielded once, to let other tasks run");
    }

    /// Wake-ups from another thread that race with the end of a poll are never lost: either the
    /// poll goes round again or the task is woken (a lost one would stall this test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_ups_racing_the_end_of_a_poll_are_not_lost() {
        let (to_waker, wakes) = std::sync::mpsc::channel::<(Waker, Arc<AtomicBool>)>();
        let waking = std::thread::spawn(move || {
            for (waker, ready) in wakes {
                ready.store(true, Ordering::SeqCst);
                waker.wake();
            }
        });
        let ready = Arc::new(AtomicBool::new(true));
        let mut rounds = 0;
        let counted = Relayed::new(std::future::poll_fn(move |cx| {
            if ready.swap(false, Ordering::SeqCst) {
                rounds += 1;
                if rounds == 100_000 {
                    return Poll::Ready(rounds);
                }
                let _ = to_waker.send((cx.waker().clone(), ready.clone()));
            }
            Poll::Pending
        }));
        let rounds = tokio::time::timeout(std::time::Duration::from_secs(30), counted).await;
        assert_eq!(rounds.expect("a wake-up was lost"), 100_000);
        waking.join().unwrap();
    }
}
