//! Real parts for the demo, the benchmarks, the soak and the tests: a
//! bridge process that is killed when dropped, echo services, verifying
//! load generators, a pair on loopback and its failover scenarios.
//!
//! Not part of the daemon: the `zbridge` binary uses it for `zbridge demo`
//! and `zbridge bench`, and the integration tests use it as a
//! dev-dependency. Everything here runs on loopback with ports the OS
//! picks. Waiting is for an event (a ready line, a reply, a log line) with
//! a deadline, never a fixed sleep.
#![forbid(unsafe_code)]

mod ask;
pub mod bench;
pub mod demo;
mod load;
mod pair;
mod process;
mod random;
mod services;
pub mod soak;
mod stream;

pub use ask::{ask, error_code, http_get, status};
pub use load::{ClientLoad, ClientLoadReport, Load, LoadReport, Retrying, RetryingReport, Route};
pub use pair::{loopback_endpoints, Failover, FailoverReport, Fault, LoopbackPair};
pub use process::{free_port, lone_bridge_flags, wait_until, BridgeProcess, Process, TempConfig};
pub use random::Rng;
pub use services::{EchoService, Publisher, PAYLOAD};
pub use stream::{follow_stream, Seen};
