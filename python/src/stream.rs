//! A stream subscription: the Rust `Subscriber` (both bridges' copies
//! merged into one feed that survives a failover), read in batches.

use crate::convert::{client_error, delivery};
use crate::{deadline, slice};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use zbridge_client::{ClientConfig, Delivery, Subscriber};

/// Deliveries handed over at once, at most.
const BATCH: usize = 1024;

#[pyclass(frozen, module = "zbridge._zbridge")]
pub struct Subscription {
    /// `None` once closed.
    subscriber: Mutex<Option<Subscriber>>,
}

impl Subscription {
    pub fn connect(
        config: &ClientConfig,
        stream: Option<&str>,
        prefixes: &[Vec<u8>],
    ) -> PyResult<Subscription> {
        let subscriber = Subscriber::connect(config, stream, prefixes)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Subscription {
            subscriber: Mutex::new(Some(subscriber)),
        })
    }

    /// What is ready within `wait`: `None` once closed.
    fn batch(&self, wait: Duration) -> std::io::Result<Option<Vec<Delivery>>> {
        let mut guard = self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(subscriber) = guard.as_mut() else {
            return Ok(None);
        };
        let mut batch = Vec::new();
        if let Some(first) = subscriber.recv(wait)? {
            batch.push(first);
            while batch.len() < BATCH {
                match subscriber.recv(Duration::ZERO)? {
                    Some(next) => batch.push(next),
                    None => break,
                }
            }
        }
        Ok(Some(batch))
    }
}

#[pymethods]
impl Subscription {
    /// The deliveries (messages, gaps, moves) that come within `timeout`
    /// seconds (`None`: wait for one), in order: an empty list when none
    /// came, `None` once closed.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let deadline = deadline(timeout)?;
        if let Some(subscriber) = &*self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            subscriber.check().map_err(|e| client_error(py, &e))?;
        }
        loop {
            let wait = slice(deadline);
            let batch = py
                .detach(|| self.batch(wait))
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            let Some(batch) = batch else {
                return Ok(None);
            };
            if !batch.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                let items = batch
                    .iter()
                    .map(|d| delivery(py, d))
                    .collect::<PyResult<Vec<_>>>()?;
                return PyList::new(py, items).map(Some);
            }
            py.check_signals()?;
        }
    }

    /// Close the sockets; `recv` returns `None` from then on.
    fn close(&self, py: Python<'_>) {
        let subscriber = self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        py.detach(move || drop(subscriber));
    }
}
