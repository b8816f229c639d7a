//! Error codes and the error document a client receives instead of silence.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error a bridge can answer with (DESIGN §3). The string form is the
/// `error` field of the reply and never changes: clients match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    MissingTarget,
    UnknownTarget,
    TooLarge,
    BadFrames,
    RateLimited,
    Timeout,
    BackendUnavailable,
    CircuitOpen,
    Draining,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidJson,
        ErrorCode::MissingTarget,
        ErrorCode::UnknownTarget,
        ErrorCode::TooLarge,
        ErrorCode::BadFrames,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::BackendUnavailable,
        ErrorCode::CircuitOpen,
        ErrorCode::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingTarget => "missing_target",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadFrames => "bad_frames",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::CircuitOpen => "circuit_open",
            ErrorCode::Draining => "draining",
        }
    }

    /// Position in [`ErrorCode::ALL`], for counters kept in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was refused: the code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    pub fn to_reply(&self) -> Vec<u8> {
        error_reply(self.code, &self.message)
    }
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    status: &'static str,
    error: &'static str,
    message: &'a str,
}

/// `{"status":"error","error":"<code>","message":"<text>"}` as one frame.
pub fn error_reply(code: ErrorCode, message: &str) -> Vec<u8> {
    let doc = ErrorDoc {
        status: "error",
        error: code.as_str(),
        message,
    };
    // Serializing a struct of strings cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The bridge's error document in a one-frame reply: exactly `status`
/// "error", a known `error` code and a `message`. Anything else (a target's
/// own JSON that happens to say "error", too) is not one.
pub fn parse_error_reply(frames: &[impl AsRef<[u8]>]) -> Option<Rejection> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        status: String,
        error: String,
        message: String,
    }
    let [only] = frames else { return None };
    // An error reply is a JSON object: any other frame is not one, and
    // costs no parse (a failed one allocates its error).
    if only.as_ref().trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let doc: Doc = serde_json::from_slice(only.as_ref()).ok()?;
    if doc.status != "error" {
        return None;
    }
    let code = *ErrorCode::ALL.iter().find(|c| c.as_str() == doc.error)?;
    Some(Rejection::new(code, doc.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_parse_back_and_look_alikes_do_not() {
        for code in ErrorCode::ALL {
            let reply = [error_reply(code, "why")];
            assert_eq!(parse_error_reply(&reply), Some(Rejection::new(code, "why")));
        }
        for other in [
            &br#"{"status":"error","error":"oops","message":"x"}"#[..],
            br#"{"status":"error","error":"timeout","message":"x","extra":1}"#,
            br#"{"status":"ok","error":"timeout","message":"x"}"#,
            b"not json",
        ] {
            assert_eq!(parse_error_reply(&[other]), None);
        }
        // JSON may start with whitespace: the check before the parse allows it.
        let spaced = b" \n{\"status\":\"error\",\"error\":\"timeout\",\"message\":\"x\"}";
        assert_eq!(
            parse_error_reply(&[&spaced[..]]),
            Some(Rejection::new(ErrorCode::Timeout, "x"))
        );
        let two = [error_reply(ErrorCode::Timeout, "x"), b"more".to_vec()];
        assert_eq!(
            parse_error_reply(&two),
            None,
            "a two-frame reply is the target's"
        );
    }

    #[test]
    fn codes_round_trip_through_their_index() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
    }

    #[test]
    fn error_reply_is_the_documented_json() {
        let reply = error_reply(ErrorCode::UnknownTarget, "no \"x\"");
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":"error","error":"unknown_target","message":"no \"x\""})
        );
    }
}
