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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Characters of a Z85 key: 32 bytes, 5 characters per 4.
pub const KEY_CHARS: usize = 40;
/// The largest key file read, in bytes: one key and a little room.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;
/// The most `*.pub` files a `curve_clients` directory may hold. The bridge
/// reads them all at start and on each reload, off its request path (about
/// 12 µs a file, 20 µs on a busy machine); a larger directory is refused
/// rather than read.
pub const MAX_CLIENT_KEYS: usize = 10_000;

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

    /// The key in Z85, for a key file and libzmq's `zmq_curve_public`.
    pub fn z85(&self) -> String {
        encode(&self.0)
    }

    /// The public key of this secret (libzmq's `zmq_curve_public`).
    pub fn public(&self) -> Result<PublicKey, String> {
        zbridge_socket::sys::curve_public(&self.z85())
            .and_then(|text| PublicKey::from_z85(&text).ok())
            .ok_or_else(|| {
                "cannot derive the public key from the secret: this libzmq has no CURVE".to_string()
            })
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
    /// `key` is the config key that named `path`, for the error. The public
    /// key is derived from the secret, and a `path.pub` that holds another
    /// key is refused: the two files would not be one pair, and every
    /// handshake with a peer or client that trusts `path.pub` would fail.
    pub fn read(path: &Path, key: &str) -> Result<KeyPair, ConfigError> {
        let secret = read_secret(path, key)?;
        let public_file = public_path(path);
        let public = read_public(&public_file, key).map_err(|mut e| {
            if public_file.symlink_metadata().is_err() {
                e.message = format!(
                    "{} (the public half of the pair in {}: `zbridge keygen PATH` writes both)",
                    e.message,
                    path.display()
                );
            }
            e
        })?;
        let derived = secret.public().map_err(|why| ConfigError::new(key, why))?;
        if derived != public {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} holds {public}, which is not the public key of the secret in {} \
                     (that is {derived}): the two files are not one pair. Make a new pair \
                     with `zbridge keygen PATH` and give its .pub to the clients and the \
                     peer, or, if the secret is the right one, put {derived} in {}",
                    public_file.display(),
                    path.display(),
                    public_file.display(),
                ),
            ));
        }
        Ok(KeyPair { public, secret })
    }
}

/// Where the public half of the pair in `secret` is: `secret` + `.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut path = secret.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// A secret key file: a regular file (of at most [`MAX_KEY_FILE_BYTES`])
/// that only its owner may read (mode 0600 or 0400), holding one Z85 key.
pub fn read_secret(path: &Path, key: &str) -> Result<SecretKey, ConfigError> {
    let shown = path.display();
    let (text, metadata) = read_key_file(path, key)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(
            key,
            format!(
                "{shown} holds a secret key but group or others may read it (mode {mode:04o}): run `chmod 600 {shown}`"
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(ConfigError::new(
            key,
            format!(
                "{shown} is empty; it should hold the Z85 secret key that `zbridge keygen` writes"
            ),
        ));
    }
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

/// A public key file: one Z85 key on one line; blank lines around it and
/// surrounding blanks are accepted, a second key is refused (which of the
/// two was meant cannot be told).
pub fn read_public(path: &Path, key: &str) -> Result<PublicKey, ConfigError> {
    let (text, _) = read_key_file(path, key)?;
    let shown = path.display();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return Err(ConfigError::new(
            key,
            format!("{shown} is empty; it should hold a Z85 public key"),
        ));
    };
    let more = lines.count();
    if more > 0 {
        return Err(ConfigError::new(
            key,
            format!(
                "{shown} holds {} lines; a public key file holds one key: one file per key",
                more + 1
            ),
        ));
    }
    PublicKey::from_z85(first).map_err(|why| ConfigError::new(key, format!("{shown}: {why}")))
}

/// The public keys in a `curve_clients` directory, and the `*.pub` files
/// in it that hold no usable key.
#[derive(Debug, Default)]
pub struct ClientKeysRead {
    pub keys: BTreeSet<PublicKey>,
    /// Each refused file, named with the reason (a FIFO, not Z85, two
    /// keys, ...). Its key is not admitted; the other files' keys are.
    pub refused: Vec<ConfigError>,
}

/// The public keys in `dir`: one per `*.pub` file (other files are left
/// alone, so a README or an editor's backup does not count), at most
/// [`MAX_CLIENT_KEYS`] of them. A `*.pub` file that holds no usable key is
/// refused alone ([`ClientKeysRead::refused`]): a mistake in one file
/// neither admits anyone nor keeps the rest of the directory (a key just
/// removed, say) from taking effect. A directory that cannot be listed, or
/// holds too many files, is refused whole.
pub fn read_clients(dir: &Path, key: &str) -> Result<ClientKeysRead, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(
            key,
            format!("cannot read the directory {}: {e}", dir.display()),
        )
    })?;
    let mut read = ClientKeysRead::default();
    let mut files = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "pub") {
            files += 1;
            if files > MAX_CLIENT_KEYS {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{} holds more than {MAX_CLIENT_KEYS} *.pub files; at most {MAX_CLIENT_KEYS} client keys are read (each reload reads them all): remove the keys no longer in use",
                        dir.display()
                    ),
                ));
            }
            match read_public(&path, key) {
                Ok(public) => {
                    read.keys.insert(public);
                }
                Err(refused) => read.refused.push(refused),
            }
        }
    }
    Ok(read)
}

/// A key file's text and metadata, read as the token file is
/// ([`crate::rules::read_small_file`]): a regular file, at most
/// [`MAX_KEY_FILE_BYTES`], opened without blocking.
fn read_key_file(path: &Path, key: &str) -> Result<(String, std::fs::Metadata), ConfigError> {
    crate::rules::read_small_file(path, MAX_KEY_FILE_BYTES, "key")
        .map_err(|why| ConfigError::new(key, why))
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
    /// `path` and the public key to `path.pub`, both new files (an existing
    /// file, or a symlink, even a dangling one, is never written through),
    /// the secret with mode 0600. Should the public half fail, the secret
    /// just written is removed: no half pair is left behind.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let create = |path: &Path, mode: u32, text: String| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)?;
            // A partly written key (a full disk) is no key: removed.
            let written = file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all());
            if written.is_err() {
                let _ = std::fs::remove_file(path);
            }
            written
        };
        create(path, 0o600, format!("{}\n", self.secret.z85()))?;
        create(&public_path(path), 0o644, format!("{}\n", self.public)).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
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
    fn a_pub_that_is_not_the_secrets_half_is_refused_naming_both_files() {
        let dir = dir("mismatch");
        let (pair, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let path = dir.join("bridge.key");
        let secret = pair.secret.z85();
        write(&path, &format!("{secret}\n"), 0o600);
        write(&public_path(&path), &format!("{}\n", other.public), 0o644);
        assert_eq!(pair.secret.public(), Ok(pair.public));
        let e = KeyPair::read(&path, "curve_secret_key_file").unwrap_err();
        assert_eq!(e.key, "curve_secret_key_file");
        for needed in [
            path.display().to_string(),
            public_path(&path).display().to_string(),
            "zbridge keygen".into(),
            pair.public.z85(),
        ] {
            assert!(e.message.contains(&needed), "{needed} not in {e}");
        }
        assert!(!e.message.contains(&secret), "{e}");
        // The matching .pub, with CRLF and trailing blanks, passes.
        write(&path, &format!("{secret}  \r\n"), 0o600);
        write(&public_path(&path), &format!("{} \r\n", pair.public), 0o644);
        assert_eq!(KeyPair::read(&path, "k").unwrap(), pair);
    }

    #[test]
    fn malformed_secrets_are_refused_without_panicking_or_being_shown() {
        let dir = dir("malformed");
        let pair = KeyPair::generate().unwrap();
        let path = dir.join("bridge.key");
        write(&public_path(&path), &pair.public.z85(), 0o644);
        let secret = pair.secret.z85();
        for bad in [
            String::new(),
            "\n".into(),
            format!("{}~", &secret[..39]),
            format!("{secret}abcde"),
            format!("{secret}\n{secret}"),
            format!("{}\0", &secret[..39]),
            "%".repeat(40),
            "a".repeat(4000),
        ] {
            write(&path, &bad, 0o600);
            let e = KeyPair::read(&path, "k").unwrap_err();
            assert!(
                e.message.contains("does not hold a CURVE secret key")
                    || e.message.contains("is empty; it should hold"),
                "{e}"
            );
            assert!(!e.message.contains(&secret[..20]), "{e}");
        }
        std::fs::write(&path, [0xffu8; 40]).unwrap();
        assert!(KeyPair::read(&path, "k")
            .unwrap_err()
            .message
            .contains("not text"));
    }

    #[test]
    fn key_files_are_small_regular_files_read_without_blocking() {
        let dir = dir("kinds");
        let pair = KeyPair::generate().unwrap();
        let fifo = dir.join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        for (path, says) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.as_path(), "a directory"),
        ] {
            let e = read_secret(path, "k").unwrap_err();
            assert!(e.message.contains(says), "{e}");
            let e = read_public(path, "k").unwrap_err();
            assert!(e.message.contains(says), "{e}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Larger than a key file may be: refused after 4 KiB, not read whole.
        let big = dir.join("big.key");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(1 << 30).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_secret(&big, "k").unwrap_err();
        assert!(e.message.contains("longer than 4096 bytes"), "{e}");
        // A symlink to a secret others may read is refused like the file.
        let open = dir.join("open.key");
        write(&open, &pair.secret.z85(), 0o644);
        let link = dir.join("link.key");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(read_secret(&link, "k")
            .unwrap_err()
            .message
            .contains("chmod 600"));
        // An empty .pub says so.
        let empty = dir.join("empty.pub");
        write(&empty, "", 0o644);
        let e = read_public(&empty, "k").unwrap_err();
        assert!(e.message.contains("empty.pub is empty"), "{e}");
        // A secret without its .pub: the hint says keygen writes both.
        let lone = dir.join("lone.key");
        write(&lone, &pair.secret.z85(), 0o600);
        let e = KeyPair::read(&lone, "k").unwrap_err();
        assert!(
            e.message.contains("lone.key.pub") && e.message.contains("writes both"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_written_pair_reads_back_and_nothing_is_written_through() {
        let dir = dir("write");
        let pair = KeyPair::generate().unwrap();
        let path = dir.join("k");
        pair.write(&path).unwrap();
        assert_eq!(KeyPair::read(&path, "k").unwrap(), pair);
        assert!(pair.write(&path).is_err(), "an existing pair is kept");
        assert_eq!(KeyPair::read(&path, "k").unwrap(), pair);
        // PATH.pub is a dangling symlink: nothing written through it, and
        // no lone secret left behind.
        let lone = dir.join("lone");
        std::os::unix::fs::symlink(dir.join("elsewhere"), public_path(&lone)).unwrap();
        assert!(pair.write(&lone).is_err());
        assert!(lone.symlink_metadata().is_err(), "the secret was removed");
        assert!(dir.join("elsewhere").symlink_metadata().is_err());
        let _ = std::fs::remove_dir_all(&dir);
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
        let read = read_clients(&dir, "curve_clients").unwrap();
        assert_eq!(read.keys, BTreeSet::from([a.public, b.public]));
        assert!(read.refused.is_empty());
    }

    #[test]
    fn a_pub_file_without_one_usable_key_is_refused_alone() {
        let dir = dir("refused");
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        // Blank lines and blanks around the key: accepted.
        write(
            &dir.join("a.pub"),
            &format!("\n  \r\n\t{} \r\n\n", a.public),
            0o644,
        );
        write(&dir.join("c.pub"), "garbage", 0o644);
        write(
            &dir.join("two.pub"),
            &format!("{}\n\n{}\n", a.public, b.public),
            0o644,
        );
        write(&dir.join("empty.pub"), "\n \n", 0o644);
        let read = read_clients(&dir, "curve_clients").unwrap();
        assert_eq!(
            read.keys,
            BTreeSet::from([a.public]),
            "b is in two.pub only"
        );
        let mut refused: Vec<String> = read.refused.iter().map(|e| e.message.clone()).collect();
        refused.sort();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].contains("c.pub: "), "{refused:?}");
        assert!(refused[1].contains("empty.pub is empty"), "{refused:?}");
        assert!(
            refused[2].contains("two.pub holds 2 lines; a public key file holds one key"),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_clients_directory_of_more_than_the_limit_is_refused() {
        let dir = dir("many");
        let key = format!("{}\n", KeyPair::generate().unwrap().public);
        for i in 0..MAX_CLIENT_KEYS {
            std::fs::write(dir.join(format!("{i}.pub")), &key).unwrap();
        }
        std::fs::write(dir.join("README"), "not counted").unwrap();
        assert_eq!(read_clients(&dir, "curve_clients").unwrap().keys.len(), 1);
        std::fs::write(dir.join("one-more.pub"), &key).unwrap();
        let e = read_clients(&dir, "curve_clients").unwrap_err();
        assert!(e.message.contains("more than 10000 *.pub files"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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
