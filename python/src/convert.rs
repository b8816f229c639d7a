//! Rust values to Python objects and back: frames, errors, events, stream
//! deliveries. The Python classes are `zbridge._types`'s (plain Python, so
//! that editors and `pickle` see ordinary classes).

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyModule, PyString, PyTuple};
use zbridge_client::{ClientError, ConfigError, Delivery, Event};

/// `zbridge._types`, imported once.
fn types(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static TYPES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    TYPES
        .get_or_try_init(py, || Ok(py.import("zbridge._types")?.unbind()))
        .map(|m| m.bind(py))
}

/// An instance of `zbridge._types.NAME(*args)`.
fn instance<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: PyCallArgs<'py>,
{
    types(py)?.getattr(name)?.call1(args)
}

/// The exception `zbridge.NAME(*args)` (or the error met building it).
pub fn error<'py, A>(py: Python<'py>, name: &str, args: A) -> PyErr
where
    A: PyCallArgs<'py>,
{
    match instance(py, name, args) {
        Ok(exception) => PyErr::from_value(exception),
        Err(e) => e,
    }
}

/// A failed call as the exception of its kind.
pub fn client_error(py: Python<'_>, e: &ClientError) -> PyErr {
    let message = e.to_string();
    match e {
        ClientError::Bridge { code, message } => {
            error(py, "BridgeError", (code.as_str(), message.as_str()))
        }
        ClientError::CircuitOpen { retry_after } => {
            error(py, "CircuitOpen", (message, retry_after.as_secs_f64()))
        }
        ClientError::Timeout { attempts } => error(py, "Timeout", (message, *attempts)),
        ClientError::AllBridgesDown { attempts, .. } => {
            error(py, "AllBridgesDown", (message, *attempts))
        }
        ClientError::BadReply(_) => error(py, "BadReply", (message,)),
        ClientError::Closed => error(py, "Closed", (message,)),
        ClientError::TooLarge { bytes, limit } => error(py, "TooLarge", (message, *bytes, *limit)),
        ClientError::OtherProcess { pid } => error(py, "OtherProcess", (message, *pid)),
    }
}

pub fn config_error(py: Python<'_>, e: &ConfigError) -> PyErr {
    error(py, "ConfigError", (e.to_string(), e.key.as_str()))
}

/// Request frames: bytes, bytearray, memoryview (any buffer of bytes) or
/// str (sent as UTF-8).
pub fn frames_in(frames: &Bound<'_, PyTuple>) -> PyResult<Vec<Vec<u8>>> {
    frames.iter().map(|f| frame_in(&f)).collect()
}

fn frame_in(frame: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = frame.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = frame.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(b) = frame.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    // Any other buffer of bytes, through a memoryview: the buffer protocol
    // itself is in the stable ABI (the wheel is abi3 from 3.9) only from 3.11.
    match PyMemoryView::from(frame) {
        Ok(view) if view.getattr("itemsize")?.extract::<usize>()? == 1 => Ok(view
            .call_method0("tobytes")?
            .cast::<PyBytes>()?
            .as_bytes()
            .to_vec()),
        _ => Err(PyTypeError::new_err(format!(
            "a frame is bytes (or bytearray, memoryview, str), not {}",
            frame.get_type().name()?
        ))),
    }
}

/// Reply frames as a list of bytes.
pub fn frames_out<'py>(py: Python<'py>, frames: &[Vec<u8>]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, frames.iter().map(|f| PyBytes::new(py, f)))
}

pub fn event<'py>(py: Python<'py>, e: &Event) -> PyResult<Bound<'py, PyAny>> {
    match e {
        Event::Connected { endpoint } => instance(py, "Connected", (endpoint,)),
        Event::EndpointDown { endpoint, reason } => {
            instance(py, "EndpointDown", (endpoint, *reason))
        }
        Event::EndpointUp { endpoint } => instance(py, "EndpointUp", (endpoint,)),
        Event::FailedOver { from, to } => instance(py, "FailedOver", (from, to)),
        Event::SwitchedBack { from, to } => instance(py, "SwitchedBack", (from, to)),
        Event::Breaker { endpoint, state } => {
            instance(py, "BreakerChanged", (endpoint, state.to_string()))
        }
    }
}

pub fn delivery<'py>(py: Python<'py>, d: &Delivery) -> PyResult<Bound<'py, PyAny>> {
    match d {
        Delivery::Message(m) => instance(
            py,
            "StreamMessage",
            (
                &m.stream,
                PyBytes::new(py, &m.prefix),
                m.seq,
                frames_out(py, &m.frames)?,
                m.source,
                m.session,
                m.last_value,
            ),
        ),
        Delivery::Gap {
            stream,
            prefix,
            missed,
        } => instance(py, "Gap", (stream, PyBytes::new(py, prefix), *missed)),
        Delivery::Moved {
            stream,
            prefix,
            from,
            to,
        } => instance(py, "Moved", (stream, PyBytes::new(py, prefix), *from, *to)),
    }
}
