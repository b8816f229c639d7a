//! zbridge: a redundant ZeroMQ request/reply bridge.
//!
//! The binary (`src/main.rs`) is glue over these modules: [`config`] reads
//! and validates the configuration, [`relay`] owns the sockets and relays,
//! [`run`] wires them into `zbridge run`, [`lab`] holds the real parts the
//! demo, benchmarks and tests share. [`streams`] republishes remote PUB
//! services on the bridge's pub ports.
//!
//! Unsafe code is denied everywhere but one call: [`streams`] sets
//! ZMQ_XPUB_NODROP through `zmq-sys`, which the `zmq` crate does not wrap.
#![deny(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod curve;
pub mod demo;
pub mod ha;
pub mod lab;
pub mod monitor;
pub mod relay;
pub mod run;
pub mod soak;
pub mod stop;
pub mod streams;
mod throttle;
pub mod tools;
