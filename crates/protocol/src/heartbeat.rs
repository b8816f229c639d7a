//! Heartbeat and failover notification messages (DESIGN §4): encoding,
//! HMAC-SHA256 signing, and validation that a forged or replayed message
//! cannot pass.
//!
//! A message is one JSON frame. `auth` is the hex HMAC-SHA256, keyed with
//! the shared token, of the message without `auth` serialized canonically:
//! keys sorted, no white space. A signed frame is that canonical text with
//! `"auth":"<hex>"` inserted as its first member, and a receiver checks the
//! tag against the bytes it received (the frame minus that member), so a
//! float whose printed digits would not survive a parse and re-print (a
//! heartbeat's `load`, its `timestamp`) cannot break a genuine signature. [`Verifier`] checks, in order: JSON, `type`,
//! `auth` (when a token is configured), fields, `timestamp` skew, and that
//! `seq` rises for each `boot` (one counter per process for all messages).

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The instance's current role, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Passive,
}

/// The instance's home role: which config section names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    Primary,
    Secondary,
}

/// What the sender is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    /// Stopping: the peer should take over at once.
    Leaving,
    /// Giving the active role back to the primary (`preempt`).
    Handover,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub timestamp: f64,
    pub instance: Role,
    pub port: u16,
    pub uptime: u64,
    pub load: f64,
    pub node: Node,
    pub boot: String,
    pub seq: u64,
    pub epoch: u64,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub timestamp: f64,
    pub new_active_port: u16,
    pub old_active_port: u16,
    pub node: Node,
    pub endpoints: Vec<String>,
    pub boot: String,
    pub seq: u64,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Heartbeat(Heartbeat),
    FailoverNotification(Notification),
}

impl Message {
    fn boot_seq_time(&self) -> (&str, u64, f64) {
        match self {
            Message::Heartbeat(h) => (&h.boot, h.seq, h.timestamp),
            Message::FailoverNotification(n) => (&n.boot, n.seq, n.timestamp),
        }
    }

    /// One JSON frame in canonical form, signed when `token` is given.
    ///
    /// Signed, the frame is the canonical text with `"auth":"<hex>"` as its
    /// first member (`auth` sorts first among the fields), so the signed
    /// bytes are the frame itself minus that member: a receiver checks the
    /// bytes that were sent, never a re-serialisation of what it parsed.
    pub fn encode(&self, token: Option<&[u8]>) -> Vec<u8> {
        let mut text = String::new();
        canonical(
            &serde_json::to_value(self).unwrap_or(Value::Null),
            &mut text,
        );
        match (token, text.strip_prefix('{')) {
            (Some(token), Some(members)) => {
                let auth = to_hex(mac(token, text.as_bytes()));
                let separator = if members == "}" { "" } else { "," };
                format!("{{{AUTH_PREFIX}{auth}\"{separator}{members}").into_bytes()
            }
            _ => text.into_bytes(),
        }
    }
}

/// How a signed frame starts: `{` then this, then the hex tag.
const AUTH_PREFIX: &str = "\"auth\":\"";
/// Hex digits in an HMAC-SHA256 tag.
const TAG_HEX: usize = 64;

/// A signed frame split into its tag and the bytes it signs (the frame
/// without its leading `auth` member); `None` when the frame does not
/// start with one.
fn split_signed(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let rest = frame
        .strip_prefix(b"{")?
        .strip_prefix(AUTH_PREFIX.as_bytes())?;
    let (tag, rest) = (rest.get(..TAG_HEX)?, rest.get(TAG_HEX..)?);
    let tag = from_hex(std::str::from_utf8(tag).ok()?)?;
    let members = match rest.strip_prefix(b"\"")? {
        [b'}'] => &b"}"[..],
        rest => rest.strip_prefix(b",")?,
    };
    let mut signed = Vec::with_capacity(members.len() + 1);
    signed.push(b'{');
    signed.extend_from_slice(members);
    Some((tag, signed))
}

/// Why a message was rejected; the label names a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    Malformed,
    WrongType,
    MissingAuth,
    BadAuth,
    Stale,
    Future,
    Replay,
}

impl Rejected {
    pub const ALL: [Rejected; 7] = [
        Rejected::Malformed,
        Rejected::WrongType,
        Rejected::MissingAuth,
        Rejected::BadAuth,
        Rejected::Stale,
        Rejected::Future,
        Rejected::Replay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::WrongType => "wrong_type",
            Rejected::MissingAuth => "missing_auth",
            Rejected::BadAuth => "bad_auth",
            Rejected::Stale => "stale",
            Rejected::Future => "future",
            Rejected::Replay => "replay",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Boots remembered for replay detection; a peer restarts rarely.
const BOOTS_REMEMBERED: usize = 16;

/// Checks incoming messages; remembers the last `seq` of recent boots.
pub struct Verifier {
    token: Option<Vec<u8>>,
    max_skew: f64,
    last_seq: VecDeque<(String, u64)>,
}

impl Verifier {
    pub fn new(token: Option<Vec<u8>>, max_skew: f64) -> Self {
        Verifier {
            token,
            max_skew,
            last_seq: VecDeque::new(),
        }
    }

    /// Validate `frame`, received at `now` (seconds since the Unix epoch).
    pub fn verify(&mut self, frame: &[u8], now: f64) -> Result<Message, Rejected> {
        let mut value: Value = serde_json::from_slice(frame).map_err(|_| Rejected::Malformed)?;
        let map = value.as_object_mut().ok_or(Rejected::Malformed)?;
        match map.get("type").and_then(Value::as_str) {
            Some("heartbeat" | "failover_notification") => {}
            _ => return Err(Rejected::WrongType),
        }
        let auth = map.remove("auth");
        if let Some(token) = &self.token {
            if auth.is_none() {
                return Err(Rejected::MissingAuth);
            }
            // The bytes as sent: a parsed and re-printed float need not
            // come back with the same digits.
            let (tag, signed) = split_signed(frame).ok_or(Rejected::BadAuth)?;
            let mut check = HmacSha256::new_from_slice(token).map_err(|_| Rejected::BadAuth)?;
            check.update(&signed);
            check.verify_slice(&tag).map_err(|_| Rejected::BadAuth)?;
        }
        let message: Message = serde_json::from_value(value).map_err(|_| Rejected::Malformed)?;
        let (boot, seq, timestamp) = message.boot_seq_time();
        if !timestamp.is_finite() || timestamp < now - self.max_skew {
            return Err(Rejected::Stale);
        }
        if timestamp > now + self.max_skew {
            return Err(Rejected::Future);
        }
        match self.last_seq.iter_mut().find(|(b, _)| b == boot) {
            Some((_, last)) if seq <= *last => return Err(Rejected::Replay),
            Some((_, last)) => *last = seq,
            None => {
                if self.last_seq.len() == BOOTS_REMEMBERED {
                    self.last_seq.pop_front();
                }
                self.last_seq.push_back((boot.to_string(), seq));
            }
        }
        Ok(message)
    }
}

fn mac(token: &[u8], text: &[u8]) -> impl AsRef<[u8]> {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(token).expect("HMAC accepts any key length");
    mac.update(text);
    mac.finalize().into_bytes()
}

/// JSON with object keys sorted and no white space: the signed form.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex only, as [`to_hex`] writes it: one spelling per tag, so
/// that a signed frame has exactly one accepted form, byte for byte.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if !text.len().is_multiple_of(2) || !text.bytes().all(lower_hex) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: f64 = 1_800_000_000.0;

    fn heartbeat(seq: u64) -> Message {
        Message::Heartbeat(Heartbeat {
            timestamp: NOW,
            instance: Role::Active,
            port: 5600,
            uptime: 12,
            load: 0.25,
            node: Node::Primary,
            boot: "b1".into(),
            seq,
            epoch: 2,
            state: State::Running,
        })
    }

    fn signed(
        verifier: &mut Verifier,
        message: &Message,
        token: &[u8],
    ) -> Result<Message, Rejected> {
        verifier.verify(&message.encode(Some(token)), NOW)
    }

    #[test]
    fn the_seed_fields_keep_their_names() {
        let frame = heartbeat(1).encode(None);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        for key in [
            "type",
            "timestamp",
            "instance",
            "port",
            "uptime",
            "load",
            "node",
            "boot",
            "seq",
            "epoch",
            "state",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        assert_eq!(v["type"], "heartbeat");
        assert_eq!(v["instance"], "active");
        let n = Message::FailoverNotification(Notification {
            timestamp: NOW,
            new_active_port: 5600,
            old_active_port: 5600,
            node: Node::Secondary,
            endpoints: vec!["tcp://127.0.0.1:5600".into()],
            boot: "b2".into(),
            seq: 3,
            epoch: 3,
        });
        let v: Value = serde_json::from_slice(&n.encode(Some(b"k"))).unwrap();
        assert_eq!(v["type"], "failover_notification");
        assert_eq!(v["auth"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn signed_messages_pass_and_anything_else_is_rejected_by_reason() {
        let mut v = Verifier::new(Some(b"secret".to_vec()), 5.0);
        assert_eq!(signed(&mut v, &heartbeat(1), b"secret"), Ok(heartbeat(1)));
        assert_eq!(
            signed(&mut v, &heartbeat(1), b"secret"),
            Err(Rejected::Replay)
        );
        assert_eq!(
            signed(&mut v, &heartbeat(2), b"wrong"),
            Err(Rejected::BadAuth)
        );
        assert_eq!(
            v.verify(&heartbeat(3).encode(None), NOW),
            Err(Rejected::MissingAuth)
        );
        assert_eq!(v.verify(b"{not json", NOW), Err(Rejected::Malformed));
        assert_eq!(
            v.verify(br#"{"type":"hello"}"#, NOW),
            Err(Rejected::WrongType)
        );
        // Tampering with any field breaks the signature.
        let mut tampered: Value =
            serde_json::from_slice(&heartbeat(4).encode(Some(b"secret"))).unwrap();
        tampered["epoch"] = 99.into();
        assert_eq!(
            v.verify(tampered.to_string().as_bytes(), NOW),
            Err(Rejected::BadAuth)
        );
        assert_eq!(signed(&mut v, &heartbeat(5), b"secret"), Ok(heartbeat(5)));
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let mut v = Verifier::new(None, 2.0);
        let frame = heartbeat(1).encode(None);
        assert_eq!(v.verify(&frame, NOW + 2.5), Err(Rejected::Stale));
        assert_eq!(v.verify(&frame, NOW - 2.5), Err(Rejected::Future));
        assert!(v.verify(&frame, NOW + 1.0).is_ok());
    }

    #[test]
    fn without_a_token_unsigned_messages_pass_but_fields_are_still_checked() {
        let mut v = Verifier::new(None, 5.0);
        assert!(v.verify(&heartbeat(1).encode(None), NOW).is_ok());
        assert_eq!(
            v.verify(br#"{"type":"heartbeat","timestamp":1}"#, NOW),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn a_restarted_peer_starts_its_own_sequence() {
        let mut v = Verifier::new(None, 5.0);
        assert!(v.verify(&heartbeat(100).encode(None), NOW).is_ok());
        let Message::Heartbeat(mut h) = heartbeat(1) else {
            unreachable!()
        };
        h.boot = "b2".into();
        assert!(v.verify(&Message::Heartbeat(h).encode(None), NOW).is_ok());
    }

    fn beat(timestamp: f64, load: f64, boot: String, seq: u64, epoch: u64) -> Message {
        Message::Heartbeat(Heartbeat {
            timestamp,
            instance: Role::Passive,
            port: 5601,
            uptime: seq / 3,
            load,
            node: Node::Secondary,
            boot,
            seq,
            epoch,
            state: State::Handover,
        })
    }

    proptest! {
        /// A genuine signature verifies whatever digits its floats print
        /// with: the receiver checks the bytes sent, not a re-print.
        #[test]
        fn every_genuine_signed_message_verifies(
            offset in -4.0f64..4.0,
            load in prop_oneof![0.0f64..=1.0, any::<f64>().prop_filter("finite", |f| f.is_finite())],
            boot in "\\PC{0,12}",
            seq in any::<u64>(),
            epoch in any::<u64>(),
            token in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let message = beat(NOW + offset, load, boot.clone(), seq, epoch);
            let mut v = Verifier::new(Some(token.clone()), 5.0);
            let verified = v.verify(&message.encode(Some(&token)), NOW);
            // serde_json's default float parser may be a unit or so in the
            // last place off (more, relatively, below f64::MIN_POSITIVE):
            // the fields are compared with the floats as read.
            let Ok(Message::Heartbeat(read)) = verified else {
                return Err(TestCaseError::fail(format!("{verified:?}")));
            };
            let off = (read.load - load).abs();
            prop_assert!(off <= load.abs() * 1e-15 || off < f64::MIN_POSITIVE, "{} vs {load}", read.load);
            prop_assert_eq!(Message::Heartbeat(read.clone()), beat(read.timestamp, read.load, boot, seq, epoch));
            prop_assert!((read.timestamp - (NOW + offset)).abs() < 1e-6);
        }

        /// Any change to one byte of a signed frame is refused.
        #[test]
        fn a_changed_byte_breaks_the_signature(
            load in 0.0f64..=1.0,
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut frame = beat(NOW, load, "b".into(), 1, 1).encode(Some(b"k"));
            let i = at.index(frame.len());
            frame[i] ^= xor;
            let mut v = Verifier::new(Some(b"k".to_vec()), 5.0);
            prop_assert!(v.verify(&frame, NOW).is_err(), "{}", String::from_utf8_lossy(&frame));
        }

        #[test]
        fn arbitrary_bytes_never_pass_a_verifier_with_a_token(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = Verifier::new(Some(b"k".to_vec()), 5.0);
            prop_assert!(v.verify(&frame, NOW).is_err());
        }
    }
}
