//! The stamp a bridge adds as the last frame of every message it
//! republishes from a stream (DESIGN §3b, docs/PROTOCOL.md).
//!
//! A subscriber filters by topic prefix, so one counter per stream would
//! show gaps wherever another subscriber's topics were interleaved. The
//! bridge therefore counts per subscribed prefix: every message carries,
//! for each prefix that some subscriber asked for and that the message's
//! first frame starts with, that prefix's sequence number. A subscriber to
//! `a.` sees consecutive numbers under `a.` unless it lost messages.
//!
//! Layout (integers big-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | version, 1 |
//! | 8 | source: drawn at random when the bridge opens the stream; numbers from different sources cannot be compared |
//! | 4 | session: 0 at first, one more each time the bridge reconnects to the upstream; a change means the upstream's messages in between were lost, how many nobody knows |
//! | 1 | n, length of the stream name (1 to 255; the config allows 64) |
//! | n | stream name, UTF-8 |
//! | then, per matching prefix: 8 | sequence number, from 1 |
//! | 2 | m, length of the prefix |
//! | m | the prefix |
//!
//! A message replayed from a bridge's last-value cache (a stream with
//! `last_value`) carries, for each prefix, the number of the last message
//! published live under it (0 if none yet: it does not take a number of
//! its own), then one more entry, the flag [`LAST_VALUE_FLAG`] numbered 0.
//! Version 1 readers see the flag as one more prefix, which no subscriber
//! asks for; [`parse_stamp`] takes it out and sets [`Stamp::last_value`].

/// The stamp's format version, its first byte.
pub const STAMP_VERSION: u8 = 1;

/// The entry that marks a message replayed from the last-value cache: this
/// prefix (a NUL byte, then `last`) numbered 0.
pub const LAST_VALUE_FLAG: &[u8] = b"\0last";

/// A parsed stamp, borrowing the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp<'a> {
    pub source: u64,
    pub session: u32,
    pub stream: &'a str,
    /// `(prefix, sequence number)` for each subscribed prefix the message
    /// matched.
    pub seqs: Vec<(&'a [u8], u64)>,
    /// A last value from the bridge's cache, replayed to a new
    /// subscription, not a new publish: its numbers are those of the last
    /// message published under each prefix.
    pub last_value: bool,
}

impl Stamp<'_> {
    /// The sequence number under `prefix`, if the message carries one.
    pub fn seq(&self, prefix: &[u8]) -> Option<u64> {
        self.seqs
            .iter()
            .find(|(p, _)| *p == prefix)
            .map(|(_, s)| *s)
    }
}

/// Write a stamp into `out` (cleared first); `last_value` adds the flag.
/// Prefixes longer than 65,535 bytes and stream names longer than 255 are
/// cut; the bridge's config and libzmq keep them far shorter.
pub fn encode_stamp<'p>(
    out: &mut Vec<u8>,
    source: u64,
    session: u32,
    stream: &str,
    seqs: impl IntoIterator<Item = (&'p [u8], u64)>,
    last_value: bool,
) {
    out.clear();
    out.push(STAMP_VERSION);
    out.extend_from_slice(&source.to_be_bytes());
    out.extend_from_slice(&session.to_be_bytes());
    let name = &stream.as_bytes()[..stream.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let flag = last_value.then_some((LAST_VALUE_FLAG, 0));
    for (prefix, seq) in seqs.into_iter().chain(flag) {
        let prefix = &prefix[..prefix.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(prefix.len() as u16).to_be_bytes());
        out.extend_from_slice(prefix);
    }
}

/// Read a stamp; `None` when the frame is not one.
pub fn parse_stamp(frame: &[u8]) -> Option<Stamp<'_>> {
    let (&version, rest) = frame.split_first()?;
    if version != STAMP_VERSION {
        return None;
    }
    let (source, rest) = rest.split_first_chunk::<8>()?;
    let (session, rest) = rest.split_first_chunk::<4>()?;
    let (&n, rest) = rest.split_first()?;
    if n == 0 || rest.len() < usize::from(n) {
        return None;
    }
    let (name, mut rest) = rest.split_at(usize::from(n));
    let stream = std::str::from_utf8(name).ok()?;
    let mut seqs = Vec::new();
    let mut last_value = false;
    while !rest.is_empty() {
        let (seq, after) = rest.split_first_chunk::<8>()?;
        let (m, after) = after.split_first_chunk::<2>()?;
        let m = usize::from(u16::from_be_bytes(*m));
        if after.len() < m {
            return None;
        }
        let (prefix, after) = after.split_at(m);
        let seq = u64::from_be_bytes(*seq);
        if seq == 0 && prefix == LAST_VALUE_FLAG {
            last_value = true;
        } else {
            seqs.push((prefix, seq));
        }
        rest = after;
    }
    Some(Stamp {
        source: u64::from_be_bytes(*source),
        session: u32::from_be_bytes(*session),
        stream,
        seqs,
        last_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stamp_reads_back_as_written() {
        let mut out = Vec::new();
        encode_stamp(
            &mut out,
            0x0102_0304_0506_0708,
            3,
            "dream",
            [(&b"a."[..], 7), (&b""[..], 41)],
            false,
        );
        let stamp = parse_stamp(&out).unwrap();
        assert_eq!(stamp.source, 0x0102_0304_0506_0708);
        assert_eq!(stamp.session, 3);
        assert_eq!(stamp.stream, "dream");
        assert_eq!(stamp.seq(b"a."), Some(7));
        assert_eq!(stamp.seq(b""), Some(41));
        assert_eq!(stamp.seq(b"b."), None);
        assert!(!stamp.last_value);
    }

    #[test]
    fn a_last_value_is_flagged_and_its_flag_is_no_prefix() {
        let mut out = Vec::new();
        encode_stamp(&mut out, 9, 0, "dream", [(&b"a."[..], 0)], true);
        let stamp = parse_stamp(&out).unwrap();
        assert!(stamp.last_value);
        assert_eq!(stamp.seqs, [(&b"a."[..], 0)]);
        // A version 1 reader that knows no flag sees one more prefix.
        assert!(out.ends_with(b"\0\0\0\0\0\0\0\0\0\x05\0last"));
    }

    #[test]
    fn frames_that_are_not_stamps_are_refused() {
        let mut good = Vec::new();
        encode_stamp(&mut good, 1, 0, "s", [(&b"topic"[..], 1)], false);
        assert!(parse_stamp(&good).is_some());
        for cut in 0..good.len() {
            // Cut inside the header or inside an entry: refused. Cut
            // exactly between the header and the entries: a stamp with none.
            let header = 1 + 8 + 4 + 1 + 1;
            assert_eq!(
                parse_stamp(&good[..cut]).is_some(),
                cut == header,
                "cut {cut}"
            );
        }
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        assert!(parse_stamp(&wrong_version).is_none());
        assert!(parse_stamp(b"hello world, not a stamp").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_as_a_stamp_or_not_at_all(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_stamp(&bytes);
        }

        #[test]
        fn encoding_round_trips(
            source in any::<u64>(),
            session in any::<u32>(),
            name in "[a-z]{1,20}",
            seqs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), 1..u64::MAX), 0..5),
            last_value in any::<bool>(),
        ) {
            let mut out = Vec::new();
            encode_stamp(&mut out, source, session, &name, seqs.iter().map(|(p, s)| (p.as_slice(), *s)), last_value);
            let stamp = parse_stamp(&out).unwrap();
            prop_assert_eq!(stamp.source, source);
            prop_assert_eq!(stamp.session, session);
            prop_assert_eq!(stamp.stream, name.as_str());
            let back: Vec<(Vec<u8>, u64)> = stamp.seqs.iter().map(|(p, s)| (p.to_vec(), *s)).collect();
            prop_assert_eq!(back, seqs);
            prop_assert_eq!(stamp.last_value, last_value);
        }
    }
}
