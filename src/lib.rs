//! zbridge: a redundant ZeroMQ request/reply bridge.
//!
//! The binary (`src/main.rs`) is glue over these modules: [`config`] reads
//! and validates the configuration, [`relay`] owns the sockets and relays,
//! [`run`] wires them into `zbridge run`, [`lab`] holds the real parts the
//! demo, benchmarks and tests share. [`streams`] republishes remote PUB
//! services on the bridge's pub ports.
//!
//! Unsafe code is forbidden: the two socket options that need it live in
//! `zbridge_socket::sys`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod config;
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
