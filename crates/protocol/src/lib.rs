//! The zbridge wire protocol, as pure code: no sockets, no clocks.
//!
//! A client talks to a bridge's frontend ROUTER with REQ or DEALER sockets.
//! [`parse_request`] takes the frames that follow the routing identity and
//! says what the client asked for: a request to forward to a target, or an
//! action the bridge answers itself. Every way a request can be wrong maps to
//! an [`ErrorCode`], and [`error_reply`] encodes the error document the client
//! gets back (DESIGN §3). The relay owns the sockets; this crate only reads
//! byte slices, so it can be fuzzed and property-tested. [`stream`] reads
//! and writes the stamp on republished stream messages (DESIGN §3b);
//! [`time::later`] is the deadline arithmetic both the bridge and the client
//! use, which cannot panic.
#![forbid(unsafe_code)]

mod error;
pub mod heartbeat;
mod request;
pub mod stream;
pub mod time;

pub use error::{error_reply, parse_error_reply, ErrorCode, Rejection};
pub use request::{
    parse_request, Action, Envelope, Limits, Parsed, Request, CORRELATE_ID_LEN, MAX_REQUEST_ID_LEN,
};
