//! Configuration: the TOML file, command-line overrides, validation.
//!
//! Every top-level key is declared once, in the `keys!` table below, which
//! generates the file struct ([`File`]) with its defaults and the clap flags
//! ([`Overrides`]) that override it: a key cannot exist without its flag.
//! [`File::validate`] turns the merged file into a [`Config`] with real types
//! (durations, endpoints, a target list), or a [`ConfigError`] naming the key.
//! Validation happens before any socket is bound.

use crate::curve::{Clients, KeyPair, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use zbridge_client::curve::read_clients;
// A duration key: more than 0 and at most a week, as the client has it.
use zbridge_client::rules::{
    defaults, max_transport_bytes, seconds as positive_seconds, MAX_SECONDS,
};
pub use zbridge_client::rules::{tcp_endpoint, ConfigError};
use zbridge_protocol::heartbeat::Node;
use zbridge_protocol::Limits;

/// The two frontend ports (and with them the pub and monitor ports): the
/// primary, which the active holds, and the secondary, the passive's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Primary,
    Secondary,
}

impl Port {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Requests per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The role an instance starts in; its home role names the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Active,
    Passive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `[targets.NAME]`: a backend service the bridge relays to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub endpoint: String,
    /// Overrides the top-level `request_timeout` for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<f64>,
    /// The service's CURVE public key (Z85): the link is CURVE, the bridge
    /// connecting with the pair's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_server_key: Option<String>,
}

/// `[streams.NAME]`: a remote PUB (or XPUB) the bridge republishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFile {
    pub endpoint: String,
    /// The publisher's CURVE public key (Z85), as for a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_server_key: Option<String>,
    /// Keep the last message per topic and give it to a new subscription:
    /// `true` (every topic) or a list of topic prefixes.
    #[serde(default, skip_serializing_if = "LastValue::is_off")]
    pub last_value: LastValue,
    /// Topics whose last value is kept, at most (the topics updated
    /// longest ago go first); 10,000 if not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value_max_topics: Option<usize>,
    /// Bytes of last values kept, at most (the frames' lengths); 64 MiB if
    /// not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value_max_bytes: Option<usize>,
}

/// A stream's `last_value`: `true`, `false` or a list of topic prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LastValue {
    All(bool),
    Prefixes(Vec<String>),
}

impl Default for LastValue {
    fn default() -> Self {
        LastValue::All(false)
    }
}

impl LastValue {
    fn is_off(&self) -> bool {
        self.prefixes().is_empty()
    }

    /// The prefixes whose topics keep their last value (none: off; the
    /// empty prefix: every topic).
    fn prefixes(&self) -> Vec<Vec<u8>> {
        match self {
            LastValue::All(false) => Vec::new(),
            LastValue::All(true) => vec![Vec::new()],
            LastValue::Prefixes(list) => {
                let mut prefixes: Vec<Vec<u8>> =
                    list.iter().map(|p| p.as_bytes().to_vec()).collect();
                prefixes.sort();
                prefixes.dedup();
                prefixes
            }
        }
    }
}

/// A stream's last values kept, at most, unless its table says.
const LAST_VALUE_MAX_TOPICS: usize = 10_000;
const LAST_VALUE_MAX_BYTES: usize = 64 << 20;

macro_rules! keys {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// The config file as written, with every key defaulted.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct File {
            /// The starting role (`active` or `passive`); usually given by
            /// `--mode`, since both instances share one file.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub mode: Option<Mode>,
            $( $(#[doc = $doc])* pub $name: $ty, )*
            pub targets: BTreeMap<String, TargetFile>,
            pub streams: BTreeMap<String, StreamFile>,
            /// The client library's section (zbridge-client); the bridge
            /// only checks it.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub client: Option<zbridge_client::Section>,
        }

        impl Default for File {
            fn default() -> Self {
                File {
                    mode: None,
                    $( $name: $default, )*
                    targets: BTreeMap::new(),
                    streams: BTreeMap::new(),
                    client: None,
                }
            }
        }

        /// A flag for every top-level key, same name with dashes.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct Overrides {
            $( $(#[doc = $doc])* #[arg(long, value_name = crate::teach::value_name(stringify!($name), stringify!($ty)))] pub $name: Option<$ty>, )*
        }

        impl Overrides {
            fn apply(&self, file: &mut File) {
                $( if let Some(value) = &self.$name { file.$name = value.clone(); } )*
            }
        }
    };
}

keys! {
    /// Frontend port of the active role (0: any free port, for tests).
    primary_port: u16 = defaults::PRIMARY_PORT;
    /// Frontend port of the passive role (0: any free port, for tests).
    secondary_port: u16 = defaults::SECONDARY_PORT;
    /// Stream PUB port of the active role (0: any free port, for tests).
    primary_pub_port: u16 = defaults::PRIMARY_PUB_PORT;
    /// Stream PUB port of the passive role (0: any free port, for tests).
    secondary_pub_port: u16 = defaults::SECONDARY_PUB_PORT;
    /// Messages queued for one stream subscriber before the bridge drops
    /// (and counts) what it cannot take.
    stream_hwm: i32 = 10_000;
    /// Seconds between heartbeats.
    heartbeat_interval: f64 = 1.0;
    /// Seconds without a heartbeat before the passive takes over.
    heartbeat_timeout: f64 = defaults::HEARTBEAT_TIMEOUT;
    /// Client library: rounds over all endpoints before a request fails.
    max_reconnect_attempts: u32 = defaults::MAX_RECONNECT_ATTEMPTS;
    /// Client library: seconds between probes of a failed endpoint.
    reconnect_delay: f64 = defaults::RECONNECT_DELAY;
    /// Endpoint of the `main_pc` target ("" for none).
    main_pc_addr: String = "tcp://127.0.0.1:5603".into();
    /// Endpoint of the `pc2` target ("" for none).
    pc2_addr: String = "tcp://127.0.0.1:5602".into();
    /// Address the frontend binds on.
    bind_host: String = "127.0.0.1".into();
    /// Host of the primary instance, as its peer and clients reach it.
    primary_host: String = defaults::HOST.into();
    /// Host of the secondary instance, as its peer and clients reach it.
    secondary_host: String = defaults::HOST.into();
    /// Heartbeat PUB port of the primary instance (0: any free port, for tests).
    primary_heartbeat_port: u16 = defaults::PRIMARY_HEARTBEAT_PORT;
    /// Heartbeat PUB port of the secondary instance (0: any free port, for tests).
    secondary_heartbeat_port: u16 = defaults::SECONDARY_HEARTBEAT_PORT;
    /// Seconds a heartbeat's timestamp may differ from this host's clock.
    heartbeat_max_skew: f64 = defaults::HEARTBEAT_MAX_SKEW;
    /// Shared secret that signs heartbeats ("": unsigned, or see auth_token_file
    /// and the ZBRIDGE_AUTH_TOKEN environment variable).
    auth_token: String = String::new();
    /// File holding the shared secret (first line).
    auth_token_file: String = String::new();
    /// The primary instance takes the active role back when it returns.
    preempt: bool = false;
    /// Address the monitoring HTTP server binds on.
    monitor_host: String = "127.0.0.1".into();
    /// Monitoring HTTP port of the primary instance (0: any free port).
    primary_monitor_port: u16 = 5620;
    /// Monitoring HTTP port of the secondary instance (0: any free port).
    secondary_monitor_port: u16 = 5621;
    /// Seconds a request may wait for its backend before a `timeout` reply.
    request_timeout: f64 = defaults::REQUEST_TIMEOUT;
    /// Largest request body in bytes; larger ones get `too_large`.
    max_message_bytes: usize = defaults::MAX_MESSAGE_BYTES;
    /// Most frames in a request body; more get `bad_frames`.
    max_frames: usize = 32;
    /// Largest frame libzmq accepts from a client before it cuts the
    /// connection (ZMQ_MAXMSGSIZE); 0: 16 x max_message_bytes.
    max_transport_bytes: usize = 0;
    /// Most requests in flight to one target; more get `backend_unavailable`.
    max_in_flight: usize = 10_000;
    /// Most bytes of requests a target's connection may hold unread by a
    /// hung backend (timed-out requests included); more get
    /// `backend_unavailable` at once. At least max_message_bytes; 0: 64 MiB,
    /// or 4 x max_message_bytes if that is more.
    max_queued_bytes: usize = 0;
    /// Seconds a stopping bridge waits for in-flight requests.
    drain_timeout: f64 = 5.0;
    /// Seconds a connection to a listening port (frontends, heartbeat and
    /// pub ports) has to finish its ZeroMQ handshake (ZMQ_HANDSHAKE_IVL)
    /// before it is closed: a peer that connects and says nothing holds a
    /// descriptor this long at most. Applies to ports bound after a reload.
    handshake_timeout: f64 = 5.0;
    /// Requests per second one client may send (0: no limit); more get
    /// `rate_limited`.
    rate_limit_per_client: f64 = 0.0;
    /// Requests one client may send at once (0: one second's worth).
    rate_limit_per_client_burst: f64 = 0.0;
    /// Requests per second for the whole bridge (0: no limit).
    rate_limit_global: f64 = 0.0;
    /// Requests the whole bridge takes at once (0: one second's worth).
    rate_limit_global_burst: f64 = 0.0;
    /// Client identities tracked by the per-client limit; beyond it, new
    /// clients share one bucket.
    rate_limit_clients: usize = 65_536;
    /// Consecutive failures of a target that open its circuit breaker.
    breaker_failure_threshold: u32 = 5;
    /// Seconds an open breaker fails fast before it lets one probe through.
    breaker_open_wait: f64 = defaults::BREAKER_OPEN_WAIT;
    /// The pair's CURVE secret key (Z85, mode 0600; PATH.pub beside it):
    /// CURVE on the frontends, heartbeats and pub ports ("": off).
    curve_secret_key_file: String = String::new();
    /// Directory of the client public keys admitted (one Z85 key per
    /// *.pub file), re-read on reload ("": any client that knows the
    /// bridge's public key).
    curve_clients: String = String::new();
    /// With CURVE on: a plain (unencrypted) frontend port held beside
    /// primary_port by the active, for clients not yet moved to CURVE (0: none).
    plain_primary_port: u16 = 0;
    /// With CURVE on: a plain frontend port beside secondary_port (0: none).
    plain_secondary_port: u16 = 0;
    /// Log line format: text or json.
    log_format: LogFormat = LogFormat::Text;
    /// Least severe level logged: error, warn, info, debug or trace.
    log_level: LogLevel = LogLevel::Info;
}

/// Where a running bridge's config comes from: the file (re-read on
/// reload) with the command-line flags applied on top, every time.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: Option<std::path::PathBuf>,
    pub overrides: Overrides,
    pub mode: Option<Mode>,
}

impl Source {
    /// The config at start: the file (or the defaults) with the flags on top.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.merged(File::load(self.path.as_deref())?).validate()
    }

    /// The config a reload applies: validated as at start, and refused
    /// when the file has no keys (saved empty, only comments). Read off the
    /// relay thread (`relay::loader`); [`Config::replaces`] is checked
    /// when it is applied.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let file = match &self.path {
            None => File::default(),
            Some(path) => {
                let text = read_text(path)?;
                if !has_keys(&text) {
                    return Err(ConfigError::new(
                        "",
                        format!(
                            "{} has no keys (empty, or only blanks and comments): not applied; an emptied file is more likely a mistake than a wish for the defaults",
                            path.display()
                        ),
                    ));
                }
                File::parse(path, &text)?
            }
        };
        self.merged(file).validate()
    }

    fn merged(&self, file: File) -> File {
        let mut file = file.with_overrides(&self.overrides);
        if self.mode.is_some() {
            file.mode = self.mode;
        }
        file
    }

    /// The file's size and modification time now, if there is a file.
    pub fn stamp(&self) -> Option<Stamp> {
        let metadata = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some(Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok()?,
        })
    }
}

/// What the file watcher compares: a file being written changes one or
/// the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub modified: std::time::SystemTime,
}

/// Whether a TOML text sets anything at all; a text that does not parse
/// counts as having keys, so that the parser names what is wrong.
fn has_keys(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).map_or(true, |table| !table.is_empty())
}

/// The config file's text: a regular file of at most
/// [`MAX_CONFIG_FILE_BYTES`](zbridge_client::rules::MAX_CONFIG_FILE_BYTES),
/// opened without blocking (a FIFO or `/dev/zero` is refused at once).
fn read_text(path: &Path) -> Result<String, ConfigError> {
    zbridge_client::rules::read_config_file(path)
}

/// The two targets that the seed's `main_pc_addr` and `pc2_addr` define.
const SEED_TARGETS: [&str; 2] = ["main_pc", "pc2"];

/// A validated target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub endpoint: String,
    pub request_timeout: Duration,
    pub curve_server_key: Option<PublicKey>,
}

/// A validated stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub name: String,
    pub endpoint: String,
    pub curve_server_key: Option<PublicKey>,
    /// Topics under these prefixes keep their last value (empty: off).
    pub last_value: Vec<Vec<u8>>,
    pub last_value_max_topics: usize,
    pub last_value_max_bytes: usize,
}

/// A validated configuration, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: Option<Mode>,
    pub primary_host: String,
    pub secondary_host: String,
    pub primary_heartbeat_port: u16,
    pub secondary_heartbeat_port: u16,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub heartbeat_max_skew: f64,
    /// The shared secret, from auth_token, auth_token_file or ZBRIDGE_AUTH_TOKEN.
    pub auth_token: Option<Vec<u8>>,
    pub preempt: bool,
    pub monitor_host: String,
    pub primary_monitor_port: u16,
    pub secondary_monitor_port: u16,
    pub primary_port: u16,
    pub secondary_port: u16,
    pub bind_host: String,
    pub targets: Vec<Target>,
    pub streams: Vec<Stream>,
    pub primary_pub_port: u16,
    pub secondary_pub_port: u16,
    pub stream_hwm: i32,
    pub limits: Limits,
    /// ZMQ_MAXMSGSIZE on the frontends.
    pub max_transport_bytes: usize,
    pub max_in_flight: usize,
    pub max_queued_bytes: usize,
    pub drain_timeout: Duration,
    pub handshake_timeout: Duration,
    pub rate_limit_per_client: Option<Rate>,
    pub rate_limit_global: Option<Rate>,
    pub rate_limit_clients: usize,
    pub breaker_failure_threshold: u32,
    pub breaker_open_wait: Duration,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// The pair's CURVE keys (`curve_secret_key_file`); `None`: no CURVE.
    pub curve: Option<KeyPair>,
    /// `curve_clients`, read (re-read on reload).
    pub curve_clients: Option<Clients>,
    /// Plain frontend ports beside the CURVE ones, by [`Port`] (0: none).
    pub plain_ports: [u16; 2],
}

/// The keys a running bridge cannot change (they name ports, hosts or its
/// identity): one list, so that detecting and keeping them cannot disagree.
macro_rules! restart_keys {
    ($($key:ident),* $(,)?) => {
        impl Config {
            /// The restart-only keys that differ in `other`.
            pub fn restart_keys_changed(&self, other: &Config) -> Vec<&'static str> {
                let mut changed = Vec::new();
                $( if self.$key != other.$key { changed.push(stringify!($key)); } )*
                changed
            }

            /// `other` with the restart-only keys kept as they are here.
            #[allow(clippy::clone_on_copy)]
            pub fn with_restart_keys_of(&self, other: Config) -> Config {
                Config { $( $key: self.$key.clone(), )* ..other }
            }
        }
    };
}

restart_keys!(
    mode,
    primary_port,
    secondary_port,
    bind_host,
    primary_host,
    secondary_host,
    primary_heartbeat_port,
    secondary_heartbeat_port,
    auth_token,
    monitor_host,
    primary_monitor_port,
    secondary_monitor_port,
    primary_pub_port,
    secondary_pub_port,
    streams,
    stream_hwm,
    log_format,
    curve,
    plain_ports,
);

impl Config {
    /// `handshake_timeout` as ZMQ_HANDSHAKE_IVL takes it (ms; a week at
    /// most, as validated, fits).
    pub fn handshake_ms(&self) -> i32 {
        i32::try_from(self.handshake_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Whether a reloaded config may replace `running`: not when it would
    /// leave the running bridge without any target.
    pub fn replaces(&self, running: &Config) -> Result<(), ConfigError> {
        if self.targets.is_empty() && !running.targets.is_empty() {
            return Err(ConfigError::new(
                "targets",
                "the new config has no target: it would remove every target the bridge serves, so it is not applied; keep at least one",
            ));
        }
        Ok(())
    }

    /// The instance's home role.
    pub fn node(&self) -> Node {
        match self.mode {
            Some(Mode::Passive) => Node::Secondary,
            _ => Node::Primary,
        }
    }

    /// The host this instance's peer runs on.
    pub fn peer_host(&self) -> &str {
        match self.node() {
            Node::Primary => &self.secondary_host,
            Node::Secondary => &self.primary_host,
        }
    }

    /// The host clients reach this instance on.
    pub fn own_host(&self) -> &str {
        match self.node() {
            Node::Primary => &self.primary_host,
            Node::Secondary => &self.secondary_host,
        }
    }

    /// This instance's heartbeat PUB port, and its peer's.
    pub fn heartbeat_ports(&self) -> (u16, u16) {
        match self.node() {
            Node::Primary => (self.primary_heartbeat_port, self.secondary_heartbeat_port),
            Node::Secondary => (self.secondary_heartbeat_port, self.primary_heartbeat_port),
        }
    }

    /// Where this instance's monitoring HTTP server binds, as HOST:PORT.
    pub fn monitor_bind(&self) -> String {
        let port = match self.node() {
            Node::Primary => self.primary_monitor_port,
            Node::Secondary => self.secondary_monitor_port,
        };
        match self.monitor_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{}:{port}", self.monitor_host),
        }
    }

    pub fn frontend_port(&self, port: Port) -> u16 {
        match port {
            Port::Primary => self.primary_port,
            Port::Secondary => self.secondary_port,
        }
    }

    /// The frontend endpoint to bind for a port (`*` port when 0).
    pub fn frontend_endpoint(&self, port: Port) -> String {
        tcp_endpoint(&self.bind_host, self.frontend_port(port))
    }

    /// The plain endpoint bound beside a CURVE frontend port, if any.
    pub fn plain_endpoint(&self, port: Port) -> Option<String> {
        match self.plain_ports[port.index()] {
            0 => None,
            number => Some(tcp_endpoint(&self.bind_host, number)),
        }
    }

    /// The stream PUB endpoint that goes with a frontend port.
    pub fn pub_endpoint(&self, port: Port) -> String {
        let number = match port {
            Port::Primary => self.primary_pub_port,
            Port::Secondary => self.secondary_pub_port,
        };
        tcp_endpoint(&self.bind_host, number)
    }
}

impl File {
    /// Read a config file; `None` means built-in defaults only.
    pub fn load(path: Option<&Path>) -> Result<File, ConfigError> {
        match path {
            None => Ok(File::default()),
            Some(path) => File::parse(path, &read_text(path)?),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<File, ConfigError> {
        File::from_toml_str(text)
            .map_err(|e| ConfigError::new(e.key, format!("{} (in {})", e.message, path.display())))
    }

    pub fn from_toml_str(text: &str) -> Result<File, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            // The error's span points at the key or at its value: the key
            // is what stands before `=` on that line.
            let key = e
                .span()
                .and_then(|span| {
                    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
                    let line = text.get(line_start..)?.lines().next()?;
                    let key = line.split('=').next()?.trim();
                    Some(key.trim_matches(['[', ']']).trim().to_string())
                })
                .unwrap_or_default();
            let line = e
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            let said = crate::teach::teach(e.message());
            let message = match line {
                Some(n) => format!("{said} (line {n})"),
                None => said,
            };
            ConfigError::new(key, message)
        })
    }

    pub fn with_overrides(mut self, overrides: &Overrides) -> File {
        overrides.apply(&mut self);
        self
    }

    /// Check every key and build the runtime configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if let Some(client) = &self.client {
            client
                .check()
                .map_err(|e| ConfigError::new(format!("client.{}", e.key), e.message))?;
        }
        let request_timeout = positive_seconds("request_timeout", self.request_timeout)?;
        let heartbeat_interval = positive_seconds("heartbeat_interval", self.heartbeat_interval)?;
        let heartbeat_timeout = positive_seconds("heartbeat_timeout", self.heartbeat_timeout)?;
        let ports = [
            ("primary_port", self.primary_port),
            ("secondary_port", self.secondary_port),
            ("primary_heartbeat_port", self.primary_heartbeat_port),
            ("secondary_heartbeat_port", self.secondary_heartbeat_port),
            ("primary_monitor_port", self.primary_monitor_port),
            ("secondary_monitor_port", self.secondary_monitor_port),
            ("primary_pub_port", self.primary_pub_port),
            ("secondary_pub_port", self.secondary_pub_port),
            ("plain_primary_port", self.plain_primary_port),
            ("plain_secondary_port", self.plain_secondary_port),
        ];
        for (i, (key, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == *port && *port != 0) {
                return Err(ConfigError::new(
                    *key,
                    format!("must differ from {other} ({port}): each port has one owner"),
                ));
            }
        }
        if heartbeat_timeout <= heartbeat_interval {
            return Err(ConfigError::new(
                "heartbeat_timeout",
                format!(
                    "must be longer than heartbeat_interval ({} s), or every pause between two heartbeats is a failover; got {} s",
                    self.heartbeat_interval, self.heartbeat_timeout
                ),
            ));
        }
        positive_seconds("reconnect_delay", self.reconnect_delay)?;
        at_least(
            "max_reconnect_attempts",
            self.max_reconnect_attempts as usize,
            1,
        )?;
        for (key, value) in [
            ("bind_host", &self.bind_host),
            ("primary_host", &self.primary_host),
            ("secondary_host", &self.secondary_host),
            ("monitor_host", &self.monitor_host),
        ] {
            host(key, value)?;
        }
        at_least("max_message_bytes", self.max_message_bytes, 1)?;
        at_least("max_frames", self.max_frames, 1)?;
        at_least("max_in_flight", self.max_in_flight, 1)?;
        if self.stream_hwm < 1 {
            return Err(ConfigError::new(
                "stream_hwm",
                format!(
                    "must be at least 1 message (0 would let a stalled subscriber grow the bridge without bound); got {}",
                    self.stream_hwm
                ),
            ));
        }
        at_least("rate_limit_clients", self.rate_limit_clients, 1)?;
        at_least(
            "breaker_failure_threshold",
            self.breaker_failure_threshold as usize,
            1,
        )?;
        let heartbeat_max_skew =
            positive_seconds("heartbeat_max_skew", self.heartbeat_max_skew)?.as_secs_f64();
        let (curve, curve_clients) = self.curve()?;
        Ok(Config {
            mode: self.mode,
            primary_host: self.primary_host.clone(),
            secondary_host: self.secondary_host.clone(),
            primary_heartbeat_port: self.primary_heartbeat_port,
            secondary_heartbeat_port: self.secondary_heartbeat_port,
            heartbeat_interval,
            heartbeat_timeout,
            heartbeat_max_skew,
            auth_token: zbridge_client::rules::auth_token(&self.auth_token, &self.auth_token_file)?,
            preempt: self.preempt,
            monitor_host: self.monitor_host.clone(),
            primary_monitor_port: self.primary_monitor_port,
            secondary_monitor_port: self.secondary_monitor_port,
            primary_port: self.primary_port,
            secondary_port: self.secondary_port,
            bind_host: self.bind_host.clone(),
            targets: targets_fit(self.targets(request_timeout)?, open_files_limit())?,
            streams: self.streams()?,
            primary_pub_port: self.primary_pub_port,
            secondary_pub_port: self.secondary_pub_port,
            stream_hwm: self.stream_hwm,
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                max_frames: self.max_frames,
            },
            max_transport_bytes: max_transport_bytes(
                self.max_transport_bytes,
                self.max_message_bytes,
            )?,
            max_in_flight: self.max_in_flight,
            max_queued_bytes: match self.max_queued_bytes {
                0 => self.max_message_bytes.saturating_mul(4).max(64 << 20),
                n if n < self.max_message_bytes => {
                    return Err(ConfigError::new(
                        "max_queued_bytes",
                        format!(
                            "must be at least max_message_bytes ({}), or a request of that size could never be sent; got {n}",
                            self.max_message_bytes
                        ),
                    ))
                }
                n => n,
            },
            drain_timeout: seconds_or_zero("drain_timeout", self.drain_timeout)?,
            handshake_timeout: positive_seconds("handshake_timeout", self.handshake_timeout)?,
            rate_limit_per_client: rate(
                "rate_limit_per_client",
                self.rate_limit_per_client,
                self.rate_limit_per_client_burst,
            )?,
            rate_limit_global: rate(
                "rate_limit_global",
                self.rate_limit_global,
                self.rate_limit_global_burst,
            )?,
            rate_limit_clients: self.rate_limit_clients,
            breaker_failure_threshold: self.breaker_failure_threshold,
            breaker_open_wait: positive_seconds("breaker_open_wait", self.breaker_open_wait)?,
            log_format: self.log_format,
            log_level: self.log_level,
            curve,
            curve_clients,
            plain_ports: [self.plain_primary_port, self.plain_secondary_port],
        })
    }

    /// The pair's keys and the allowed clients; every CURVE key needs the
    /// pair's key, and a build whose libzmq lacks CURVE is told so.
    #[allow(clippy::type_complexity)]
    fn curve(&self) -> Result<(Option<KeyPair>, Option<Clients>), ConfigError> {
        let needs_pair = |key: &str, what: &str| {
            ConfigError::new(
                key,
                format!("{what} needs curve_secret_key_file (the pair's key, from `zbridge keygen PATH`)"),
            )
        };
        if self.curve_secret_key_file.is_empty() {
            if !self.curve_clients.is_empty() {
                return Err(needs_pair("curve_clients", "a list of allowed clients"));
            }
            for (key, port) in [
                ("plain_primary_port", self.plain_primary_port),
                ("plain_secondary_port", self.plain_secondary_port),
            ] {
                if port != 0 {
                    return Err(needs_pair(key, "a plain port beside a CURVE one"));
                }
            }
            let linked = self
                .targets
                .iter()
                .map(|(name, t)| (format!("targets.{name}"), &t.curve_server_key))
                .chain(
                    self.streams
                        .iter()
                        .map(|(name, s)| (format!("streams.{name}"), &s.curve_server_key)),
                );
            for (key, server) in linked {
                if server.is_some() {
                    return Err(needs_pair(
                        &format!("{key}.curve_server_key"),
                        "a CURVE link (the bridge connects with the pair's key)",
                    ));
                }
            }
            return Ok((None, None));
        }
        let key = "curve_secret_key_file";
        if !crate::curve::available() {
            return Err(ConfigError::new(
                key,
                "this zbridge's libzmq was built without CURVE (zmq::has(\"curve\") is false): rebuild it as the README says",
            ));
        }
        let pair = KeyPair::read(Path::new(&self.curve_secret_key_file), key)?;
        let clients = match self.curve_clients.as_str() {
            "" => None,
            dir => {
                let read = read_clients(Path::new(dir), "curve_clients")?;
                Some(Clients {
                    dir: dir.into(),
                    keys: read.keys,
                    refused: read.refused,
                })
            }
        };
        Ok((Some(pair), clients))
    }

    fn targets(&self, default_timeout: Duration) -> Result<Vec<Target>, ConfigError> {
        let mut targets = Vec::new();
        for (name, addr) in SEED_TARGETS
            .iter()
            .zip([&self.main_pc_addr, &self.pc2_addr])
        {
            let key = format!("{name}_addr");
            if self.targets.contains_key(*name) {
                return Err(ConfigError::new(
                    format!("targets.{name}"),
                    format!("the target `{name}` is defined by `{key}`; set that key instead of a [targets.{name}] table"),
                ));
            }
            if !addr.is_empty() {
                targets.push(Target {
                    name: name.to_string(),
                    endpoint: endpoint(&key, addr)?,
                    request_timeout: default_timeout,
                    curve_server_key: None,
                });
            }
        }
        for (name, target) in &self.targets {
            let key = format!("targets.{name}");
            name_rule(&key, "target", name)?;
            let request_timeout = match target.request_timeout {
                Some(s) => positive_seconds(&format!("{key}.request_timeout"), s)?,
                None => default_timeout,
            };
            targets.push(Target {
                name: name.clone(),
                endpoint: endpoint(&format!("{key}.endpoint"), &target.endpoint)?,
                request_timeout,
                curve_server_key: server_key(&key, &target.curve_server_key)?,
            });
        }
        // Requests name targets without regard to case.
        for (i, target) in targets.iter().enumerate() {
            if let Some(other) = targets[..i]
                .iter()
                .find(|t| t.name.eq_ignore_ascii_case(&target.name))
            {
                return Err(ConfigError::new(
                    format!("targets.{}", target.name),
                    format!(
                        "target names match without regard to case, so `{}` is the same target as `{}`: rename one",
                        target.name, other.name
                    ),
                ));
            }
        }
        Ok(targets)
    }

    fn streams(&self) -> Result<Vec<Stream>, ConfigError> {
        self.streams
            .iter()
            .map(|(name, stream)| {
                let key = format!("streams.{name}");
                name_rule(&key, "stream", name)?;
                let last_value = stream.last_value.prefixes();
                if last_value.len() > MAX_LAST_VALUE_PREFIXES {
                    return Err(ConfigError::new(
                        format!("{key}.last_value"),
                        format!(
                            "at most {MAX_LAST_VALUE_PREFIXES} prefixes (true keeps every topic)"
                        ),
                    ));
                }
                let bound = |field: &str, value: Option<usize>, default: usize| match value {
                    Some(0) => Err(ConfigError::new(
                        format!("{key}.{field}"),
                        "must be at least 1".to_string(),
                    )),
                    value => Ok(value.unwrap_or(default)),
                };
                Ok(Stream {
                    name: name.clone(),
                    endpoint: endpoint(&format!("{key}.endpoint"), &stream.endpoint)?,
                    curve_server_key: server_key(&key, &stream.curve_server_key)?,
                    last_value,
                    last_value_max_topics: bound(
                        "last_value_max_topics",
                        stream.last_value_max_topics,
                        LAST_VALUE_MAX_TOPICS,
                    )?,
                    last_value_max_bytes: bound(
                        "last_value_max_bytes",
                        stream.last_value_max_bytes,
                        LAST_VALUE_MAX_BYTES,
                    )?,
                })
            })
            .collect()
    }

    /// The effective configuration as TOML, as `check-config` prints it,
    /// with the secret replaced.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth_token.is_empty() {
            shown.auth_token = "<redacted>".into();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// A `[targets.NAME]` or `[streams.NAME]` table's `curve_server_key`.
fn server_key(table: &str, key: &Option<String>) -> Result<Option<PublicKey>, ConfigError> {
    key.as_deref()
        .map(|text| {
            PublicKey::from_z85(text)
                .map_err(|why| ConfigError::new(format!("{table}.curve_server_key"), why))
        })
        .transpose()
}

/// File descriptors one target takes: its DEALER's mailbox, its connection
/// and libzmq's own for it. Measured with `/proc/PID/fd`: 29 with no
/// target, 329 with 100 connected ones, 1529 with 500.
const FDS_PER_TARGET: u64 = 3;
/// Targets one ZeroMQ context holds: libzmq's default of 1023 sockets
/// (ZMQ_MAX_SOCKETS) less the bridge's own (frontends and their monitors,
/// heartbeats) and room for targets re-pointed by a reload, which hold two
/// sockets until the old one is drained.
const MAX_TARGETS: usize = 1000;
/// `last_value` prefixes per stream, at most: each upstream message is
/// matched against all of them.
const MAX_LAST_VALUE_PREFIXES: usize = 64;

/// The targets, if the bridge can open them all: at most [`MAX_TARGETS`],
/// and at most half of the open-file limit (the other half is kept for
/// client connections, the monitor and streams).
fn targets_fit(targets: Vec<Target>, open_files: Option<u64>) -> Result<Vec<Target>, ConfigError> {
    let by_files = open_files.map_or(usize::MAX, |limit| {
        usize::try_from(limit / 2 / FDS_PER_TARGET).unwrap_or(usize::MAX)
    });
    let most = by_files.min(MAX_TARGETS);
    if targets.len() <= most {
        return Ok(targets);
    }
    let files = match open_files {
        Some(limit) => format!(
            "each takes {FDS_PER_TARGET} file descriptors and may use half of this process's open-file limit of {limit} (RLIMIT_NOFILE: `ulimit -n`, or LimitNOFILE= in a systemd unit), which is enough for {by_files}; "
        ),
        None => String::new(),
    };
    Err(ConfigError::new(
        "targets",
        format!(
            "{} targets, but at most {most} can be opened: {files}one ZeroMQ context holds at most {MAX_TARGETS}",
            targets.len()
        ),
    ))
}

/// This process's soft limit on open files, from `/proc/self/limits`;
/// `None` where that cannot be read or it says "unlimited".
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Target and stream names: what a log line, a metric label and a stamp
/// can carry as they are.
fn name_rule(key: &str, what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ConfigError::new(
            key,
            format!("a {what} name is 1 to 64 letters, digits, `_`, `-` or `.`"),
        ));
    }
    Ok(())
}

/// A duration key where 0 means "not at all".
fn seconds_or_zero(key: &str, value: f64) -> Result<Duration, ConfigError> {
    if value == 0.0 {
        return Ok(Duration::ZERO);
    }
    positive_seconds(key, value).map_err(|_| {
        ConfigError::new(
            key,
            format!("must be 0 to {MAX_SECONDS} seconds (a week); got {value:?}"),
        )
    })
}

/// The slowest rate limit, in requests per second: one request in 1000 s.
/// Slower, the wait a refused client is told of outgrows any timeout.
const MIN_RATE: f64 = 0.001;
/// The fastest rate limit and the largest burst: far above what one relay
/// thread can carry, and small enough that a bucket's arithmetic stays exact.
const MAX_RATE: f64 = 1e9;

/// A rate limit from its two keys; `None` when the rate is 0.
fn rate(key: &str, per_second: f64, burst: f64) -> Result<Option<Rate>, ConfigError> {
    for (key, value, zero, min, unit) in [
        (
            key.to_string(),
            per_second,
            "no limit",
            MIN_RATE,
            "requests per second",
        ),
        (
            format!("{key}_burst"),
            burst,
            "one second's worth",
            1.0,
            "requests",
        ),
    ] {
        if !(value == 0.0 || (min..=MAX_RATE).contains(&value)) {
            return Err(ConfigError::new(
                key,
                format!("must be 0 ({zero}) or {min} to {MAX_RATE} {unit}; got {value:?}"),
            ));
        }
    }
    if per_second == 0.0 {
        return Ok(None);
    }
    let burst = if burst == 0.0 { per_second } else { burst };
    if burst < 1.0 {
        return Err(ConfigError::new(
            format!("{key}_burst"),
            format!("must be at least 1 request, or no request could ever pass; got {burst}"),
        ));
    }
    Ok(Some(Rate { per_second, burst }))
}

fn at_least(key: &str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            key,
            format!("must be at least {min}; got {value:?}"),
        ));
    }
    Ok(())
}

fn host(key: &str, value: &str) -> Result<(), ConfigError> {
    let is_name = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if value == "*" || value.parse::<IpAddr>().is_ok() || is_name {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be an IP address, a host name or `*`; got {value:?}"),
        ))
    }
}

/// A backend endpoint: `tcp://HOST:PORT` or `ipc://PATH`.
fn endpoint(key: &str, value: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            key,
            format!("{why}: expected tcp://HOST:PORT or ipc://PATH, got {value:?}"),
        )
    };
    if let Some(path) = value.strip_prefix("ipc://") {
        return if path.is_empty() {
            Err(bad("empty ipc path"))
        } else {
            Ok(value.to_string())
        };
    }
    let rest = value
        .strip_prefix("tcp://")
        .ok_or_else(|| bad("unsupported transport"))?;
    let (host_part, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    }
    let host_part = host_part
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host_part);
    host(key, host_part).map_err(|_| bad("bad host"))?;
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match File::from_toml_str(text).and_then(|f| f.validate()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn last_values_take_true_or_prefixes_and_bounds_of_at_least_one() {
        let stream = |keys: &str| {
            let text = format!("[streams.s]\nendpoint = \"tcp://127.0.0.1:9\"\n{keys}");
            File::from_toml_str(&text)
                .and_then(|f| f.validate())
                .map(|c| c.streams[0].clone())
        };
        let off = stream("").unwrap();
        assert!(off.last_value.is_empty());
        assert_eq!(
            (off.last_value_max_topics, off.last_value_max_bytes),
            (10_000, 64 << 20)
        );
        assert!(stream("last_value = false").unwrap().last_value.is_empty());
        assert_eq!(stream("last_value = true").unwrap().last_value, [b""]);
        let listed =
            stream("last_value = [\"b.\", \"a.\", \"b.\"]\nlast_value_max_topics = 5").unwrap();
        assert_eq!(listed.last_value, [b"a.".to_vec(), b"b.".to_vec()]);
        assert_eq!(listed.last_value_max_topics, 5);
        let e = stream("last_value = true\nlast_value_max_bytes = 0").unwrap_err();
        assert_eq!(e.key, "streams.s.last_value_max_bytes");
        let many: Vec<String> = (0..65).map(|i| format!("\"p{i}\"")).collect();
        let e = stream(&format!("last_value = [{}]", many.join(","))).unwrap_err();
        assert_eq!(e.key, "streams.s.last_value");
        assert!(stream("last_value = 3").is_err());
        // check-config shows the keys only where they are set.
        let shown = File::from_toml_str("[streams.s]\nendpoint = \"tcp://127.0.0.1:9\"\n")
            .unwrap()
            .to_toml();
        assert!(!shown.contains("last_value"), "{shown}");
    }

    #[test]
    fn defaults_reach_only_loopback() {
        let config = File::default().validate().unwrap();
        assert_eq!(config.bind_host, "127.0.0.1");
        assert_eq!(config.primary_port, 5600);
        assert_eq!(config.secondary_port, 5601);
        assert_eq!(config.targets.len(), 2);
        for t in &config.targets {
            assert!(t.endpoint.starts_with("tcp://127.0.0.1:"), "{t:?}");
            assert_eq!(t.request_timeout, Duration::from_secs(5));
        }
    }

    #[test]
    fn targets_tables_and_per_target_timeouts() {
        let f = File::from_toml_str(
            r#"
            pc2_addr = ""
            request_timeout = 2.0
            [targets.model-router]
            endpoint = "tcp://[::1]:7000"
            request_timeout = 0.5
            "#,
        )
        .unwrap();
        let c = f.validate().unwrap();
        let names: Vec<_> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["main_pc", "model-router"]);
        assert_eq!(c.targets[0].request_timeout, Duration::from_secs(2));
        assert_eq!(c.targets[1].request_timeout, Duration::from_millis(500));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let f = File::from_toml_str("primary_port = 7000").unwrap();
        let o = Overrides {
            primary_port: Some(7100),
            ..Overrides::default()
        };
        assert_eq!(f.with_overrides(&o).validate().unwrap().primary_port, 7100);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(err("primry_port = 1").key, "primry_port");
        assert_eq!(err("primary_port = \"x\"").key, "primary_port");
        assert_eq!(err("primary_port = 70000").key, "primary_port");
        assert_eq!(err("heartbeat_timeout = 0.5").key, "heartbeat_timeout");
        assert_eq!(err("request_timeout = -1").key, "request_timeout");
        assert_eq!(err("secondary_port = 5600").key, "secondary_port");
        assert_eq!(err("pc2_addr = \"192.0.2.1:5\"").key, "pc2_addr");
        assert_eq!(err("pc2_addr = \"tcp://h:0\"").key, "pc2_addr");
        assert_eq!(err("bind_host = \"a b\"").key, "bind_host");
        assert_eq!(err("max_frames = 0").key, "max_frames");
        assert_eq!(
            err("max_message_bytes = 100\nmax_transport_bytes = 50").key,
            "max_transport_bytes"
        );
        assert_eq!(err("rate_limit_global = -1").key, "rate_limit_global");
        assert_eq!(
            err("rate_limit_per_client = 0.5").key,
            "rate_limit_per_client_burst"
        );
        assert_eq!(
            err("[targets.pc2]\nendpoint = \"tcp://127.0.0.1:1\"").key,
            "targets.pc2"
        );
        assert_eq!(
            err("[targets.\"a b\"]\nendpoint = \"tcp://127.0.0.1:1\"").key,
            "targets.a b"
        );
        assert_eq!(
            err("[targets.x]\nendpoint = \"tcp://127.0.0.1:1\"\nrequest_timeout = 0").key,
            "targets.x.request_timeout"
        );
        let e = err("heartbeat_timeout = 0.5");
        assert!(e.message.contains("heartbeat_interval"), "{e}");
        assert_eq!(err("[client]\nhold_down = 0").key, "client.hold_down");
        assert_eq!(
            err("[targets.PC2]\nendpoint = \"tcp://127.0.0.1:1\"").key,
            "targets.PC2"
        );
        assert_eq!(
            err("[targets.a]\nendpoint = \"tcp://127.0.0.1:1\"\n[targets.A]\nendpoint = \"tcp://127.0.0.1:2\"").key,
            "targets.a"
        );
        assert_eq!(err("[client]\nholddown = 1").key, "holddown");
    }

    #[test]
    fn durations_and_rates_are_bounded_to_what_the_clock_arithmetic_takes() {
        for key in [
            "heartbeat_interval",
            "heartbeat_timeout",
            "request_timeout",
            "drain_timeout",
            "handshake_timeout",
            "reconnect_delay",
            "heartbeat_max_skew",
            "breaker_open_wait",
        ] {
            for value in ["1e19", "604801.0", "inf", "nan"] {
                let e = err(&format!("{key} = {value}"));
                assert_eq!(e.key, key, "{key} = {value}: {e}");
                assert!(e.message.contains("604800"), "{e}");
            }
        }
        let e = err("[targets.x]\nendpoint = \"tcp://127.0.0.1:1\"\nrequest_timeout = 1e19");
        assert_eq!(e.key, "targets.x.request_timeout");
        assert_eq!(err("[client]\nhold_down = 1e19").key, "client.hold_down");
        for key in ["rate_limit_per_client", "rate_limit_global"] {
            for value in ["1e-300", "0.0009", "2e9", "inf", "nan"] {
                let e = err(&format!("{key} = {value}"));
                assert_eq!(e.key, key, "{key} = {value}: {e}");
                assert!(e.message.contains("0.001 to 1000000000"), "{e}");
            }
            assert_eq!(
                err(&format!("{key}_burst = 1e10")).key,
                format!("{key}_burst")
            );
        }
        // At the bounds: accepted, and a drain of 0 is no drain.
        let c = File::from_toml_str(
            "heartbeat_interval = 604799.0\nheartbeat_timeout = 604800.0\nrequest_timeout = 604800.0\n\
             drain_timeout = 0.0\nrate_limit_per_client = 0.001\nrate_limit_per_client_burst = 1.0\n\
             rate_limit_global = 1e9\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(604_800));
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert_eq!(c.rate_limit_global.unwrap().burst, 1e9);
    }

    #[test]
    fn the_token_file_must_be_a_small_regular_file() {
        for (path, why) in [
            ("/dev/zero", "a character device"),
            ("/tmp", "a directory"),
            ("/nonexistent/token", "cannot read"),
        ] {
            let e = err(&format!("auth_token_file = \"{path}\""));
            assert_eq!(e.key, "auth_token_file");
            assert!(e.message.contains(why), "{e}");
        }
        let e = err("auth_token = \"a\"\nauth_token_file = \"/etc/hostname\"");
        assert_eq!(e.key, "auth_token_file");
        assert!(e.message.contains("not both"), "{e}");
    }

    #[test]
    fn targets_are_bounded_by_the_open_file_limit_and_the_context() {
        let targets = |n: usize| -> Vec<Target> {
            (0..n)
                .map(|i| Target {
                    name: format!("t{i}"),
                    endpoint: "tcp://127.0.0.1:1".into(),
                    request_timeout: Duration::from_secs(1),
                    curve_server_key: None,
                })
                .collect()
        };
        assert_eq!(targets_fit(targets(170), Some(1024)).unwrap().len(), 170);
        let e = targets_fit(targets(171), Some(1024)).unwrap_err();
        assert_eq!(e.key, "targets");
        assert!(e.message.starts_with("171 targets, but at most 170"), "{e}");
        assert!(e.message.contains("open-file limit of 1024"), "{e}");
        assert_eq!(targets_fit(targets(1000), None).unwrap().len(), 1000);
        let e = targets_fit(targets(1001), None).unwrap_err();
        assert!(
            e.message.contains("one ZeroMQ context holds at most 1000"),
            "{e}"
        );
        assert!(targets_fit(targets(1001), Some(1 << 20)).is_err());
    }

    #[test]
    fn the_open_file_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max stack size            8388608              unlimited            bytes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files(limits), Some(1024));
        assert_eq!(
            parse_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(parse_open_files(""), None);
        assert!(open_files_limit().is_some(), "Linux has /proc/self/limits");
    }

    #[test]
    fn a_reload_refuses_a_file_without_keys_or_without_targets_or_a_fifo() {
        let path = std::env::temp_dir().join(format!("zbridge-reload-{}.toml", std::process::id()));
        let source = Source {
            path: Some(path.clone()),
            overrides: Overrides::default(),
            mode: None,
        };
        let running = File::default().validate().unwrap();
        for empty in ["", "\n  \n", "# only a comment\n\n# and another\n"] {
            std::fs::write(&path, empty).unwrap();
            assert!(
                source.load().is_ok(),
                "at start, no keys means the defaults"
            );
            let e = source.reload().unwrap_err();
            assert_eq!(e.key, "");
            assert!(e.message.contains("has no keys"), "{e}");
        }
        std::fs::write(&path, "main_pc_addr = \"\"\npc2_addr = \"\"\n").unwrap();
        let none = source.reload().unwrap();
        assert_eq!(none.replaces(&running).unwrap_err().key, "targets");
        let idle = source.load().unwrap();
        assert!(idle.targets.is_empty());
        assert!(
            none.replaces(&idle).is_ok(),
            "a bridge without targets stays so"
        );
        std::fs::write(&path, "log_level = \"debug\"\n").unwrap();
        let debug = source.reload().unwrap();
        assert!(debug.replaces(&running).is_ok());
        assert_eq!(debug.log_level, LogLevel::Debug);
        // A FIFO at the path: refused at once, never waited on for a writer.
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let e = source.reload().unwrap_err();
        assert!(e.message.contains("is a FIFO"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let f =
            File::from_toml_str("mode = \"passive\"\n[targets.x]\nendpoint = \"ipc:///tmp/x\"\n[client]\nhold_down = 1.5\n")
                .unwrap();
        assert_eq!(File::from_toml_str(&f.to_toml()).unwrap(), f);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever a config file holds, loading it never panics, and a
        /// refusal names a key or says what is wrong.
        #[test]
        fn arbitrary_files_are_accepted_or_refused_by_key(text in "(?s).{0,300}") {
            if let Err(e) = File::from_toml_str(&text).and_then(|f| f.validate()) {
                prop_assert!(!e.message.is_empty());
            }
        }

        /// Every top-level key with a value of any type: no panic, and a
        /// refusal names that key.
        #[test]
        fn arbitrary_values_for_any_key_are_accepted_or_refused_by_that_key(
            key in proptest::sample::select(vec![
                "primary_port", "secondary_port", "heartbeat_interval", "heartbeat_timeout",
                "pc2_addr", "bind_host", "request_timeout", "max_message_bytes", "max_frames",
                "rate_limit_per_client", "log_level", "preempt", "auth_token_file",
            ]),
            value in prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                "[a-z:/.0-9]{0,20}".prop_map(|v| format!("{v:?}")),
                Just("true".to_string()),
                Just("[1, 2]".to_string()),
                Just("{ a = 1 }".to_string()),
            ],
        ) {
            if let Err(e) = File::from_toml_str(&format!("{key} = {value}\n")).and_then(|f| f.validate()) {
                prop_assert!(
                    e.key == key || e.key.starts_with("heartbeat") || e.key == format!("{key}_burst"),
                    "{key} = {value}: {e}"
                );
            }
        }
    }

    #[test]
    fn tcp_endpoints_bracket_ipv6_and_star_port_zero() {
        assert_eq!(tcp_endpoint("::1", 5600), "tcp://[::1]:5600");
        assert_eq!(tcp_endpoint("127.0.0.1", 0), "tcp://127.0.0.1:*");
    }
}
