//! A call in flight, waited for by threads (`result`), the GIL released.

use crate::convert::{client_error, error, frames_out};
use crate::{deadline, slice};
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;
use zbridge_client::{ClientError, Pending, Reply};

pub type Outcome = Result<Reply, ClientError>;

/// A call sent and not waited for yet: `result()` gives its reply frames
/// or raises its error. Any thread may wait for it.
#[pyclass(frozen, module = "zbridge._zbridge")]
pub struct Call {
    /// Until the result is in.
    pending: Mutex<Option<Pending>>,
    outcome: OnceLock<Outcome>,
}

impl Call {
    pub fn new(pending: Pending) -> Call {
        Call {
            pending: Mutex::new(Some(pending)),
            outcome: OnceLock::new(),
        }
    }

    /// The outcome, once it came (taking it if it has come by now).
    fn poll(&self, wait: std::time::Duration) -> Option<&Outcome> {
        if let Some(outcome) = self.outcome.get() {
            return Some(outcome);
        }
        // One waiter at a time; the others queue on the lock.
        let mut slot = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pending) = slot.take() {
            match pending.wait_timeout(wait) {
                Ok(outcome) => {
                    let _ = self.outcome.set(outcome);
                }
                Err(pending) => *slot = Some(pending),
            }
        }
        self.outcome.get()
    }

    fn reply(&self) -> Option<&Reply> {
        self.outcome.get()?.as_ref().ok()
    }

    /// The reply frames, waiting until `deadline` (that of `timeout`).
    pub fn wait(
        &self,
        py: Python<'_>,
        deadline: Option<Instant>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyList>> {
        let outcome = loop {
            let wait = slice(deadline);
            if let Some(outcome) = py.detach(|| self.poll(wait)) {
                break outcome;
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let message = format!(
                    "no result within the call's timeout of {:.3} s",
                    timeout.unwrap_or_default()
                );
                return Err(error(py, "Timeout", (message, None::<u32>)));
            }
        };
        match outcome {
            Ok(reply) => Ok(frames_out(py, &reply.frames)?.unbind()),
            Err(e) => Err(client_error(py, e)),
        }
    }
}

#[pymethods]
impl Call {
    /// The reply frames, waiting up to `timeout` seconds (`None`: until the
    /// client's own deadlines end the call). Past `timeout`, `Timeout` is
    /// raised and the call goes on: ask again for its result.
    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyList>> {
        self.wait(py, deadline(timeout)?, timeout)
    }

    /// Whether the result is in.
    fn done(&self) -> bool {
        self.poll(std::time::Duration::ZERO).is_some()
    }

    /// Sends it took (more than 1 after a failover); `None` until answered.
    #[getter]
    fn attempts(&self) -> Option<u32> {
        self.reply().map(|r| r.attempts)
    }

    /// The bridge that answered; `None` until answered.
    #[getter]
    fn endpoint(&self) -> Option<String> {
        self.reply().map(|r| r.endpoint.clone())
    }

    /// Seconds from the call to its answer; `None` until answered.
    #[getter]
    fn elapsed(&self) -> Option<f64> {
        self.reply().map(|r| r.elapsed.as_secs_f64())
    }
}
