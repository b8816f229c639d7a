//! Calls awaited from asyncio without a thread per call.
//!
//! A `Pending` is a Rust `Future`; its waker runs on the client's I/O
//! thread when the result comes. Here that waker only records the call's
//! token in a queue and, when the queue was empty, writes one byte to a
//! socket pair (the doorbell) whose read end the event loop watches
//! (`loop.add_reader`). The loop then empties the pipe and calls
//! [`Driver::drain`], which completes the asyncio futures of every call in
//! the queue, on the loop's thread. The I/O thread never takes the GIL,
//! and one wake-up serves a whole batch.
//!
//! Lifetime: the read end is handed to Python, which owns it (the loop's
//! watch holds it, and the driver only weakly), so that the driver and the
//! client it holds are freed with the `Client` that holds them. The write
//! end closes with the driver: the loop then reads end-of-file, stops
//! watching and closes its end, so no descriptor outlives the driver and
//! none is closed while the loop still watches its number.

use crate::convert::{client_error, frames_out};
use crate::Core;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use zbridge_client::{rules, Pending};

/// The completion hook of one event loop.
#[pyclass(frozen, weakref, module = "zbridge._zbridge")]
pub struct Driver {
    core: Py<Core>,
    ready: Arc<Ready>,
    /// Calls sent and not completed: their result and their asyncio future.
    calls: Mutex<Calls>,
}

#[derive(Default)]
struct Calls {
    next: u64,
    waiting: HashMap<u64, (Pending, Py<PyAny>)>,
}

/// Tokens of completed calls, and the loop's doorbell.
struct Ready {
    tokens: Mutex<Vec<u64>>,
    write: UnixStream,
}

impl Ready {
    fn push(&self, token: u64) {
        let first = {
            let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            tokens.push(token);
            tokens.len() == 1
        };
        // The loop drains the pipe before it takes the tokens: a token
        // pushed after that finds the queue empty and rings again. A full
        // pipe already holds a wake-up.
        if first {
            let _ = (&self.write).write(&[1]);
        }
    }
}

struct CallWaker {
    token: u64,
    ready: Arc<Ready>,
}

impl Wake for CallWaker {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.token);
    }
}

impl Driver {
    /// A driver and its doorbell's read end, which the caller owns.
    pub fn new(core: Py<Core>) -> PyResult<(Driver, i32)> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let driver = Driver {
            core,
            ready: Arc::new(Ready {
                tokens: Mutex::new(Vec::new()),
                write,
            }),
            calls: Mutex::new(Calls::default()),
        };
        Ok((driver, read.into_raw_fd()))
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Complete `future` if the result is in, else keep the call until its
    /// waker names it. Polled under the lock that `drain` takes, so a
    /// result that comes meanwhile finds the call kept.
    fn follow(
        &self,
        py: Python<'_>,
        token: u64,
        mut pending: Pending,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let waker = Waker::from(Arc::new(CallWaker {
            token,
            ready: Arc::clone(&self.ready),
        }));
        let mut calls = self.calls();
        match Pin::new(&mut pending).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(outcome) => {
                drop(calls);
                complete(py, future.bind(py), outcome)
            }
            Poll::Pending => {
                calls.waiting.insert(token, (pending, future));
                Ok(())
            }
        }
    }
}

#[pymethods]
impl Driver {
    /// Send a call whose result completes `future` (`target` `None`: the
    /// JSON path); the seconds `timeout` allows for it, to set a timer
    /// (`None`: no bound). A bad `timeout` is refused before anything is
    /// sent, by the rule of every wait.
    #[pyo3(signature = (future, target, frames, timeout=None))]
    fn submit(
        &self,
        py: Python<'_>,
        future: Bound<'_, PyAny>,
        target: Option<&str>,
        frames: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
    ) -> PyResult<Option<f64>> {
        let wait = rules::wait(timeout).map_err(PyValueError::new_err)?;
        let pending = self.core.get().pending(py, target, frames)?;
        let token = {
            let mut calls = self.calls();
            calls.next += 1;
            calls.next
        };
        self.follow(py, token, pending, future.unbind())?;
        Ok(wait.map(|d| d.as_secs_f64()))
    }

    /// Complete the futures of the calls whose results came (the caller
    /// has emptied the doorbell first: a result that comes after that
    /// rings it again).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let tokens = std::mem::take(
            &mut *self
                .ready
                .tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // Every call is completed even if one future refuses its result.
        let mut first_error = None;
        for token in tokens {
            let waiting = self.calls().waiting.remove(&token);
            if let Some((pending, future)) = waiting {
                if let Err(e) = self.follow(py, token, pending, future) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Set `future`'s result or exception, unless it was cancelled.
fn complete(
    py: Python<'_>,
    future: &Bound<'_, PyAny>,
    outcome: crate::call::Outcome,
) -> PyResult<()> {
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match outcome {
        Ok(reply) => {
            future.call_method1(intern!(py, "set_result"), (frames_out(py, &reply.frames)?,))?
        }
        Err(e) => future.call_method1(
            intern!(py, "set_exception"),
            (client_error(py, &e).into_value(py),),
        )?,
    };
    Ok(())
}
