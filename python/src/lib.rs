//! `zbridge._zbridge`: the native half of the `zbridge` Python package.
//!
//! A thin layer over `zbridge-client`: it converts Python values to the
//! client's types and back, and waits without the GIL. Failover, retries,
//! breakers and the stream merge are the Rust crate's; nothing here
//! decides anything. The Python half (`python/zbridge/`) holds the public
//! classes: `Client` around [`Core`], the asyncio glue, the exception and
//! event types that [`convert`] builds.
//!
//! Waiting: every blocking wait (a call's result, an event, a stream
//! message) releases the GIL and wakes every 100 ms to let Python handle a
//! signal (Ctrl-C), so a caller is never stuck in Rust.
#![forbid(unsafe_code)]

mod aio;
mod call;
mod convert;
mod stream;

use call::Call;
use convert::{client_error, config_error, error};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};
use zbridge_client::{rules, Client, ClientConfig, Pending};

/// How long a blocking wait runs without the GIL before it checks for a
/// signal.
const SLICE: Duration = Duration::from_millis(100);

/// One client: the Rust `Client` (a handle to its I/O thread) and its
/// settings, for subscriptions.
#[pyclass(frozen, module = "zbridge._zbridge")]
pub struct Core {
    /// `None` once closed.
    client: RwLock<Option<Client>>,
    config: ClientConfig,
}

#[pymethods]
impl Core {
    /// A client configured by `settings`, the `[client]` keys of a bridge
    /// config file, and the bridges' shared `auth_token`.
    #[new]
    #[pyo3(signature = (settings, auth_token=None))]
    fn new(
        py: Python<'_>,
        settings: &Bound<'_, PyDict>,
        auth_token: Option<String>,
    ) -> PyResult<Core> {
        let mut section = toml::Table::new();
        for (key, value) in settings.iter() {
            section.insert(key.extract()?, toml_value(&value)?);
        }
        let mut doc = toml::Table::new();
        if let Some(token) = auth_token {
            doc.insert("auth_token".into(), toml::Value::String(token));
        }
        doc.insert("client".into(), toml::Value::Table(section));
        // The same reading as a file's: one set of defaults and checks.
        let text = toml::to_string(&doc).map_err(|e| PyTypeError::new_err(e.to_string()))?;
        let config = ClientConfig::from_toml_str(&text).map_err(|e| config_error(py, &e))?;
        Core::start(py, config)
    }

    /// A client configured by a bridge config file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Core> {
        let config = ClientConfig::from_file(&path).map_err(|e| config_error(py, &e))?;
        Core::start(py, config)
    }

    /// Send a call and return it at once (`target` `None`: the JSON path,
    /// one frame that names its own target).
    fn send(
        &self,
        py: Python<'_>,
        target: Option<&str>,
        frames: &Bound<'_, PyTuple>,
    ) -> PyResult<Call> {
        Ok(Call::new(self.pending(py, target, frames)?))
    }

    /// Send a call and wait for its result: the reply frames.
    #[pyo3(signature = (target, frames, timeout=None))]
    fn request(
        &self,
        py: Python<'_>,
        target: Option<&str>,
        frames: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyList>> {
        // Checked before anything is sent.
        let deadline = deadline(timeout)?;
        Call::new(self.pending(py, target, frames)?).wait(py, deadline, timeout)
    }

    /// A feed of the client's events from now on.
    fn events(&self, py: Python<'_>) -> PyResult<Events> {
        let rx = self.with_client(py, Client::events)?;
        Ok(Events {
            rx: std::sync::Mutex::new(rx),
        })
    }

    /// A subscription to `stream` (`None`: every stream) under `prefixes`
    /// on the bridges' pub ports.
    fn subscribe(
        &self,
        py: Python<'_>,
        stream: Option<&str>,
        prefixes: Vec<Vec<u8>>,
    ) -> PyResult<stream::Subscription> {
        self.with_client(py, |_| ())?;
        stream::Subscription::connect(&self.config, stream, &prefixes)
    }

    /// The asyncio completion hook of one event loop, and the read end of
    /// its doorbell (a descriptor the caller owns from now on).
    fn driver(slf: &Bound<'_, Core>) -> PyResult<(aio::Driver, i32)> {
        slf.get().with_client(slf.py(), |_| ())?;
        aio::Driver::new(slf.clone().unbind())
    }

    /// Stop the I/O thread; calls still waiting get `Closed`.
    fn close(&self, py: Python<'_>) {
        let client = self
            .client
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Joins the I/O thread, which never needs the GIL.
        py.detach(move || drop(client));
    }

    #[getter]
    fn closed(&self) -> bool {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// The effective settings (the auth token left out).
    #[getter]
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.config;
        let d = PyDict::new(py);
        d.set_item("endpoints", &c.endpoints)?;
        d.set_item("heartbeat_endpoints", &c.heartbeat_endpoints)?;
        d.set_item("pub_endpoints", &c.pub_endpoints)?;
        d.set_item("request_timeout", c.request_timeout.as_secs_f64())?;
        d.set_item("max_reconnect_attempts", c.max_reconnect_attempts)?;
        d.set_item("reconnect_delay", c.reconnect_delay.as_secs_f64())?;
        d.set_item("hold_down", c.hold_down.as_secs_f64())?;
        d.set_item("heartbeat_timeout", c.heartbeat_timeout.as_secs_f64())?;
        d.set_item("breaker_failure_rate", c.breaker.failure_rate)?;
        d.set_item("breaker_window", c.breaker.window)?;
        d.set_item("breaker_min_calls", c.breaker.min_calls)?;
        d.set_item("breaker_open_wait", c.breaker.open_wait.as_secs_f64())?;
        d.set_item("breaker_half_open_probes", c.breaker.half_open_probes)?;
        d.set_item("max_transport_bytes", c.max_transport_bytes)?;
        d.set_item("auth_token_set", c.auth_token.is_some())?;
        Ok(d)
    }
}

impl Core {
    fn start(py: Python<'_>, config: ClientConfig) -> PyResult<Core> {
        let client = Client::connect(config.clone())
            .map_err(|e| error(py, "Error", (format!("cannot start the client: {e}"),)))?;
        Ok(Core {
            client: RwLock::new(Some(client)),
            config,
        })
    }

    /// `f` of the client, if it is open and usable in this process.
    fn with_client<T>(&self, py: Python<'_>, f: impl FnOnce(&Client) -> T) -> PyResult<T> {
        match &*self.client.read().unwrap_or_else(PoisonError::into_inner) {
            Some(client) => match client.check() {
                Ok(()) => Ok(f(client)),
                Err(e) => Err(client_error(py, &e)),
            },
            None => Err(error(
                py,
                "Closed",
                ("the client is closed: create a new one for more calls, events or subscriptions",),
            )),
        }
    }

    /// Hand a call to the I/O thread.
    fn pending(
        &self,
        py: Python<'_>,
        target: Option<&str>,
        frames: &Bound<'_, PyTuple>,
    ) -> PyResult<Pending> {
        let mut frames = convert::frames_in(frames)?;
        match target {
            Some(target) => self.with_client(py, |c| c.send(target, frames)),
            None if frames.len() == 1 => {
                let body = frames.pop().unwrap_or_default();
                self.with_client(py, |c| c.send_json(body))
            }
            None => Err(PyTypeError::new_err(
                "a JSON request is one frame: a JSON object with its \"target\"",
            )),
        }
    }
}

/// The client's events, in order, from when `events()` was called.
#[pyclass(frozen, module = "zbridge._zbridge")]
struct Events {
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<zbridge_client::Event>>,
}

#[pymethods]
impl Events {
    /// The next event within `timeout` seconds (`None`: wait for one);
    /// `None` when none came; `StopIteration` once the client is closed.
    #[pyo3(signature = (timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = deadline(timeout)?;
        loop {
            let wait = slice(deadline);
            let got = py.detach(|| {
                self.rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv_timeout(wait)
            });
            match got {
                Ok(event) => return convert::event(py, &event).map(Some),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(pyo3::exceptions::PyStopIteration::new_err(()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.get(py, None)
    }
}

/// The end of a `timeout` argument's wait, by the client's one rule for
/// them all (`None`: no bound; NaN or negative: `ValueError`).
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    rules::wait_until(timeout, Instant::now()).map_err(PyValueError::new_err)
}

/// The next wait: up to [`SLICE`], and not past `deadline`.
fn slice(deadline: Option<Instant>) -> Duration {
    deadline.map_or(SLICE, |d| {
        d.saturating_duration_since(Instant::now()).min(SLICE)
    })
}

/// A keyword argument as a TOML value, to be read as a config file is.
fn toml_value(value: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if let Ok(b) = value.cast::<PyBool>() {
        Ok(toml::Value::Boolean(b.is_true()))
    } else if value.is_instance_of::<PyInt>() {
        Ok(toml::Value::Integer(value.extract()?))
    } else if value.is_instance_of::<PyFloat>() {
        Ok(toml::Value::Float(value.extract()?))
    } else if let Ok(s) = value.cast::<PyString>() {
        Ok(toml::Value::String(s.to_cow()?.into_owned()))
    } else if let Ok(items) = value.try_iter() {
        items
            .map(|item| toml_value(&item?))
            .collect::<PyResult<Vec<_>>>()
            .map(toml::Value::Array)
    } else {
        Err(PyTypeError::new_err(format!(
            "a setting is a number, a string or a list of strings, not {}",
            value.get_type().name()?
        )))
    }
}

#[pymodule]
fn _zbridge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_class::<Call>()?;
    m.add_class::<Events>()?;
    m.add_class::<aio::Driver>()?;
    m.add_class::<stream::Subscription>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
