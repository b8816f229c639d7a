//! Carrying out the request path's actions: the only code that sends on
//! the frontend ROUTERs and the targets' DEALERs. What could not be sent
//! goes back to the request path as an event ([`PathEvent::Blocked`],
//! [`PathEvent::Failed`], [`PathEvent::Dropped`]).

use super::inflight::Key;
use super::state::{Action, Client, Event as PathEvent, State};
use super::{Dealer, Frontends};
use std::time::Instant;

/// Carry out the request path's actions, in order, and tell it what could
/// not be sent. `input` is the message of the event that led to them (whose
/// frames [`super::state::Body::Input`] moves out). Returns whether a send to a
/// backend would have blocked.
pub(super) fn carry_out(
    state: &mut State<Dealer>,
    frontends: &Frontends,
    actions: &mut Vec<Action>,
    now: Instant,
    input: &mut Vec<zmq::Message>,
) -> bool {
    let mut blocked = false;
    for action in actions.drain(..) {
        let failed = match action {
            Action::Reply { to, body } => {
                let sent = match &frontends[to.port.index()] {
                    Some(frontend) => send_routed(&frontend.socket, to, body.frames(input)),
                    None => Err(zmq::Error::ENOTSOCK),
                };
                sent.err().map(PathEvent::Dropped)
            }
            Action::Forward { target, key, body } => match &state.targets[target].dealer {
                Some(dealer) => {
                    let mut frames = body.frames(input);
                    match send_envelope(dealer, key, &mut frames) {
                        Ok(()) => None,
                        Err(zmq::Error::EAGAIN) => {
                            blocked = true;
                            let frames = frames.collect();
                            Some(PathEvent::Blocked {
                                target,
                                key,
                                frames,
                            })
                        }
                        Err(error) => Some(PathEvent::Failed { target, key, error }),
                    }
                }
                None => Some(PathEvent::Failed {
                    target,
                    key,
                    error: zmq::Error::ENOTSOCK,
                }),
            },
        };
        if let Some(event) = failed {
            // Feedback pushes no action.
            state.step(now, event, &mut Vec::new());
        }
    }
    blocked
}

/// Send the requests that waited for `target`'s backend, in the order they
/// came, until none is left or one would block again.
pub(super) fn send_waiting(
    state: &mut State<Dealer>,
    frontends: &Frontends,
    actions: &mut Vec<Action>,
    now: Instant,
    target: usize,
) {
    loop {
        state.step(now, PathEvent::Writable(target), actions);
        if actions.is_empty() || carry_out(state, frontends, actions, now, &mut Vec::new()) {
            return;
        }
    }
}

/// Send `[key, "", payload...]` to a backend; fails at once with EAGAIN when
/// no backend is connected (ZMQ_IMMEDIATE) or its queue is full.
///
/// On EAGAIN nothing of `payload` has been taken, so the caller can keep it.
fn send_envelope<I: Iterator<Item = zmq::Message>>(
    dealer: &zmq::Socket,
    key: Key,
    payload: &mut I,
) -> zmq::Result<()> {
    dealer.send(&key.to_bytes()[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    let mut payload = payload.peekable();
    let mut flags = if payload.peek().is_some() {
        zmq::SNDMORE
    } else {
        0
    };
    dealer.send(&b""[..], flags)?;
    while let Some(frame) = payload.next() {
        flags = if payload.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        dealer.send(frame, flags)?;
    }
    Ok(())
}

/// Send a reply to a client through a ROUTER, mirroring its envelope.
fn send_routed(
    frontend: &zmq::Socket,
    to: Client,
    body: impl IntoIterator<Item = zmq::Message>,
) -> zmq::Result<()> {
    // ROUTER_MANDATORY: an unreachable client fails here, before any frame
    // of the message is queued.
    frontend.send(to.id, zmq::SNDMORE | zmq::DONTWAIT)?;
    for frame in to.back.frames() {
        frontend.send(frame, zmq::SNDMORE)?;
    }
    let mut body = body.into_iter().peekable();
    while let Some(frame) = body.next() {
        let flags = if body.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        frontend.send(frame, flags)?;
    }
    Ok(())
}
