//! Why a command failed, in the two kinds the exit code tells apart.

use crate::config::ConfigError;
use std::fmt;

/// A failed command. `main` prints it and exits with [`Error::exit_code`].
#[derive(Debug)]
pub enum Error {
    /// The config or the command line cannot be used: nothing was started
    /// (exit 2). Names the key at fault.
    Config(ConfigError),
    /// The command could not do its work: a port held, a peer unreachable,
    /// an I/O error (exit 1).
    Failed(anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "config error: {e}"),
            Error::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

/// Code that reports through `anyhow` (the lab's `bench` and `demo`, which
/// read client configs) still exits 2 for a config error it carries.
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        match e.downcast::<ConfigError>() {
            Ok(config) => Error::Config(config),
            Err(e) => Error::Failed(e),
        }
    }
}

impl From<zmq::Error> for Error {
    fn from(e: zmq::Error) -> Error {
        Error::Failed(e.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Failed(e.into())
    }
}
