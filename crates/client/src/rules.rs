//! The rules the bridge and its client apply alike to the keys they share:
//! the defaults of the keys both read, how an endpoint is spelled, how long
//! a duration may be, the largest frame the bridges accept, where the
//! shared secret comes from, and the error that names a bad key. Also the
//! one rule for a caller's own wait (`timeout` arguments, [`wait`]).
//!
//! One copy, used by both: the same file and the same environment must
//! mean the same thing to the bridge (`zbridge` reads its config through
//! these functions) and to the client, or a client rejects every heartbeat
//! of a bridge it is configured for.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::time::{Duration, Instant};
use zbridge_protocol::time::later;

/// The defaults (DESIGN §6) of the keys that both the bridge and the client
/// read: a pair on this host.
pub mod defaults {
    pub const HOST: &str = "127.0.0.1";
    pub const PRIMARY_PORT: u16 = 5600;
    pub const SECONDARY_PORT: u16 = 5601;
    pub const PRIMARY_HEARTBEAT_PORT: u16 = 5610;
    pub const SECONDARY_HEARTBEAT_PORT: u16 = 5611;
    pub const PRIMARY_PUB_PORT: u16 = 5630;
    pub const SECONDARY_PUB_PORT: u16 = 5631;
    /// Seconds.
    pub const HEARTBEAT_TIMEOUT: f64 = 3.0;
    /// Seconds.
    pub const HEARTBEAT_MAX_SKEW: f64 = 5.0;
    /// Seconds.
    pub const REQUEST_TIMEOUT: f64 = 5.0;
    pub const MAX_RECONNECT_ATTEMPTS: u32 = 5;
    /// Seconds.
    pub const RECONNECT_DELAY: f64 = 5.0;
    /// Seconds.
    pub const BREAKER_OPEN_WAIT: f64 = 2.0;
    /// Bytes.
    pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
}

/// A configuration value that cannot be used, and the key that holds it
/// ("" when the file as a whole is at fault). The bridge and the client
/// report their config errors with this one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// `tcp://HOST:PORT`, with an IPv6 host in brackets; port 0 is `*` (any
/// free port, for a bind).
pub fn tcp_endpoint(host: &str, port: u16) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    };
    if port == 0 {
        format!("tcp://{host}:*")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// The longest duration any key takes, in seconds: one week. Longer than
/// any sensible timeout or delay, and far inside what the clock arithmetic
/// can compute with.
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// The environment variable that holds the shared secret when neither
/// `auth_token` nor `auth_token_file` is set.
pub const TOKEN_ENV: &str = "ZBRIDGE_AUTH_TOKEN";

/// The largest token file read, in bytes; a longer one is refused.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The largest config file read, in bytes (a config of a hundred targets
/// is about 10 KiB); a longer one is refused.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A duration key's value: more than 0 and at most [`MAX_SECONDS`].
pub fn seconds(key: &str, value: f64) -> Result<Duration, ConfigError> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() && value <= MAX_SECONDS => Ok(d),
        _ => Err(ConfigError::new(
            key,
            format!(
                "must be more than 0 and at most {MAX_SECONDS} seconds (a week); got {value:?}"
            ),
        )),
    }
}

/// `max_transport_bytes`, the largest frame libzmq accepts from a client
/// before it cuts the connection: `value`, or 16 x `max_message_bytes` for
/// 0. Never below `max_message_bytes`, or a request just over the
/// transport limit would get no `too_large` reply.
pub fn max_transport_bytes(value: usize, max_message_bytes: usize) -> Result<usize, ConfigError> {
    match value {
        0 => Ok(max_message_bytes.saturating_mul(16)),
        n if n < max_message_bytes => Err(ConfigError::new(
            "max_transport_bytes",
            format!(
                "must be at least max_message_bytes ({max_message_bytes}), or a request just over the transport limit gets no `too_large` reply; got {n}"
            ),
        )),
        n => Ok(n),
    }
}

/// A caller's own wait (the `timeout` of one call, of one read of events),
/// in seconds: `None` for no bound. 0 looks without waiting; a value too
/// large for a `Duration` (1e20, infinity) is no bound either, and a
/// deadline past what the clock can reach saturates
/// ([`zbridge_protocol::time::later`]). NaN and negative numbers are
/// refused, before anything is sent.
pub fn wait(seconds: Option<f64>) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(format!(
            "timeout {s} is not a number of seconds: give 0 or more (None: no bound)"
        )),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}

/// The end of a [`wait`] that starts `now`: `None` for no bound.
pub fn wait_until(seconds: Option<f64>, now: Instant) -> Result<Option<Instant>, String> {
    Ok(wait(seconds)?.map(|d| later(now, d)))
}

/// The shared secret. One order, for the bridge and the client alike:
/// `auth_token`, else the first line of `auth_token_file` (setting both is
/// an error), else the `ZBRIDGE_AUTH_TOKEN` environment variable; `None`
/// when all are empty (heartbeats are not signed).
pub fn auth_token(inline: &str, file: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    token_from(inline, file, std::env::var(TOKEN_ENV).ok())
}

fn token_from(
    inline: &str,
    file: &str,
    env: Option<String>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    if !inline.is_empty() && !file.is_empty() {
        return Err(ConfigError::new(
            "auth_token_file",
            "set either auth_token or auth_token_file, not both",
        ));
    }
    if !inline.is_empty() {
        return Ok(Some(inline.as_bytes().to_vec()));
    }
    if !file.is_empty() {
        return read_token_file(file).map(Some);
    }
    Ok(env.filter(|t| !t.is_empty()).map(String::into_bytes))
}

/// The first line of a token file, trimmed ([`read_small_file`]).
fn read_token_file(path: &str) -> Result<Vec<u8>, ConfigError> {
    let refuse = |why: String| ConfigError::new("auth_token_file", why);
    let (text, _) = read_small_file(std::path::Path::new(path), MAX_TOKEN_FILE_BYTES, "token")
        .map_err(refuse)?;
    match text.lines().next().unwrap_or("").trim() {
        "" => Err(refuse(format!("{path} is empty"))),
        token => Ok(token.as_bytes().to_vec()),
    }
}

/// The text of a config file, read as [`read_small_file`] reads: a FIFO,
/// a device or a directory at the path is refused at once, never waited on.
/// The bridge (start, reload, `check-config`) and the client
/// (`ClientConfig::from_file`) both read their config through it.
pub fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
    read_small_file(path, MAX_CONFIG_FILE_BYTES, "config")
        .map(|(text, _)| text)
        .map_err(|why| ConfigError::new("", why))
}

/// The text of a small file: a config, a secret or a key (`what`, for the
/// error): only a regular file of at most `max_bytes` is read. A device
/// (`/dev/zero`), a FIFO or a directory is refused before it is opened,
/// and again, by the descriptor, after (should the path have changed in
/// between), so reading never blocks or grows without end. Returns the
/// text and the opened file's metadata (its mode, for a secret); the error
/// names the path and never the content.
pub(crate) fn read_small_file(
    path: &std::path::Path,
    max_bytes: u64,
    what: &str,
) -> Result<(String, std::fs::Metadata), String> {
    let shown = path.display();
    let regular = |metadata: std::fs::Metadata| {
        if metadata.is_file() {
            Ok(metadata)
        } else {
            Err(format!(
                "{shown} is {}; a {what} must be in a regular file",
                file_kind(metadata.file_type())
            ))
        }
    };
    regular(std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?)?;
    // O_NONBLOCK: should the path become a FIFO after the check above,
    // opening it still does not wait for a writer.
    let mut handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let metadata = regular(
        handle
            .metadata()
            .map_err(|e| format!("cannot read {shown}: {e}"))?,
    )?;
    let mut bytes = Vec::new();
    (&mut handle)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "{shown} is longer than {max_bytes} bytes, more than a {what} file may hold"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not text"))?;
    Ok((text, metadata))
}

fn file_kind(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wait_is_zero_or_more_seconds_and_too_long_is_no_bound() {
        assert_eq!(wait(None), Ok(None));
        assert_eq!(wait(Some(0.0)), Ok(Some(Duration::ZERO)));
        assert_eq!(wait(Some(1e-300)), Ok(Some(Duration::ZERO)));
        assert_eq!(wait(Some(1.5)), Ok(Some(Duration::from_millis(1500))));
        // Waits past what a clock can reach are cut short there (`later`).
        assert_eq!(
            wait(Some(1e19)),
            Ok(Some(Duration::from_secs(10_000_000_000_000_000_000)))
        );
        for unbounded in [1e20, 1e300, f64::INFINITY] {
            assert_eq!(wait(Some(unbounded)), Ok(None), "{unbounded}");
        }
        for refused in [f64::NAN, -1.0, -1e-300, f64::NEG_INFINITY] {
            let e = wait(Some(refused)).unwrap_err();
            assert!(e.contains("not a number of seconds"), "{refused}: {e}");
        }
        let now = Instant::now();
        assert!(wait_until(Some(1e19), now).unwrap().unwrap() > now);
        assert_eq!(wait_until(Some(0.0), now), Ok(Some(now)));
        assert_eq!(wait_until(None, now), Ok(None));
    }

    #[test]
    fn the_transport_limit_is_16_bodies_by_default_and_never_below_one() {
        assert_eq!(max_transport_bytes(0, 1 << 20), Ok(16 << 20));
        assert_eq!(max_transport_bytes(0, usize::MAX), Ok(usize::MAX));
        assert_eq!(max_transport_bytes(100, 100), Ok(100));
        assert_eq!(
            max_transport_bytes(50, 100).unwrap_err().key,
            "max_transport_bytes"
        );
    }

    #[test]
    fn durations_are_more_than_zero_and_at_most_a_week() {
        assert_eq!(seconds("k", 0.5), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("k", MAX_SECONDS), Ok(Duration::from_secs(604_800)));
        for bad in [
            0.0,
            -1.0,
            1e-300,
            MAX_SECONDS + 1.0,
            1e19,
            f64::INFINITY,
            f64::NAN,
        ] {
            let e = seconds("heartbeat_timeout", bad).unwrap_err();
            assert_eq!(e.key, "heartbeat_timeout");
            assert!(
                e.message.contains("604800") && e.message.contains("got"),
                "{e}"
            );
        }
    }

    fn token_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("zbridge-token-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn the_inline_token_then_the_file_then_the_environment() {
        let path = token_file("first-line", b"  secret \nsecond line\n");
        let file = path.to_str().unwrap();
        let env = || Some("from-env".to_string());
        assert_eq!(
            token_from("inline", "", env()),
            Ok(Some(b"inline".to_vec()))
        );
        assert_eq!(token_from("", file, env()), Ok(Some(b"secret".to_vec())));
        assert_eq!(token_from("", "", env()), Ok(Some(b"from-env".to_vec())));
        assert_eq!(token_from("", "", Some(String::new())), Ok(None));
        assert_eq!(token_from("", "", None), Ok(None));
        let both = token_from("inline", file, env()).unwrap_err();
        assert_eq!(both.key, "auth_token_file");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn token_files_are_small_regular_files_with_a_first_line() {
        let refusal = |path: &str| auth_token("", path).unwrap_err().message;
        let started = Instant::now();
        assert!(
            refusal("/dev/zero").contains("a character device"),
            "{}",
            refusal("/dev/zero")
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(refusal("/tmp").contains("a directory"));
        let fifo = std::env::temp_dir().join(format!("zbridge-token-{}-fifo", std::process::id()));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(refusal(fifo.to_str().unwrap()).contains("a FIFO"));
        assert!(refusal("/nonexistent/token").contains("cannot read"));
        let long = token_file("long", &[b'x'; MAX_TOKEN_FILE_BYTES as usize + 1]);
        assert!(refusal(long.to_str().unwrap()).contains("longer than 4096 bytes"));
        let empty = token_file("empty", b" \n");
        assert!(refusal(empty.to_str().unwrap()).contains("is empty"));
        let binary = token_file("binary", &[0xff, 0xfe]);
        assert!(refusal(binary.to_str().unwrap()).contains("not text"));
        let exact = token_file("exact", &[b'y'; MAX_TOKEN_FILE_BYTES as usize]);
        assert_eq!(
            auth_token("", exact.to_str().unwrap())
                .unwrap()
                .unwrap()
                .len(),
            MAX_TOKEN_FILE_BYTES as usize
        );
        for path in [fifo, long, empty, binary, exact] {
            std::fs::remove_file(path).unwrap();
        }
    }
}
