//! Reading a client's request: envelope, frame limits, JSON or multipart.
//!
//! Input is the list of frames a ROUTER socket delivers after the client's
//! routing identity. REQ clients (and polite DEALERs) put an empty delimiter
//! frame first; other DEALERs do not; a client with many requests in flight
//! puts a request id and a delimiter first, and so does libzmq's REQ with
//! `ZMQ_REQ_CORRELATE` (a 4-byte id). The reply must mirror that choice, so
//! [`Parsed::envelope`] is reported even when the request is refused.

use crate::error::{ErrorCode, Rejection};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Deref;

/// Limits checked before any other work on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, summed over its frames, in bytes.
    pub max_message_bytes: usize,
    /// Most frames in a request body (delimiter not counted).
    pub max_frames: usize,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Relay to `target`. `payload` is the index of the first body frame to
    /// forward: the whole JSON frame on the JSON path, the frames after the
    /// target name on the multipart path.
    Forward {
        target: Cow<'a, str>,
        payload: usize,
    },
    /// A question for the bridge itself.
    Action(Action),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Ping,
}

/// What a client put before its request, to be returned before the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// Nothing: a DEALER sending the request frames alone.
    Bare,
    /// An empty delimiter frame (REQ sockets, polite DEALERs).
    Delimiter,
    /// A request id frame and an empty delimiter: `[id, "", request...]`.
    /// Either the bridge's own id: 1 to [`MAX_REQUEST_ID_LEN`] bytes
    /// starting with a zero byte, which no target name and no JSON text can
    /// start with; or the id libzmq's REQ socket adds with
    /// `ZMQ_REQ_CORRELATE`: [`CORRELATE_ID_LEN`] bytes of any value, told
    /// apart from a multipart request whose first payload frame is empty
    /// (`[target, "", ...]`) by not being the name of a target.
    RequestId,
}

impl Envelope {
    /// How many frames it takes; the request body starts after them.
    pub fn frames(self) -> usize {
        match self {
            Envelope::Bare => 0,
            Envelope::Delimiter => 1,
            Envelope::RequestId => 2,
        }
    }
}

/// The longest request id frame.
pub const MAX_REQUEST_ID_LEN: usize = 32;

/// The size of the request id libzmq's REQ socket sends with
/// `ZMQ_REQ_CORRELATE` (a `uint32_t`).
pub const CORRELATE_ID_LEN: usize = 4;

/// The outcome of [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// What the reply must carry before its body.
    pub envelope: Envelope,
    /// Index of the first body frame (after the envelope).
    pub body: usize,
    pub request: Result<Request<'a>, Rejection>,
}

/// The longest target name accepted on the multipart path.
const MAX_TARGET_LEN: usize = 128;

/// Parse the frames after the routing identity. `is_target` says whether
/// a frame names a target: it tells a REQ_CORRELATE id from a target name
/// (see [`Envelope::RequestId`]).
pub fn parse_request<'a, F: Deref<Target = [u8]>>(
    frames: &'a [F],
    limits: &Limits,
    is_target: impl Fn(&[u8]) -> bool,
) -> Parsed<'a> {
    let envelope = envelope(frames, is_target);
    let body = envelope.frames();
    let request = classify(&frames[body..], limits).map(|request| match request {
        Request::Forward { target, payload } => Request::Forward {
            target,
            payload: payload + body,
        },
        action => action,
    });
    Parsed {
        envelope,
        body,
        request,
    }
}

/// Which envelope a request came in: a lone frame is always a body.
fn envelope<F: Deref<Target = [u8]>>(frames: &[F], is_target: impl Fn(&[u8]) -> bool) -> Envelope {
    match frames {
        [first, _, ..] if first.is_empty() => Envelope::Delimiter,
        [id, delimiter, ..] if delimiter.is_empty() && is_request_id(id, is_target) => {
            Envelope::RequestId
        }
        _ => Envelope::Bare,
    }
}

fn is_request_id(frame: &[u8], is_target: impl Fn(&[u8]) -> bool) -> bool {
    let ours = frame.first() == Some(&0) && frame.len() <= MAX_REQUEST_ID_LEN;
    ours || (frame.len() == CORRELATE_ID_LEN && !is_target(frame))
}

fn classify<'a, F: Deref<Target = [u8]>>(
    body: &'a [F],
    limits: &Limits,
) -> Result<Request<'a>, Rejection> {
    if body.is_empty() {
        return Err(Rejection::new(
            ErrorCode::BadFrames,
            "empty message: send one JSON frame, or a target frame followed by payload frames",
        ));
    }
    if body.len() > limits.max_frames {
        return Err(Rejection::new(
            ErrorCode::BadFrames,
            format!(
                "{} frames is more than the {} this bridge accepts (max_frames): send fewer, larger frames",
                body.len(),
                limits.max_frames
            ),
        ));
    }
    let size: usize = body.iter().map(|f| f.len()).sum();
    if size > limits.max_message_bytes {
        return Err(Rejection::new(
            ErrorCode::TooLarge,
            format!(
                "request of {size} bytes is over the limit of {} bytes (max_message_bytes): split it or raise the limit",
                limits.max_message_bytes
            ),
        ));
    }
    if body.len() == 1 {
        parse_json(&body[0])
    } else {
        parse_target_frame(&body[0]).map(|target| Request::Forward {
            target: Cow::Borrowed(target),
            payload: 1,
        })
    }
}

fn parse_target_frame(frame: &[u8]) -> Result<&str, Rejection> {
    let bad = |why: &str| {
        Rejection::new(
            ErrorCode::BadFrames,
            format!("a multipart request starts with a frame naming the target; {why}"),
        )
    };
    if frame.is_empty() {
        return Err(bad("the first frame is empty"));
    }
    if frame.len() > MAX_TARGET_LEN {
        return Err(bad(&format!(
            "the first frame is {} bytes long, more than a target name ({MAX_TARGET_LEN} at most)",
            frame.len()
        )));
    }
    std::str::from_utf8(frame).map_err(|_| bad("the first frame is not UTF-8 text"))
}

/// The two fields the bridge reads; everything else is left unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    target: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
}

const JSON_HINT: &str = r#"send a JSON object such as {"target":"pc2",...}"#;

fn parse_json(frame: &[u8]) -> Result<Request<'_>, Rejection> {
    // JSON is UTF-8 (RFC 8259 §8.1), and a service decoding the request
    // (Python's `recv_json`) fails on anything else. serde_json checks the
    // strings it reads, not those it skips: the whole frame is checked
    // here, first. simdutf8: std's check takes 1.2 ms for a MiB of
    // non-ASCII text, four times the parse (docs/PERFORMANCE.md).
    let frame = simdutf8::basic::from_utf8(frame).map_err(|_| {
        let at = std::str::from_utf8(frame).map_or_else(|e| e.valid_up_to(), |_| 0);
        Rejection::new(
            ErrorCode::InvalidJson,
            format!(
                "the request is not UTF-8 text (an invalid byte at offset {at}); JSON is UTF-8: {JSON_HINT}"
            ),
        )
    })?;
    let first = frame.bytes().find(|b| !b.is_ascii_whitespace());
    match first {
        None => {
            return Err(Rejection::new(
                ErrorCode::InvalidJson,
                format!("empty request: {JSON_HINT}"),
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            let what = match serde_json::from_str::<serde::de::IgnoredAny>(frame) {
                Ok(_) => "valid JSON but not an object",
                Err(_) => "not valid JSON",
            };
            return Err(Rejection::new(
                ErrorCode::InvalidJson,
                format!("the request is {what}: {JSON_HINT}"),
            ));
        }
    }
    let head: Head = serde_json::from_str(frame).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("the request is not valid JSON ({e}): {JSON_HINT}"),
        )
    })?;
    match (head.target, head.action) {
        (Some(target), _) => json_string(target)
            .map(|target| Request::Forward { target, payload: 0 })
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::MissingTarget,
                    format!(
                        "\"target\" must be a string naming a configured target, not {}",
                        truncate(target.get())
                    ),
                )
            }),
        (None, Some(action)) => match json_string(action).as_deref() {
            Some("status") => Ok(Request::Action(Action::Status)),
            Some("ping") => Ok(Request::Action(Action::Ping)),
            _ => Err(Rejection::new(
                ErrorCode::MissingTarget,
                format!(
                    "unknown action {}: the bridge answers \"status\" and \"ping\"; to reach a service, give \"target\"",
                    truncate(action.get())
                ),
            )),
        },
        (None, None) => Err(Rejection::new(
            ErrorCode::MissingTarget,
            r#"the request has no "target": add "target":"<name>" naming a configured target, or "action":"status""#,
        )),
    }
}

/// A JSON string value, borrowed where it has no escapes.
fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// Echo at most a short prefix of client input in a message.
fn truncate(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1024,
        max_frames: 8,
    };

    /// The targets the tests' bridge has.
    fn is_target(frame: &[u8]) -> bool {
        [&b"pc2"[..], b"main_pc", b"rs", b"py", b"pc22"].contains(&frame)
    }

    fn parse(frames: &[&[u8]]) -> Parsed<'static> {
        let owned: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        let leaked: &'static [Vec<u8>] = Box::leak(owned.into_boxed_slice());
        parse_request(leaked, &LIMITS, is_target)
    }

    fn code(frames: &[&[u8]]) -> ErrorCode {
        parse(frames).request.unwrap_err().code
    }

    fn forward(target: &str, payload: usize) -> Request<'static> {
        Request::Forward {
            target: Cow::Owned(target.to_string()),
            payload,
        }
    }

    #[test]
    fn json_request_from_req_socket_is_forwarded_whole() {
        let p = parse(&[b"", br#"{"target":"pc2","x":1}"#]);
        assert_eq!(p.envelope, Envelope::Delimiter);
        assert_eq!(p.request.unwrap(), forward("pc2", 1));
    }

    #[test]
    fn json_request_from_bare_dealer_has_no_delimiter() {
        let p = parse(&[br#"{"target":"main_pc"}"#]);
        assert_eq!(p.envelope, Envelope::Bare);
        assert_eq!(p.request.unwrap(), forward("main_pc", 0));
    }

    #[test]
    fn escaped_target_is_decoded() {
        let p = parse(&[br#"{"target":"p\u0063\u0032"}"#]);
        assert_eq!(p.request.unwrap(), forward("pc2", 0));
    }

    #[test]
    fn multipart_request_forwards_frames_after_the_target() {
        let p = parse(&[b"", b"pc2", b"a", b"b"]);
        assert_eq!(p.request.unwrap(), forward("pc2", 2));
        let p = parse(&[b"pc2", b"\xff\x00"]);
        assert_eq!(p.request.unwrap(), forward("pc2", 1));
    }

    #[test]
    fn a_request_id_envelope_is_returned_and_not_forwarded() {
        let p = parse(&[b"\x00\x00\x00\x07", b"", b"pc2", b"payload"]);
        assert_eq!(p.envelope, Envelope::RequestId);
        assert_eq!(p.request.unwrap(), forward("pc2", 3));
        let p = parse(&[b"\x00id", b"", br#"{"action":"ping"}"#]);
        assert_eq!(p.request.unwrap(), Request::Action(Action::Ping));
        // An id with nothing after it is answered, with the id.
        let p = parse(&[b"\x00id", b""]);
        assert_eq!(p.envelope, Envelope::RequestId);
        assert_eq!(p.request.unwrap_err().code, ErrorCode::BadFrames);
        // Without its leading zero byte, or too long, a frame is a target name.
        assert_eq!(parse(&[b"id", b"", b"x"]).envelope, Envelope::Bare);
        let long = [0u8; MAX_REQUEST_ID_LEN + 1];
        assert_eq!(parse(&[&long, b"", b"x"]).envelope, Envelope::Bare);
        // An empty payload frame on the multipart path stays payload.
        assert_eq!(
            parse(&[b"pc2", b"", b"x"]).request.unwrap(),
            forward("pc2", 1)
        );
    }

    #[test]
    fn a_req_correlate_id_is_returned_and_not_forwarded() {
        // libzmq's REQ with ZMQ_REQ_CORRELATE: [4-byte id, "", body...].
        for id in [&b"\x07\x00\x00\x00"[..], b"\xb3\x9a\x11\xfe", b"abcd"] {
            let p = parse(&[id, b"", br#"{"target":"pc2"}"#]);
            assert_eq!(p.envelope, Envelope::RequestId, "{id:?}");
            assert_eq!(p.request.unwrap(), forward("pc2", 2));
            let p = parse(&[id, b"", b"pc2", b"x"]);
            assert_eq!(p.request.unwrap(), forward("pc2", 3));
        }
        // A 4-byte target name with an empty first payload frame stays a
        // multipart request; so does any other size of first frame.
        let p = parse(&[b"pc22", b"", b"x"]);
        assert_eq!(p.envelope, Envelope::Bare);
        assert_eq!(p.request.unwrap(), forward("pc22", 1));
        assert_eq!(parse(&[b"abc", b"", b"x"]).envelope, Envelope::Bare);
        assert_eq!(parse(&[b"abcde", b"", b"x"]).envelope, Envelope::Bare);
    }

    #[test]
    fn actions() {
        assert_eq!(
            parse(&[br#"{"action":"ping"}"#]).request.unwrap(),
            Request::Action(Action::Ping)
        );
        assert_eq!(
            parse(&[b"", br#" {"action":"status"}"#]).request.unwrap(),
            Request::Action(Action::Status)
        );
        assert_eq!(code(&[br#"{"action":"reboot"}"#]), ErrorCode::MissingTarget);
    }

    #[test]
    fn every_bad_input_has_its_code() {
        assert_eq!(code(&[b"not json"]), ErrorCode::InvalidJson);
        assert_eq!(code(&[b"[1,2]"]), ErrorCode::InvalidJson);
        assert_eq!(code(&[b""]), ErrorCode::InvalidJson);
        assert_eq!(code(&[b"{\"target\":\"\xff\"}"]), ErrorCode::InvalidJson);
        // Not UTF-8 in a value the bridge does not read: refused all the same.
        for bad in [
            &b"{\"target\":\"pc2\",\"v\":\"\xff\"}"[..],
            b"{\"target\":\"pc2\",\"v\":\"\xed\xa0\x80\"}",
            b"{\"target\":\"pc2\",\"\xc0\xaf\":1}",
            b"{\"target\":\"pc2\"}\xff",
        ] {
            let rejection = parse(&[bad]).request.unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidJson, "{bad:?}");
            assert!(rejection.message.contains("not UTF-8"), "{rejection:?}");
        }
        assert_eq!(
            code(&[br#"{"target":"a","target":"b"}"#]),
            ErrorCode::InvalidJson
        );
        assert_eq!(code(&[br#"{"x":1}"#]), ErrorCode::MissingTarget);
        assert_eq!(code(&[br#"{"target":5}"#]), ErrorCode::MissingTarget);
        assert_eq!(code(&[&[b'x'; 1025]]), ErrorCode::TooLarge);
        assert_eq!(code(&[b"pc2", &[b'x'; 1022]]), ErrorCode::TooLarge);
        assert_eq!(code(&[b"t".as_slice(); 9]), ErrorCode::BadFrames);
        assert_eq!(code(&[b"", b"", b"x"]), ErrorCode::BadFrames);
        assert_eq!(code(&[b"\xff\xfe", b"x"]), ErrorCode::BadFrames);
    }

    #[test]
    fn deep_nesting_is_answered_without_recursion() {
        // Unread fields are skipped without recursion, so depth cannot
        // overflow the stack; a deep document still needs a target.
        let deep = |prefix: &str| {
            let mut doc = prefix.as_bytes().to_vec();
            doc.extend(std::iter::repeat_n(b'[', 100_000));
            doc.extend(std::iter::repeat_n(b']', 100_000));
            doc.push(b'}');
            doc
        };
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_frames: 8,
        };
        let frames = [deep(r#"{"a":"#)];
        let p = parse_request(&frames, &limits, is_target);
        assert_eq!(p.request.unwrap_err().code, ErrorCode::MissingTarget);
        let frames = [deep(r#"{"target":"pc2","a":"#)];
        let p = parse_request(&frames, &limits, is_target);
        assert!(matches!(p.request, Ok(Request::Forward { .. })));
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let frame = format!(r#"{{"target":[{}]}}"#, "1,".repeat(200) + "1");
        let rejection = parse_request(&[frame.as_bytes()], &LIMITS, is_target)
            .request
            .unwrap_err();
        assert!(rejection.message.len() < 200, "{}", rejection.message);
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic_and_errors_are_json(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12)
        ) {
            let p = parse_request(&frames, &LIMITS, is_target);
            prop_assert_eq!(p.body, p.envelope.frames());
            prop_assert!(p.body == 0 || frames[p.body - 1].is_empty());
            match p.request {
                Ok(Request::Forward { payload, .. }) => prop_assert!(payload <= frames.len()),
                Ok(Request::Action(_)) => {}
                Err(r) => {
                    let doc: serde_json::Value = serde_json::from_slice(&r.to_reply()).unwrap();
                    prop_assert_eq!(doc["error"].as_str(), Some(r.code.as_str()));
                }
            }
        }

        #[test]
        fn a_json_frame_that_is_not_utf8_json_is_refused(
            frame in proptest::collection::vec(any::<u8>(), 1..96),
            splice in proptest::collection::vec(any::<u8>(), 0..8),
            at in any::<proptest::sample::Index>(),
        ) {
            // Arbitrary bytes, and bytes spliced into a request that would
            // be forwarded (so that most cases reach the JSON parser).
            let mut spliced = br#"{"target":"pc2","v":"abcdef","w":[1,{"x":"y"}]}"#.to_vec();
            let i = at.index(spliced.len());
            spliced.splice(i..i, splice);
            for frame in [frame, spliced] {
                let frames = [frame.as_slice()];
                let p = parse_request(&frames, &LIMITS, is_target);
                if p.request.is_ok() {
                    let text = std::str::from_utf8(&frame);
                    prop_assert!(text.is_ok(), "forwarded, not UTF-8: {:?}", frame);
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&frame).is_ok());
                }
            }
        }

        #[test]
        fn arbitrary_json_objects_with_a_target_are_forwarded(
            target in "[a-z_]{1,20}", extra in ".{0,50}"
        ) {
            let frame = serde_json::to_vec(&serde_json::json!({"target": target, "extra": extra})).unwrap();
            let frames = [frame.as_slice()];
            let p = parse_request(&frames, &LIMITS, is_target);
            prop_assert_eq!(p.request.unwrap(), Request::Forward { target: target.into(), payload: 0 });
        }
    }
}
