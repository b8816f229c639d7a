//! zbridge: a redundant ZeroMQ request/reply bridge, the daemon.
//!
//! [`config`] reads and validates the configuration; [`relay`] owns the
//! frontend and target sockets and relays, carrying out what the role
//! machine in [`ha`] decides; [`streams`] republishes remote PUB services
//! on the bridge's pub ports; [`monitor`] serves `/health`, `/status` and
//! `/metrics`; [`notify`] speaks systemd's notify protocol and watchdog; [`run`] wires them into `zbridge run`, with [`stop`] turning
//! signals into a drain. The binary (`src/main.rs`) adds the command line
//! and the client-side commands; the demo, benchmarks and test harness are
//! the `zbridge-lab` crate, not part of the daemon.
//!
//! Unsafe code is forbidden: the two socket options that need it live in
//! `zbridge_socket::sys`.
#![forbid(unsafe_code)]

mod bucket;
pub mod config;
pub mod curve;
mod error;
pub mod ha;
mod limits;
pub mod monitor;
mod notify;
pub mod relay;
pub mod run;
pub mod stop;
pub mod streams;
mod teach;
mod throttle;

pub use error::Error;
