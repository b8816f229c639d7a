//! What a client needs to know: its bridges, its patience, its breakers.
//!
//! Built in code ([`ClientConfig::local`], then set fields), or read from
//! the bridge's own TOML file: the top-level bridge keys give the defaults
//! (`primary_host`:`primary_port`, then `secondary_host`:`secondary_port`;
//! the two heartbeat ports; the two pub ports; `heartbeat_timeout`; the
//! auth token; the bridges' CURVE public key, `curve_secret_key_file` +
//! `.pub`) and an optional `[client]` section overrides them.

use crate::curve::{self, ClientKeys, KeyPair, PublicKey};
use crate::rules::{self, defaults, seconds, tcp_endpoint as tcp, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Everything the client is told.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Bridge frontends in priority order.
    pub endpoints: Vec<String>,
    /// Heartbeat PUB endpoints of the bridges (empty: no heartbeat watch).
    pub heartbeat_endpoints: Vec<String>,
    /// Stream pub ports of the bridges, for a [`crate::Subscriber`].
    pub pub_endpoints: Vec<String>,
    /// How long one attempt waits for a bridge to answer before the
    /// request moves to the next bridge.
    pub request_timeout: Duration,
    /// Rounds over all endpoints before a request fails.
    pub max_reconnect_attempts: u32,
    /// Between probes of a failed endpoint (jittered by ±20%).
    pub reconnect_delay: Duration,
    /// How long a failed higher-priority endpoint must keep answering
    /// probes before the client switches back to it.
    pub hold_down: Duration,
    /// Heartbeat silence after which a bridge counts as gone.
    pub heartbeat_timeout: Duration,
    /// How far a heartbeat's timestamp may be from this host's clock.
    pub heartbeat_max_skew: Duration,
    /// The bridges' shared secret, to check heartbeat signatures.
    pub auth_token: Option<Vec<u8>>,
    /// CURVE on every socket to the bridges, when they have a key.
    pub curve: Option<ClientKeys>,
    pub breaker: BreakerConfig,
    /// The largest frame the bridges accept (their `max_transport_bytes`):
    /// a request with a larger one is refused before it is sent.
    pub max_transport_bytes: usize,
}

/// A failure-rate circuit breaker's settings (one per endpoint, one overall).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of failed outcomes in the window that opens the breaker.
    pub failure_rate: f64,
    /// How many recent outcomes the rate is taken over.
    pub window: u32,
    /// Fewest outcomes in the window before the rate counts.
    pub min_calls: u32,
    /// How long an open breaker fails fast before it goes half-open.
    pub open_wait: Duration,
    /// Requests let through while half-open; all must succeed to close it.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            window: 20,
            min_calls: 5,
            open_wait: Duration::from_secs(2),
            half_open_probes: 1,
        }
    }
}

impl ClientConfig {
    /// A pair on this host with the bridge's default ports and timings.
    pub fn local() -> ClientConfig {
        ClientConfig::from_keys(&BridgeKeys::default()).expect("the defaults are valid")
    }

    /// The settings of a command-line tool (`zbridge request`, `zbridge
    /// bench`): the bridges at `endpoints` if any are given, else those of
    /// the config `file`, else the local pair; `timeout`, if given, is the
    /// seconds each bridge gets to answer (else the config's).
    pub fn for_tool(
        endpoints: &[String],
        file: Option<&Path>,
        timeout: Option<f64>,
    ) -> Result<ClientConfig, ConfigError> {
        let mut client = match file {
            Some(path) => ClientConfig::from_file(path)?,
            None => ClientConfig::local(),
        };
        if !endpoints.is_empty() {
            client.endpoints = endpoints.to_vec();
            if file.is_none() {
                // Heartbeat ports of a guessed pair would be guesses too.
                client.heartbeat_endpoints.clear();
            }
        }
        if let Some(timeout) = timeout {
            client.request_timeout = seconds("--timeout", timeout)?;
        }
        Ok(client)
    }

    /// Read the bridge's config file (its `[client]` section, if any).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClientConfig, ConfigError> {
        let path = path.as_ref();
        let text = crate::rules::read_config_file(path)?;
        ClientConfig::from_toml_str(&text).map_err(|e| ConfigError {
            message: format!("{} (in {})", e.message, path.display()),
            ..e
        })
    }

    /// Read a bridge config's text (its `[client]` section, if any).
    pub fn from_toml_str(text: &str) -> Result<ClientConfig, ConfigError> {
        let keys: BridgeKeys =
            toml::from_str(text).map_err(|e| ConfigError::new("", e.message().to_string()))?;
        ClientConfig::from_keys(&keys)
    }

    fn from_keys(keys: &BridgeKeys) -> Result<ClientConfig, ConfigError> {
        let section = keys.client.clone().unwrap_or_default();
        section.check()?;
        let host = |h: &Option<String>| h.clone().unwrap_or_else(|| defaults::HOST.into());
        let (primary, secondary) = (host(&keys.primary_host), host(&keys.secondary_host));
        let endpoints = section.endpoints.clone().unwrap_or_else(|| {
            vec![
                tcp(
                    &primary,
                    keys.primary_port.unwrap_or(defaults::PRIMARY_PORT),
                ),
                tcp(
                    &secondary,
                    keys.secondary_port.unwrap_or(defaults::SECONDARY_PORT),
                ),
            ]
        });
        let heartbeat_endpoints = section.heartbeat_endpoints.clone().unwrap_or_else(|| {
            vec![
                tcp(
                    &primary,
                    keys.primary_heartbeat_port
                        .unwrap_or(defaults::PRIMARY_HEARTBEAT_PORT),
                ),
                tcp(
                    &secondary,
                    keys.secondary_heartbeat_port
                        .unwrap_or(defaults::SECONDARY_HEARTBEAT_PORT),
                ),
            ]
        });
        let pub_endpoints = section.pub_endpoints.clone().unwrap_or_else(|| {
            vec![
                tcp(
                    &primary,
                    keys.primary_pub_port.unwrap_or(defaults::PRIMARY_PUB_PORT),
                ),
                tcp(
                    &secondary,
                    keys.secondary_pub_port
                        .unwrap_or(defaults::SECONDARY_PUB_PORT),
                ),
            ]
        });
        let breaker = BreakerConfig::default();
        let token = rules::auth_token(
            keys.auth_token.as_deref().unwrap_or(""),
            keys.auth_token_file.as_deref().unwrap_or(""),
        )?;
        let curve = client_keys(keys, &section)?;
        let secs =
            |key: &str, value: Option<f64>, default: f64| seconds(key, value.unwrap_or(default));
        Ok(ClientConfig {
            endpoints,
            heartbeat_endpoints,
            pub_endpoints,
            // The bridge answers `timeout` itself after its request_timeout:
            // wait a second longer, so that silence means a bridge problem.
            request_timeout: match section.request_timeout {
                Some(value) => seconds("request_timeout", value)?,
                None => secs(
                    "request_timeout",
                    keys.request_timeout,
                    defaults::REQUEST_TIMEOUT,
                )?
                .saturating_add(Duration::from_secs(1)),
            },
            max_reconnect_attempts: section
                .max_reconnect_attempts
                .or(keys.max_reconnect_attempts)
                .unwrap_or(defaults::MAX_RECONNECT_ATTEMPTS),
            reconnect_delay: secs(
                "reconnect_delay",
                section.reconnect_delay.or(keys.reconnect_delay),
                defaults::RECONNECT_DELAY,
            )?,
            hold_down: secs("hold_down", section.hold_down, 2.0)?,
            heartbeat_timeout: secs(
                "heartbeat_timeout",
                section.heartbeat_timeout.or(keys.heartbeat_timeout),
                defaults::HEARTBEAT_TIMEOUT,
            )?,
            heartbeat_max_skew: secs(
                "heartbeat_max_skew",
                keys.heartbeat_max_skew,
                defaults::HEARTBEAT_MAX_SKEW,
            )?,
            auth_token: token,
            curve,
            breaker: BreakerConfig {
                failure_rate: section.breaker_failure_rate.unwrap_or(breaker.failure_rate),
                window: section.breaker_window.unwrap_or(breaker.window),
                min_calls: section.breaker_min_calls.unwrap_or(breaker.min_calls),
                open_wait: secs(
                    "breaker_open_wait",
                    section.breaker_open_wait.or(keys.breaker_open_wait),
                    defaults::BREAKER_OPEN_WAIT,
                )?,
                half_open_probes: section
                    .breaker_half_open_probes
                    .unwrap_or(breaker.half_open_probes),
            },
            max_transport_bytes: match section.max_transport_bytes {
                Some(n) => n,
                None => rules::max_transport_bytes(
                    keys.max_transport_bytes.unwrap_or(0),
                    keys.max_message_bytes
                        .unwrap_or(defaults::MAX_MESSAGE_BYTES),
                )?,
            },
        })
    }
}

/// The `[client]` section of a bridge config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Bridge frontends in priority order.
    pub endpoints: Option<Vec<String>>,
    /// Heartbeat PUB endpoints of the bridges.
    pub heartbeat_endpoints: Option<Vec<String>>,
    /// Stream pub ports of the bridges (default: primary_host:primary_pub_port,
    /// then secondary_host:secondary_pub_port).
    pub pub_endpoints: Option<Vec<String>>,
    /// Seconds one attempt waits for an answer (default: the bridge's
    /// request_timeout + 1).
    pub request_timeout: Option<f64>,
    /// Rounds over all endpoints before a request fails.
    pub max_reconnect_attempts: Option<u32>,
    /// Seconds between probes of a failed endpoint.
    pub reconnect_delay: Option<f64>,
    /// Seconds a returning endpoint must keep answering before use.
    pub hold_down: Option<f64>,
    /// Seconds of heartbeat silence that mark a bridge gone.
    pub heartbeat_timeout: Option<f64>,
    /// Share (0..1] of failures in the window that opens a breaker.
    pub breaker_failure_rate: Option<f64>,
    /// Outcomes the failure rate is taken over.
    pub breaker_window: Option<u32>,
    /// Fewest outcomes before the rate counts.
    pub breaker_min_calls: Option<u32>,
    /// Seconds an open breaker fails fast.
    pub breaker_open_wait: Option<f64>,
    /// Requests let through while half-open.
    pub breaker_half_open_probes: Option<u32>,
    /// The bridges' CURVE public key, Z85 (default: the content of the
    /// bridge's `curve_secret_key_file` + `.pub`, when that key is set).
    pub curve_server_key: Option<String>,
    /// This client's own key pair (PATH, mode 0600, and PATH.pub, as
    /// `zbridge keygen` writes them); default: a new pair each start,
    /// which a bridge with `curve_clients` refuses.
    pub curve_secret_key_file: Option<String>,
    /// The largest frame sent, in bytes (default: the bridges'
    /// `max_transport_bytes`); a larger one is refused before sending.
    pub max_transport_bytes: Option<usize>,
}

impl Section {
    /// Check every value's range; the error names the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, endpoints) in [
            ("endpoints", &self.endpoints),
            ("heartbeat_endpoints", &self.heartbeat_endpoints),
            ("pub_endpoints", &self.pub_endpoints),
        ] {
            let Some(endpoints) = endpoints else { continue };
            if key != "heartbeat_endpoints" && endpoints.is_empty() {
                return Err(ConfigError::new(key, "give at least one bridge endpoint"));
            }
            if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("tcp://")) {
                return Err(ConfigError::new(
                    key,
                    format!("{bad:?} is not an endpoint: write tcp://HOST:PORT"),
                ));
            }
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("reconnect_delay", self.reconnect_delay),
            ("hold_down", self.hold_down),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("breaker_open_wait", self.breaker_open_wait),
        ] {
            if let Some(value) = value {
                seconds(key, value)?;
            }
        }
        if let Some(rate) = self.breaker_failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ConfigError::new(
                    "breaker_failure_rate",
                    format!(
                        "{rate} is not a share of failures: give a number above 0 and at most 1"
                    ),
                ));
            }
        }
        if let Some(key) = &self.curve_server_key {
            PublicKey::from_z85(key).map_err(|why| ConfigError::new("curve_server_key", why))?;
        }
        for (key, value) in [
            ("max_reconnect_attempts", self.max_reconnect_attempts),
            ("breaker_window", self.breaker_window),
            ("breaker_min_calls", self.breaker_min_calls),
            ("breaker_half_open_probes", self.breaker_half_open_probes),
        ] {
            if value == Some(0) {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.max_transport_bytes == Some(0) {
            return Err(ConfigError::new(
                "max_transport_bytes",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The bridge keys a client reads; the rest of the file is the bridge's.
#[derive(Debug, Default, Deserialize)]
struct BridgeKeys {
    primary_host: Option<String>,
    secondary_host: Option<String>,
    primary_port: Option<u16>,
    secondary_port: Option<u16>,
    primary_heartbeat_port: Option<u16>,
    secondary_heartbeat_port: Option<u16>,
    primary_pub_port: Option<u16>,
    secondary_pub_port: Option<u16>,
    heartbeat_timeout: Option<f64>,
    heartbeat_max_skew: Option<f64>,
    request_timeout: Option<f64>,
    max_reconnect_attempts: Option<u32>,
    reconnect_delay: Option<f64>,
    breaker_open_wait: Option<f64>,
    max_message_bytes: Option<usize>,
    max_transport_bytes: Option<usize>,
    auth_token: Option<String>,
    auth_token_file: Option<String>,
    curve_secret_key_file: Option<String>,
    client: Option<Section>,
}

/// The CURVE keys of a client: the server's from `[client]
/// curve_server_key`, else from the bridge's `curve_secret_key_file` +
/// `.pub` (never its secret); the client's own pair from `[client]
/// curve_secret_key_file`, else a new one. `None` when the bridges have no
/// key.
fn client_keys(keys: &BridgeKeys, section: &Section) -> Result<Option<ClientKeys>, ConfigError> {
    let server = match (&section.curve_server_key, &keys.curve_secret_key_file) {
        (Some(key), _) => Some(
            PublicKey::from_z85(key).map_err(|why| ConfigError::new("curve_server_key", why))?,
        ),
        (None, Some(file)) if !file.is_empty() => {
            let public = curve::public_path(Path::new(file));
            Some(
                curve::read_public(&public, "curve_secret_key_file").map_err(|e| ConfigError {
                    key: String::new(),
                    message: format!("curve_secret_key_file: {}", e.message),
                })?,
            )
        }
        _ => None,
    };
    let own = section
        .curve_secret_key_file
        .as_deref()
        .filter(|f| !f.is_empty());
    let Some(server) = server else {
        if own.is_some() {
            return Err(ConfigError::new(
                "curve_secret_key_file",
                "a client key pair but no server key: set curve_server_key (the content of the bridges' key.pub) or the bridge's curve_secret_key_file",
            ));
        }
        return Ok(None);
    };
    let pair = match own {
        Some(file) => KeyPair::read(Path::new(file), "curve_secret_key_file")?,
        None => {
            KeyPair::generate().map_err(|why| ConfigError::new("curve_secret_key_file", why))?
        }
    };
    Ok(Some(ClientKeys { server, pair }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_file_without_a_client_section_gives_its_pair() {
        let c = ClientConfig::from_toml_str(
            "primary_host = \"10.0.0.1\"\nsecondary_host = \"::1\"\nprimary_port = 7000\n\
             request_timeout = 2.0\nreconnect_delay = 0.5\n[targets.x]\nendpoint = \"tcp://h:1\"\n",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["tcp://10.0.0.1:7000", "tcp://[::1]:5601"]);
        assert_eq!(
            c.heartbeat_endpoints,
            ["tcp://10.0.0.1:5610", "tcp://[::1]:5611"]
        );
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.reconnect_delay, Duration::from_millis(500));
        assert_eq!(c.max_reconnect_attempts, 5);
    }

    #[test]
    fn the_client_section_wins() {
        let c = ClientConfig::from_toml_str(
            "reconnect_delay = 0.5\n[client]\nendpoints = [\"tcp://a:1\"]\nreconnect_delay = 0.2\n\
             hold_down = 0.1\nbreaker_failure_rate = 1.0\n",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["tcp://a:1"]);
        assert_eq!(c.reconnect_delay, Duration::from_millis(200));
        assert_eq!(c.hold_down, Duration::from_millis(100));
        assert_eq!(c.breaker.failure_rate, 1.0);
    }

    #[test]
    fn the_frame_limit_is_the_bridges_unless_the_client_section_sets_one() {
        let limit = |text: &str| {
            ClientConfig::from_toml_str(text)
                .unwrap()
                .max_transport_bytes
        };
        assert_eq!(limit(""), 16 << 20);
        assert_eq!(limit("max_message_bytes = 1000"), 16_000);
        let bridge = "max_message_bytes = 1000\nmax_transport_bytes = 5000\n";
        assert_eq!(limit(bridge), 5000);
        assert_eq!(
            limit(&format!("{bridge}[client]\nmax_transport_bytes = 10")),
            10
        );
        let e = ClientConfig::from_toml_str("[client]\nmax_transport_bytes = 0").unwrap_err();
        assert_eq!(e.key, "max_transport_bytes");
    }

    #[test]
    fn a_bridge_request_timeout_at_the_bound_still_gives_the_client_its_extra_second() {
        let c = ClientConfig::from_toml_str("request_timeout = 604800.0").unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(604_801));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[client]\nendpoints = []", "endpoints"),
            ("[client]\nendpoints = [\"localhost:5600\"]", "endpoints"),
            ("[client]\nrequest_timeout = 0", "request_timeout"),
            ("[client]\nhold_down = -1", "hold_down"),
            (
                "[client]\nbreaker_failure_rate = 1.5",
                "breaker_failure_rate",
            ),
            ("[client]\nbreaker_window = 0", "breaker_window"),
            ("[client]\nrequest_timeout = 1e19", "request_timeout"),
            ("[client]\nhold_down = 604801", "hold_down"),
            ("heartbeat_timeout = 1e19", "heartbeat_timeout"),
            ("heartbeat_max_skew = 1e-300", "heartbeat_max_skew"),
            ("auth_token_file = \"/dev/zero\"", "auth_token_file"),
            (
                "auth_token = \"a\"\nauth_token_file = \"/tmp/t\"",
                "auth_token_file",
            ),
        ] {
            assert_eq!(
                ClientConfig::from_toml_str(text).unwrap_err().key,
                key,
                "{text}"
            );
        }
        let e = ClientConfig::from_toml_str("[client]\nendpoint = []").unwrap_err();
        assert!(e.message.contains("unknown field `endpoint`"), "{e}");
    }
}
