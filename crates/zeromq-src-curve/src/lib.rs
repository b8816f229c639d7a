//! zeromq-src's API over the real zeromq-src, with CURVE always on.
//!
//! zmq-sys's build script calls `Build::new().with_libsodium(None).build()`.
//! This crate stands in for zeromq-src (through `[patch.crates-io]`) and
//! ignores the `None`: every build gets the libsodium that
//! libsodium-sys-stable built, so zeromq-src defines `ZMQ_HAVE_CURVE` and
//! `ZMQ_USE_LIBSODIUM`, compiles the CURVE mechanism and links libsodium
//! statically. It owns nothing else: the libzmq sources, their compile
//! flags and the link lines are zeromq-src's.

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
        self.inner.build();
    }
}

fn sodium() -> LibLocation {
    LibLocation::new(Path::new(SODIUM_LIB), Path::new(SODIUM_INCLUDE))
}
