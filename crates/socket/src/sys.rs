//! The two socket options zbridge sets that neither the `zmq` crate nor
//! std wraps, libzmq's `zmq_curve_public`, a look at (and a shutdown
//! of) one of libzmq's connections by its descriptor, poll(2) for
//! [`crate::wait`], and a count of forks. The only unsafe code in zbridge.

use std::os::fd::RawFd;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

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

/// The descriptor of one of libzmq's connections, borrowed for one call:
/// never closed here (libzmq owns it and closes it).
fn borrowed(fd: RawFd) -> std::mem::ManuallyDrop<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: the TcpStream is never dropped (ManuallyDrop), so it never
    // closes `fd`; it only makes calls that take a descriptor and fail
    // cleanly (EBADF, ENOTSOCK) on one that is closed or not a socket.
    std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

/// The peer address of the TCP connection `fd`, if it is one.
pub fn peer_of(fd: RawFd) -> Option<std::net::SocketAddr> {
    borrowed(fd).peer_addr().ok()
}

/// The local port of the TCP connection `fd`: which listener accepted it.
pub fn local_port_of(fd: RawFd) -> Option<u16> {
    borrowed(fd).local_addr().ok().map(|a| a.port())
}

/// Shut the TCP connection `fd` down both ways: its peer sees it close and
/// libzmq, reading it, closes it and frees the descriptor.
pub fn shut_down(fd: RawFd) {
    let _ = borrowed(fd).shutdown(std::net::Shutdown::Both);
}

// zmq-sys declares zmq_curve_public but does not export it; the symbol is
// in the libzmq that zmq-sys links (4.2.0 and later).
extern "C" {
    fn zmq_curve_public(z85_public_key: *mut c_char, z85_secret_key: *const c_char) -> c_int;
}

/// Characters of a Z85 CURVE key (32 bytes).
const Z85_KEY_CHARS: usize = 40;
/// Z85's alphabet (ZeroMQ RFC 32).
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// The Z85 public key of the Z85 CURVE secret key `secret` (libzmq's
/// `zmq_curve_public`). `None` when `secret` is not 40 characters of Z85's
/// alphabet, or libzmq refuses it (a group that overflows, no CURVE in
/// this libzmq).
pub fn curve_public(secret: &str) -> Option<String> {
    // libzmq decodes the whole string into a 32-byte buffer, whatever its
    // length (any multiple of 5): anything but 40 characters would write
    // past that buffer. Checked here, before libzmq sees it.
    if secret.len() != Z85_KEY_CHARS || !secret.bytes().all(|c| Z85.contains(&c)) {
        return None;
    }
    // No NUL inside: every byte is in Z85's alphabet.
    let secret = std::ffi::CString::new(secret).ok()?;
    let mut public = [0u8; Z85_KEY_CHARS + 1];
    // SAFETY: `secret` is a NUL-terminated string of exactly 40 Z85
    // characters (checked above), which libzmq decodes into its own 32-byte
    // buffer; `public` is 41 bytes, the 40 Z85 characters of a 32-byte key
    // and the NUL that zmq_z85_encode writes. Both live on this frame for
    // the whole call, and libzmq keeps neither pointer.
    let rc = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
    if rc != 0 || public[Z85_KEY_CHARS] != 0 {
        return None;
    }
    String::from_utf8(public[..Z85_KEY_CHARS].to_vec()).ok()
}

/// poll(2) over `fds` for up to `timeout_ms` (-1: no limit): how many
/// have events (their `revents` set). An interrupted wait (EINTR) reports
/// none, as if it had timed out.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> std::io::Result<usize> {
    // SAFETY: poll reads and writes `fds.len()` pollfd structs from the
    // pointer, which is the live, exclusively borrowed slice for the whole
    // call; it keeps no pointer past its return.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    match usize::try_from(rc) {
        Ok(n) => Ok(n),
        Err(_) => match std::io::Error::last_os_error() {
            e if e.kind() == std::io::ErrorKind::Interrupted => {
                fds.iter_mut().for_each(|fd| fd.revents = 0);
                Ok(0)
            }
            e => Err(e),
        },
    }
}

/// How many `fork(2)`s lie between this process and the first one that
/// asked: a `pthread_atfork` handler, registered on the first call, adds
/// one in each child. Unlike `getpid` (a system call: glibc keeps no copy)
/// it costs an atomic load, for a check made on every request.
pub fn forks() -> u64 {
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static HANDLER: Once = Once::new();
    extern "C" fn count_in_child() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    HANDLER.call_once(|| {
        // SAFETY: the handler only adds to an atomic, which is
        // async-signal-safe, as a child's fork handler must be.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(count_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    FORKS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_public_matches_the_pair_libzmq_makes() {
        for _ in 0..10 {
            let pair = zmq::CurveKeyPair::new().unwrap();
            let secret = zmq::z85_encode(&pair.secret_key).unwrap();
            let public = zmq::z85_encode(&pair.public_key).unwrap();
            assert_eq!(curve_public(&secret), Some(public));
        }
    }

    #[test]
    fn curve_public_refuses_what_is_not_a_z85_key_without_harm() {
        let pair = zmq::CurveKeyPair::new().unwrap();
        let secret = zmq::z85_encode(&pair.secret_key).unwrap();
        // Longer keys (a multiple of 5) would overrun libzmq's buffer.
        for bad in [
            String::new(),
            secret[..35].to_string(),
            format!("{secret}abcde"),
            "a".repeat(400),
            format!("{}~", &secret[..39]),
            format!("{}\0", &secret[..39]),
            format!("{} ", &secret[..39]),
            "%".repeat(40),
            format!("{}é", &secret[..38]),
        ] {
            assert_eq!(curve_public(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_forked_child_counts_one_fork_more_and_its_parent_none() {
        let before = forks();
        // SAFETY: the child only reads an atomic and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = i32::from(forks() != before + 1);
            unsafe { libc::_exit(code) }
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child's count was not one more"
        );
        assert_eq!(forks(), before);
    }
}
