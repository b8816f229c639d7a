//! Closing a draining frontend right behind a reply without losing the
//! client's next request.
//!
//! A plain lockstep REQ client sends its next request as soon as it has
//! read a reply (about 300 µs later for a Python agent). If that request is
//! written into a connection the bridge is closing, it is lost, and a REQ
//! socket with no timeout waits for ever. The close must reach the client
//! before it can send: its libzmq then keeps the request and delivers it
//! to whoever holds the port next. libzmq closes a connection on its own
//! threads, hundreds of microseconds after the reply went out, so the
//! race was lost about once in three handovers.
//!
//! While a frontend drains, its connections are corked (TCP_CORK): what
//! libzmq writes waits in the kernel. Each round of the loop uncorks them
//! (flushing the round's replies) and corks them again, unless the port is
//! closing: then the close sends the last reply and the FIN in one burst,
//! and the client's libzmq sees the connection end as it reads the reply.
//! The connections are libzmq's; their descriptors come from the socket
//! monitor (`ACCEPTED` / `DISCONNECTED` events carry them).

use std::os::fd::RawFd;
use zbridge_socket::sys::set_tcp_cork as set;

/// Flush what waits on each connection and cork them again.
pub fn flush(fds: &[RawFd]) {
    for &fd in fds {
        set(fd, false);
        set(fd, true);
    }
}

/// Cork each connection.
pub fn hold(fds: &[RawFd]) {
    for &fd in fds {
        set(fd, true);
    }
}
