//! The process's descriptor limit: raised to its hard limit at start (as
//! Go's runtime and most servers do; systemd gives services a soft limit of
//! 1,024 under a hard one of 524,288), and read by the relay to size how
//! many connections may wait for their handshake.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tracing::{debug, info};

/// Raise the soft descriptor limit to the hard one; say so when it moves.
pub fn raise_descriptors() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= hard {
        debug!(descriptors = soft, "descriptor limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => info!(
            from = soft,
            to = hard,
            "raised the descriptor limit to its hard limit"
        ),
        Err(e) => debug!(error = %e, soft, hard, "cannot raise the descriptor limit"),
    }
}

/// The soft descriptor limit now (1,024 if it cannot be read).
pub fn descriptors() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Connections per listening socket (a frontend, a pub port) that may wait
/// for their handshake: an eighth of the descriptor limit (so the two
/// frontends and a pub port together leave more than half for the rest),
/// at least 8.
pub fn handshakes_waiting_max() -> usize {
    usize::try_from(descriptors() / 8)
        .unwrap_or(usize::MAX)
        .max(8)
}
