//! CURVE keys as zbridge reads them, for the bridge and its clients alike.
//!
//! A key pair is two files, as `zbridge keygen PATH` writes them (and as
//! libzmq's `zmq_curve_keypair` makes them): `PATH` holds the Z85 secret key
//! (40 characters, one line) and `PATH.pub` the Z85 public key. A secret
//! file that group or others may read is refused, naming the file and the
//! fix; a secret never appears in an error, a `Debug` print or a log line.
//! [`ClientKeys`] puts a CURVE client's keys on a libzmq socket.
//!
//! What this module does not do: decide who is admitted (the bridge's ZAP
//! handler does, `src/curve.rs`), or make keys (`zbridge keygen`).

use crate::ConfigError;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Characters of a Z85 key: 32 bytes, 5 characters per 4.
pub const KEY_CHARS: usize = 40;
/// The largest key file read, in bytes: one key and a little room.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// A CURVE public key (32 bytes); printed as Z85.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// A CURVE secret key (32 bytes); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

/// A key pair: the public key and its secret.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl PublicKey {
    /// A Z85 public key (40 characters); the error says what is wrong
    /// with it, and it may name the text (a public key is no secret).
    pub fn from_z85(text: &str) -> Result<PublicKey, String> {
        decode(text.trim())
            .map(PublicKey)
            .map_err(|why| format!("{:?} is not a CURVE public key: {why}", text.trim()))
    }

    pub fn z85(&self) -> String {
        encode(&self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.z85())
    }
}

impl SecretKey {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key in Z85, for the one place that writes it: a key file.
    pub fn z85(&self) -> String {
        encode(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl KeyPair {
    /// A new random pair (libzmq's `zmq_curve_keypair`, libsodium's random
    /// source).
    pub fn generate() -> Result<KeyPair, String> {
        let pair = zmq::CurveKeyPair::new().map_err(|e| format!("cannot make a key pair: {e}"))?;
        Ok(KeyPair {
            public: PublicKey(pair.public_key),
            secret: SecretKey(pair.secret_key),
        })
    }

    /// The pair in `path` (the secret) and `path.pub` (the public key);
    /// `key` is the config key that named `path`, for the error.
    pub fn read(path: &Path, key: &str) -> Result<KeyPair, ConfigError> {
        Ok(KeyPair {
            secret: read_secret(path, key)?,
            public: read_public(&public_path(path), key)?,
        })
    }
}

/// Where the public half of the pair in `secret` is: `secret` + `.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut path = secret.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// A secret key file: a regular file that only its owner may read (mode
/// 0600 or 0400), holding one Z85 key.
pub fn read_secret(path: &Path, key: &str) -> Result<SecretKey, ConfigError> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {shown}: {e}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(
            key,
            format!(
                "{shown} holds a secret key but group or others may read it (mode {mode:04o}): run `chmod 600 {shown}`"
            ),
        ));
    }
    let text = read_key_file(path, &metadata, key)?;
    decode(text.trim())
        .map(SecretKey)
        // The text is a secret, even when it is not a valid one: not shown.
        .map_err(|why| {
            ConfigError::new(
                key,
                format!("{shown} does not hold a CURVE secret key: {why}"),
            )
        })
}

/// A public key file: one Z85 key on its first line.
pub fn read_public(path: &Path, key: &str) -> Result<PublicKey, ConfigError> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let text = read_key_file(path, &metadata, key)?;
    PublicKey::from_z85(text.lines().next().unwrap_or(""))
        .map_err(|why| ConfigError::new(key, format!("{}: {why}", path.display())))
}

/// The public keys in `dir`: one per `*.pub` file (other files are left
/// alone, so a README or an editor's backup does not count).
pub fn read_clients(dir: &Path, key: &str) -> Result<BTreeSet<PublicKey>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(
            key,
            format!("cannot read the directory {}: {e}", dir.display()),
        )
    })?;
    let mut keys = BTreeSet::new();
    for entry in entries {
        let path = entry
            .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "pub") {
            keys.insert(read_public(&path, key)?);
        }
    }
    Ok(keys)
}

fn read_key_file(
    path: &Path,
    metadata: &std::fs::Metadata,
    key: &str,
) -> Result<String, ConfigError> {
    let shown = path.display();
    let refuse = |why: String| ConfigError::new(key, why);
    if !metadata.is_file() {
        return Err(refuse(format!("{shown} is not a regular file")));
    }
    // O_NONBLOCK: a path that became a FIFO since the check does not block.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(format!("cannot read {shown}: {e}")))?;
    let mut bytes = Vec::new();
    handle
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(refuse(format!(
            "{shown} is longer than {MAX_KEY_FILE_BYTES} bytes; a key file holds one line"
        )));
    }
    String::from_utf8(bytes).map_err(|_| refuse(format!("{shown} is not text")))
}

/// Z85's alphabet (ZeroMQ RFC 32), by digit value.
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// A 40-character Z85 key to its 32 bytes. Pure (libzmq's decoder, as the
/// zmq crate calls it, does not report bad characters).
fn decode(text: &str) -> Result<[u8; 32], String> {
    let chars = text.as_bytes();
    if chars.len() != KEY_CHARS {
        return Err(format!(
            "a Z85 key has {KEY_CHARS} characters, this one {}",
            chars.len()
        ));
    }
    let mut key = [0u8; 32];
    for (group, out) in chars.chunks(5).zip(key.chunks_mut(4)) {
        let mut value: u64 = 0;
        for c in group {
            let digit = Z85
                .iter()
                .position(|z| z == c)
                .ok_or_else(|| "a character outside Z85's alphabet".to_string())?;
            value = value * 85 + digit as u64;
        }
        let value = u32::try_from(value).map_err(|_| "not Z85 (a group overflows)".to_string())?;
        out.copy_from_slice(&value.to_be_bytes());
    }
    Ok(key)
}

/// 32 bytes as 40 Z85 characters.
fn encode(key: &[u8; 32]) -> String {
    let mut text = String::with_capacity(KEY_CHARS);
    for group in key.chunks(4) {
        let mut value = u32::from_be_bytes([group[0], group[1], group[2], group[3]]);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = Z85[(value % 85) as usize];
            value /= 85;
        }
        text.extend(digits.iter().map(|&d| d as char));
    }
    text
}

/// A CURVE client's keys: the server's public key and the client's pair.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientKeys {
    pub server: PublicKey,
    pub pair: KeyPair,
}

impl KeyPair {
    /// Write the pair as `zbridge keygen` does: the Z85 secret key to
    /// `path` (a new file, mode 0600) and the public key to `path.pub`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut secret = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(secret, "{}", self.secret.z85())?;
        std::fs::write(public_path(path), format!("{}\n", self.public))
    }

    /// Make `socket` a CURVE server with this pair's key (before it binds).
    pub fn serve(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_server(true)?;
        socket.set_curve_secretkey(self.secret.bytes())
    }
}

impl ClientKeys {
    /// Make `socket` a CURVE client of the server (before it connects).
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(self.server.bytes())?;
        socket.set_curve_publickey(self.pair.public.bytes())?;
        socket.set_curve_secretkey(self.pair.secret.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, text: &str, mode: u32) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zbridge-curve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_pair_round_trips_through_its_files() {
        let dir = dir("pair");
        let pair = KeyPair::generate().unwrap();
        let path = dir.join("bridge.key");
        write(&path, &format!("{}\n", pair.secret.z85()), 0o600);
        write(&public_path(&path), &format!("{}\n", pair.public), 0o644);
        assert_eq!(KeyPair::read(&path, "k").unwrap(), pair);
    }

    #[test]
    fn a_secret_others_may_read_is_refused_with_the_fix_and_never_shown() {
        let dir = dir("mode");
        let pair = KeyPair::generate().unwrap();
        let path = dir.join("bridge.key");
        let secret = pair.secret.z85();
        for mode in [0o640, 0o604, 0o644] {
            write(&path, &secret, mode);
            let e = read_secret(&path, "curve_secret_key_file").unwrap_err();
            assert_eq!(e.key, "curve_secret_key_file");
            assert!(e.message.contains("chmod 600"), "{e}");
            assert!(e.message.contains(&path.display().to_string()), "{e}");
            assert!(!e.message.contains(&secret), "{e}");
        }
        write(&path, &secret[..39], 0o600);
        let e = read_secret(&path, "k").unwrap_err();
        assert!(!e.message.contains(&secret[..39]), "{e}");
        assert!(format!("{pair:?}").contains("<redacted>"));
        assert!(!format!("{pair:?}").contains(&secret));
    }

    #[test]
    fn the_clients_directory_counts_pub_files_only() {
        let dir = dir("clients");
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        write(&dir.join("a.pub"), &a.public.z85(), 0o644);
        write(&dir.join("b.pub"), &format!("{}\n", b.public), 0o644);
        write(&dir.join("README"), "not a key", 0o644);
        let keys = read_clients(&dir, "curve_clients").unwrap();
        assert_eq!(keys, BTreeSet::from([a.public, b.public]));
        write(&dir.join("c.pub"), "garbage", 0o644);
        let e = read_clients(&dir, "curve_clients").unwrap_err();
        assert!(e.message.contains("c.pub"), "{e}");
    }

    #[test]
    fn z85_matches_libzmq() {
        // The test vector of ZeroMQ RFC 32.
        let bytes = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&bytes);
        assert!(encode(&key).starts_with("HelloWorld"));
        for _ in 0..20 {
            let pair = zmq::CurveKeyPair::new().unwrap();
            let text = zmq::z85_encode(&pair.public_key).unwrap();
            assert_eq!(encode(&pair.public_key), text);
            assert_eq!(decode(&text), Ok(pair.public_key));
        }
        assert!(decode(&"%".repeat(40)).is_err(), "overflowing groups");
    }

    #[test]
    fn public_keys_are_checked() {
        assert!(PublicKey::from_z85("short").is_err());
        assert!(PublicKey::from_z85(&"~".repeat(40)).is_err());
        let pair = KeyPair::generate().unwrap();
        assert_eq!(PublicKey::from_z85(&pair.public.z85()), Ok(pair.public));
    }
}
