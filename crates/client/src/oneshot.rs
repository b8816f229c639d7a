//! Where a call's one result goes: filled once by the I/O thread, taken
//! once by the caller, who either blocks for it ([`Pending::wait`]) or
//! awaits it ([`Pending`] is a `Future`, for any executor).

use crate::{ClientError, Reply};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use zbridge_protocol::time::later;

type Outcome = Result<Reply, ClientError>;

/// A new call's two ends.
pub(crate) fn oneshot() -> (Completer, Pending) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::default()),
        filled: Condvar::new(),
    });
    (
        Completer {
            slot: Some(Arc::clone(&slot)),
        },
        Pending { slot },
    )
}

struct Slot {
    state: Mutex<State>,
    filled: Condvar,
}

#[derive(Default)]
struct State {
    result: Option<Outcome>,
    /// A thread waits on `filled`: only then is a notification needed.
    blocked: bool,
    /// A task awaits the result.
    waker: Option<Waker>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing a panicking holder could leave half-done: the state is
        // whole after every statement.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The I/O thread's end. Dropped without a result (the client stopped),
/// it completes the call with [`ClientError::Closed`].
pub(crate) struct Completer {
    slot: Option<Arc<Slot>>,
}

impl Completer {
    pub fn complete(mut self, outcome: Outcome) {
        self.fill(outcome);
    }

    fn fill(&mut self, outcome: Outcome) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let (blocked, waker) = {
            let mut state = slot.lock();
            state.result = Some(outcome);
            (state.blocked, state.waker.take())
        };
        if blocked {
            slot.filled.notify_one();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.fill(Err(ClientError::Closed));
    }
}

/// A call in flight. [`Pending::wait`] blocks for its one result; or
/// `.await` it: the client's I/O thread wakes the task.
pub struct Pending {
    slot: Arc<Slot>,
}

impl Pending {
    pub fn wait(self) -> Outcome {
        let mut state = self.slot.lock();
        loop {
            if let Some(outcome) = state.result.take() {
                return outcome;
            }
            state.blocked = true;
            state = self
                .slot
                .filled
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The result if it came within `timeout`, else the call back.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Outcome, Pending> {
        let deadline = later(Instant::now(), timeout);
        let mut state = self.slot.lock();
        loop {
            if let Some(outcome) = state.result.take() {
                return Ok(outcome);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.blocked = false;
                drop(state);
                return Err(self);
            }
            state.blocked = true;
            state = self
                .slot
                .filled
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self.slot.lock();
        match state.result.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn reply(tag: &str) -> Outcome {
        Ok(Reply {
            frames: vec![tag.as_bytes().to_vec()],
            endpoint: "tcp://127.0.0.1:5600".into(),
            attempts: 1,
            elapsed: Duration::ZERO,
        })
    }

    #[test]
    fn a_blocked_waiter_gets_the_result_filled_from_another_thread() {
        let (done, pending) = oneshot();
        let filler = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            done.complete(reply("late"));
        });
        assert_eq!(pending.wait(), reply("late"));
        filler.join().unwrap();
    }

    #[test]
    fn wait_timeout_hands_the_call_back_and_the_result_still_comes() {
        let (done, pending) = oneshot();
        let pending = match pending.wait_timeout(Duration::from_millis(5)) {
            Err(pending) => pending,
            Ok(outcome) => panic!("a result nobody sent: {outcome:?}"),
        };
        done.complete(reply("now"));
        assert!(matches!(pending.wait_timeout(Duration::ZERO), Ok(r) if r == reply("now")));
    }

    #[test]
    fn a_completer_dropped_without_a_result_closes_the_call() {
        let (done, pending) = oneshot();
        drop(done);
        assert_eq!(pending.wait(), Err(ClientError::Closed));
    }

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_awaiting_task_is_woken_once_by_the_result() {
        let (done, mut pending) = oneshot();
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut pending).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut pending).poll(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        done.complete(reply("async"));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            Pin::new(&mut pending).poll(&mut cx),
            Poll::Ready(reply("async"))
        );
    }
}
