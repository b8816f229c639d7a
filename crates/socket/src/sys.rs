//! The two socket options zbridge sets that neither the `zmq` crate nor
//! std wraps. The only unsafe code in zbridge.

use std::os::fd::RawFd;
use std::os::raw::{c_int, c_void};

/// Set ZMQ_XPUB_NODROP on an XPUB socket: a full subscriber queue makes
/// a send fail with EAGAIN instead of dropping the message.
pub fn set_xpub_nodrop(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    let value = c_int::from(on);
    // SAFETY: the pointer is the live libzmq socket that `socket` owns for
    // the whole call; ZMQ_XPUB_NODROP takes an int, passed by address with
    // its size, which libzmq copies before it returns.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_NODROP as c_int,
            (&value as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        Err(zmq::Error::from_raw(errno))
    }
}

/// Set or clear TCP_CORK on the connection `fd` (one of libzmq's, known
/// from a socket monitor event). An error (a descriptor closed meanwhile)
/// changes nothing and is ignored: the close flushes what is held.
pub fn set_tcp_cork(fd: RawFd, on: bool) {
    let value = c_int::from(on);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from the pointer
    // to `value`, which lives on this stack frame for the whole call. An fd
    // that is no longer a TCP socket makes the call fail (EBADF, ENOTSOCK,
    // EOPNOTSUPP) without touching memory.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
}
