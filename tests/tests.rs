//! Integration tests: real `zbridge` processes, real pyzmq peers, loopback only.

mod support;

mod agents;
mod cli;
mod client;
mod curve;
mod drain;
mod errors;
mod garbage;
mod ha;
mod keepalived;
mod last_values;
mod monitor;
mod netns;
mod packages;
mod page;
mod readme;
mod relay;
mod reload;
mod soak;
mod streams;
mod watchdog;
