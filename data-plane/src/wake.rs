//! Wake-ups a task gives itself while it is being polled, handled inside that poll.
//!
//! Tokio treats a task woken while it runs as one that yielded: it goes to the back of the run queue
//! and, when a worker is parked, that worker is woken to take it (a futex wake and a thread
//! switch). One call wakes its own task several times: reading the request's body signals hyper's
//! connection, which runs in the same task; an upstream connection this task drives hands the answer
//! to it. [`Inline`] polls the work again at once instead, and wakes the task only for what happens
//! between its polls.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Rounds one poll may take before it yields to other tasks after all.
const ROUNDS: usize = 32;

/// Polls work so that the wake-ups it gives itself during a poll are handled in that poll (see the
/// module's comment). One task polls it at a time.
pub struct Inline {
    shared: Arc<Shared>,
    /// The waker the work is polled with: `shared`'s.
    waker: Waker,
}

#[derive(Default)]
struct Shared {
    task: AtomicWaker,
    state: AtomicU8,
}

/// [`Shared::state`]: not being polled (wake-ups go to the task), being polled, being polled and
/// woken since the round began.
const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl Inline {
    pub fn new() -> Self {
        let shared = Arc::new(Shared::default());
        Inline { waker: Waker::from(shared.clone()), shared }
    }

    /// Polls `work` until it is ready or a round passes without it waking itself; what wakes it
    /// later wakes the task of `cx`. A wake-up during a round that ends ready is not passed on: the
    /// caller polls all of the work again before it waits on any of it.
    pub fn poll<T>(&mut self, cx: &mut Context<'_>, mut work: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let state = &self.shared.state;
        state.store(POLLING, Ordering::SeqCst);
        self.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            let polled = work(&mut inner);
            if polled.is_ready() {
                state.store(IDLE, Ordering::SeqCst);
                return polled;
            }
            // Fails only when a wake-up came during the round.
            if state.compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Poll::Pending;
            }
            // Woken: round again, unless tokio asks tasks to yield.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
            state.store(POLLING, Ordering::SeqCst);
        }
        // Still waking itself: yield to other tasks after all.
        state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forgets the task last registered, for work put aside (an idle connection must not wake the
    /// task that used it last).
    pub fn release(&self) {
        self.shared.task.take();
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked as woken while a round runs (which then goes round again); otherwise the task is
        // woken. One atomic step decides which, so no wake-up falls between the two.
        if let Err(IDLE) = self.state.compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// A future polled through an [`Inline`]: a task spawned as one is not rescheduled for the
/// wake-ups it gives itself.
pub struct Inlined<F> {
    future: Pin<Box<F>>,
    inline: Inline,
}

impl<F: Future> Inlined<F> {
    pub fn new(future: F) -> Self {
        Inlined { future: Box::pin(future), inline: Inline::new() }
    }
}

impl<F: Future> Future for Inlined<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let future = &mut this.future;
        this.inline.poll(cx, |inner| future.as_mut().poll(inner))
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
        let mut future = Inlined::new(std::future::poll_fn(move |cx| {
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
        let mut future = Inlined::new(std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<()> {
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
        let counted = Inlined::new(std::future::poll_fn(move |cx| {
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
