//! libzmq socket monitors, as the engine and the subscriber use them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A PAIR socket that receives `socket`'s monitor events of `kinds`.
pub(crate) fn watch(
    context: &zmq::Context,
    socket: &zmq::Socket,
    kinds: &[zmq::SocketEvent],
) -> zmq::Result<zmq::Socket> {
    static MONITORS: AtomicU64 = AtomicU64::new(0);
    let endpoint = format!(
        "inproc://zbridge-client-monitor-{}-{}",
        std::process::id(),
        MONITORS.fetch_add(1, Ordering::Relaxed)
    );
    let mask = kinds.iter().fold(0, |mask, kind| mask | kind.to_raw());
    socket.monitor(&endpoint, i32::from(mask))?;
    let events = context.socket(zmq::PAIR)?;
    events.set_linger(0)?;
    events.connect(&endpoint)?;
    Ok(events)
}

/// The next event waiting on `events` (from [`watch`]) as its raw number
/// (`zmq::SocketEvent::from_raw` panics on kinds it does not know).
pub(crate) fn next_event(events: &zmq::Socket) -> Option<u16> {
    loop {
        let event = events.recv_multipart(zmq::DONTWAIT).ok()?;
        if let Some(code) = event.first().and_then(|f| f.get(..2)) {
            return Some(u16::from_le_bytes([code[0], code[1]]));
        }
    }
}
