//! zeromq-src's API over the real zeromq-src, with CURVE always on.
//!
//! zmq-sys's build script calls `Build::new().with_libsodium(None).build()`.
//! This crate stands in for zeromq-src (through `[patch.crates-io]`) and
//! ignores the `None`: every build gets the libsodium that
//! libsodium-sys-stable built, so zeromq-src defines `ZMQ_HAVE_CURVE` and
//! `ZMQ_USE_LIBSODIUM`, compiles the CURVE mechanism and links libsodium
//! statically.
//!
//! On Linux it also defines `ZMQ_HAVE_EVENTFD` (and its `_CLOEXEC`), which
//! zeromq-src leaves out: libzmq's signalers (one per socket mailbox, woken
//! on every message handed between threads) are then an eventfd, as in
//! the libzmq that Debian and pyzmq ship, not a socket pair (a send and a
//! recv through the socket layer per wake-up). zeromq-src has no setting for
//! a define, so the flag goes through the `CXXFLAGS_<target>` variable that
//! its `cc` build reads. It owns nothing else: the libzmq sources, their
//! other compile flags and the link lines are zeromq-src's.

use std::path::Path;

pub use upstream::LibLocation;

const SODIUM_INCLUDE: &str = env!("ZBRIDGE_DEP_SODIUM_INCLUDE");
const SODIUM_LIB: &str = env!("ZBRIDGE_DEP_SODIUM_LIB");

/// Settings for building libzmq, as zeromq-src's `Build`.
#[derive(Debug, Clone)]
pub struct Build {
    inner: upstream::Build,
}

impl Default for Build {
    fn default() -> Self {
        Self::new()
    }
}

impl Build {
    /// A build with CURVE (libsodium-sys-stable's libsodium).
    pub fn new() -> Self {
        let mut inner = upstream::Build::new();
        inner.with_libsodium(Some(sodium()));
        Self { inner }
    }

    /// Build the debug version of the lib.
    pub fn build_debug(&mut self, enabled: bool) -> &mut Self {
        self.inner.build_debug(enabled);
        self
    }

    /// Enable the DRAFT API.
    pub fn enable_draft(&mut self, enabled: bool) -> &mut Self {
        self.inner.enable_draft(enabled);
        self
    }

    /// Another libsodium than the bundled one; `None` (what zmq-sys asks)
    /// keeps the bundled one, so that CURVE is never left out.
    pub fn with_libsodium(&mut self, maybe: Option<LibLocation>) -> &mut Self {
        self.inner
            .with_libsodium(Some(maybe.unwrap_or_else(sodium)));
        self
    }

    /// Compiles libzmq and prints the link lines (zeromq-src's).
    pub fn build(&mut self) {
        linux_defines();
        self.inner.build();
    }
}

/// The defines of the Linux features that zeromq-src does not set, added
/// to the C++ flags that `cc` will read (the most specific of its
/// variables, built on the one it would have used), for this build script
/// only.
fn linux_defines() {
    const DEFINES: &str = "-DZMQ_HAVE_EVENTFD=1 -DZMQ_HAVE_EVENTFD_CLOEXEC=1";
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("linux") {
        return;
    }
    let specific = format!("CXXFLAGS_{target}");
    let underscored = format!("CXXFLAGS_{}", target.replace('-', "_"));
    let current = [specific.as_str(), &underscored, "TARGET_CXXFLAGS", "HOST_CXXFLAGS", "CXXFLAGS"]
        .into_iter()
        .find_map(|key| std::env::var(key).ok())
        .unwrap_or_default();
    // A build script is one thread: nothing reads the environment meanwhile.
    std::env::set_var(specific, format!("{current} {DEFINES}").trim());
}

fn sodium() -> LibLocation {
    LibLocation::new(Path::new(SODIUM_LIB), Path::new(SODIUM_INCLUDE))
}
