//! Calls awaited from asyncio without a thread per call.
//!
//! A `Pending` is a Rust `Future`; its waker runs on the client's I/O
//! thread when the result comes. Here that waker only records the call's
//! token in a queue and, when the queue was empty, writes one byte to a
//! socket pair whose read end the event loop watches (`loop.add_reader`).
//! The loop then calls [`Driver::drain`], which completes the asyncio
//! futures of every call in the queue, on the loop's thread. The I/O
//! thread never takes the GIL, and one wake-up serves a whole batch.

use crate::convert::{client_error, frames_out};
use crate::Core;
use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use zbridge_client::Pending;

/// The completion hook of one event loop.
#[pyclass(frozen, module = "zbridge._zbridge")]
pub struct Driver {
    core: Py<Core>,
    ready: Arc<Ready>,
    read: UnixStream,
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
    pub fn new(core: Py<Core>) -> PyResult<Driver> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        Ok(Driver {
            core,
            ready: Arc::new(Ready {
                tokens: Mutex::new(Vec::new()),
                write,
            }),
            read,
            calls: Mutex::new(Calls::default()),
        })
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
    /// The descriptor the event loop watches.
    fn fileno(&self) -> i32 {
        self.read.as_raw_fd()
    }

    /// Send a call whose result completes `future` (`target` `None`: the
    /// JSON path).
    fn submit(
        &self,
        py: Python<'_>,
        future: Bound<'_, PyAny>,
        target: Option<&str>,
        frames: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let pending = self.core.get().pending(py, target, frames)?;
        let token = {
            let mut calls = self.calls();
            calls.next += 1;
            calls.next
        };
        self.follow(py, token, pending, future.unbind())
    }

    /// Complete the futures of the calls whose results came.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut sink = [0u8; 256];
        loop {
            match (&self.read).read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PyOSError::new_err(e.to_string())),
            }
        }
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
