//! Streams (DESIGN §3b): remote PUB services republished by the bridge.
//!
//! One thread owns every stream socket: an XSUB per configured stream,
//! connected to its upstream PUB, and an XPUB per pub port this instance
//! holds (the primary pub port while active, the secondary while passive,
//! both for a moment during a takeover). A subscription that arrives on an
//! XPUB is forwarded to every stream's XSUB, once per prefix however many
//! ports ask for it, so the upstream sends only what someone wants. A
//! message from an XSUB gets a stamp (`zbridge_protocol::stream`) with one
//! sequence number per subscribed prefix it matches, and goes out on every
//! XPUB held. The relay thread says which ports to hold ([`Streams::hold`],
//! [`Streams::release`]) as the role machine decides; a pub port another
//! process still holds is retried. Nothing here is on the request path:
//! streams have their own thread and libzmq context (I/O thread), so
//! stream messages never queue with requests (they share only the CPU).
//!
//! | file | what it owns |
//! | --- | --- |
//! | `mod.rs` | the handle the relay keeps: start, hold and release a pub port, status, stop |
//! | [`machine`] | every decision, pure: `step(now, event) -> actions` for prefixes, numbering, the 1,024-prefix cap, stalls, upstream sessions, pub-port binds and retries, last values to replay; the status document; tables in `machine/tests.rs` |
//! | [`cache`] | a stream's last values (pure): the last message per topic, bounded in topics and bytes |
//! | [`replays`] | the prefixes waiting for their last values on a pub port (pure): oldest first, each once, merged under a broader one |
//! | [`worker`] | the thread's loop: poll, turn readiness into events, carry out actions |
//! | [`sockets`] | opening the XSUBs and XPUBs, publishing with the stall check, forwarding a subscription |
//!
//! Drops: an XPUB drops silently for a subscriber at its high-water mark
//! (`stream_hwm`). Each message is first offered with ZMQ_XPUB_NODROP set,
//! which refuses it when a matching subscriber's queue is full; that is a
//! stall, counted and logged, and the message is sent again without the
//! option so that subscribers with room still get it. libzmq then skips
//! the full subscriber without telling until it has caught up, so the
//! bridge counts stalls, not messages: what each subscriber lost shows as
//! a jump in its sequence numbers (zbridge-client reports it as a gap).
//!
//! Last values (`last_value` on a stream): the bridge asks the upstream for
//! the stream's last-value prefixes from the start, whatever its role, so
//! the passive's cache is as full as the active's; each subscription read
//! on a pub port (ZMQ_XPUB_VERBOSE: every subscriber's, not only a
//! prefix's first) gets the cached messages under its prefix at once,
//! flagged in their stamp. libzmq's stable API sends them to every
//! subscriber of the port whose subscriptions match, so those already
//! subscribed see them again, flagged too (docs/PROTOCOL.md).

mod cache;
mod machine;
mod replays;
mod sockets;
mod worker;

use crate::config::{Config, Port};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tracing::error;
use worker::Worker;

/// The handle the relay keeps; dropping it stops the thread.
pub struct Streams {
    control: zmq::Socket,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<Map<String, Value>>>,
    /// The ZAP handler of the streams' context (CURVE on); after the
    /// thread in drop order.
    _zap: Option<crate::curve::Zap>,
}

impl Streams {
    /// Connect to every configured stream; `None` when there are none (no
    /// pub port is bound then). The streams get their own libzmq context,
    /// so their traffic has its own I/O thread, apart from the requests'.
    pub fn start(
        config: &Config,
        admission: Option<Arc<crate::curve::Admission>>,
    ) -> anyhow::Result<Option<Streams>> {
        if config.streams.is_empty() {
            return Ok(None);
        }
        let context = &zmq::Context::new();
        // CURVE pub ports: this context's own ZAP handler, the relay's rules.
        let zap = admission
            .clone()
            .map(|a| crate::curve::Zap::start(context, a))
            .transpose()?;
        let (control, theirs) = zbridge_socket::pipe(context, "streams-control")?;
        let status = Arc::new(Mutex::new(Map::new()));
        let worker = Worker::new(context, config, theirs, Arc::clone(&status), admission)?;
        let thread = std::thread::Builder::new()
            .name("streams".into())
            .spawn(move || worker.run())?;
        Ok(Some(Streams {
            control,
            thread: Some(thread),
            status,
            _zap: zap,
        }))
    }

    /// Bind the pub port that goes with this frontend port (retried while
    /// another process holds it).
    pub fn hold(&self, port: Port) {
        self.command(b'h', port);
    }

    /// Close the pub port that goes with this frontend port.
    pub fn release(&self, port: Port) {
        self.command(b'r', port);
    }

    /// Never blocks: a stream thread that has stopped (or stopped reading)
    /// must not hang the relay at its next role change.
    fn command(&self, what: u8, port: Port) {
        if let Err(e) = self
            .control
            .send(&[what, port.index() as u8][..], zmq::DONTWAIT)
        {
            error!(error = %e, alive = self.alive(), "cannot reach the streams thread: its pub ports no longer follow the role");
        }
    }

    /// The stream thread is still running (it ends on a poll failure or a
    /// panic; nothing is republished after that).
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// `streams`, `pub_ports` and `stream_subscribers` for the status
    /// document.
    pub fn status(&self) -> Map<String, Value> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let _ = self.control.send(&b"s"[..], zmq::DONTWAIT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::File;
    use std::time::{Duration, Instant};

    /// A stream thread that has stopped never blocks the relay: its
    /// commands fail at once (they blocked for ever when the thread was
    /// gone), and the handle says it is no longer alive.
    #[test]
    fn a_stopped_stream_thread_never_blocks_the_relay() {
        let config = File::from_toml_str(
            "primary_pub_port = 0\nsecondary_pub_port = 0\n[streams.s]\nendpoint = \"tcp://127.0.0.1:9\"\n",
        )
        .and_then(|f| f.validate())
        .unwrap();
        let streams = Streams::start(&config, None).unwrap().unwrap();
        assert!(streams.alive());
        streams.control.send(&b"s"[..], 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while streams.alive() {
            assert!(Instant::now() < deadline, "the stream thread did not stop");
            std::thread::yield_now();
        }
        let started = Instant::now();
        // More commands than the control socket queues (1,000).
        for _ in 0..5_000 {
            streams.hold(Port::Primary);
            streams.release(Port::Secondary);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!streams.alive());
    }
}
