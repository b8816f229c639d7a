"""The exceptions, events and stream deliveries of zbridge.

Plain Python classes: the native module builds them, editors and pickle see
ordinary classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union


class Error(Exception):
    """Base of every zbridge error: ``except zbridge.Error`` catches them all."""


class BridgeError(Error):
    """A bridge answered with an error document: the request reached a
    bridge, which refused it or could not get an answer from the target.

    ``code`` is the bridge's error code (``unknown_target``, ``timeout``,
    ``backend_unavailable``, ``circuit_open``, ``rate_limited``,
    ``too_large``, ``bad_frames``, ``invalid_json``, ``missing_target``;
    docs/PROTOCOL.md), ``message`` says what to do.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"the bridge answered {self.code}: {self.message}"


class Timeout(Error):
    """No answer in time: either no bridge answered within
    ``request_timeout`` over ``max_reconnect_attempts`` rounds of all
    bridges (``attempts`` sends), or the call's own ``timeout`` passed
    (``attempts`` is ``None``)."""

    def __init__(self, message: str, attempts: Optional[int] = None) -> None:
        super().__init__(message)
        self.attempts = attempts


class AllBridgesDown(Timeout):
    """No bridge was reachable (none connected) for
    ``max_reconnect_attempts`` rounds: start a bridge or check the
    endpoints. A kind of ``Timeout``."""


class CircuitOpen(Error):
    """A circuit breaker is open (of every bridge, or of the client as a
    whole): the call failed at once without touching the network. Retry
    after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Closed(Error):
    """The client was closed before the call had its result."""


class TooLarge(Error, ValueError):
    """A request frame over ``max_transport_bytes`` (``limit``), the largest
    frame the bridges accept: refused before anything was sent (the bridges
    would drop the connection, and every call on it would fail over).
    ``size`` is the frame's length in bytes."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class OtherProcess(Error):
    """The client was created in another process (``pid``), before an
    ``os.fork()``: its I/O thread stayed there. Nothing was sent; create a
    new client in this process."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


class BadReply(Error):
    """An answer that is not what the call expects (e.g. ``request_json``
    got a reply that is not one frame of JSON)."""


class ConfigError(Error, ValueError):
    """A setting the client cannot use; ``key`` names it ("" when none)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Connected:
    """libzmq finished a handshake with a bridge."""

    endpoint: str


@dataclass(frozen=True)
class EndpointDown:
    """A bridge is out of use. ``reason``: ``disconnected``,
    ``handshake_failed`` (the bridge refused our CURVE key, or one side has
    CURVE and the other not: the client's log and the ``AllBridgesDown``
    that follows say which), ``not_connected``, ``no_answer``,
    ``heartbeat_silence``, ``draining``, ``leaving``."""

    endpoint: str
    reason: str


@dataclass(frozen=True)
class EndpointUp:
    """A bridge is back in use (it answered probes for ``hold_down``, or a
    failover notification named it)."""

    endpoint: str


@dataclass(frozen=True)
class FailedOver:
    """Calls now go to a lower-priority bridge."""

    from_endpoint: str
    to_endpoint: str


@dataclass(frozen=True)
class SwitchedBack:
    """Calls now go to a higher-priority bridge again."""

    from_endpoint: str
    to_endpoint: str


@dataclass(frozen=True)
class BreakerChanged:
    """A circuit breaker is now ``open``, ``half_open`` or ``closed``;
    ``endpoint`` is ``None`` for the client's overall breaker."""

    endpoint: Optional[str]
    state: str


Event = Union[Connected, EndpointDown, EndpointUp, FailedOver, SwitchedBack, BreakerChanged]


@dataclass(frozen=True)
class StreamMessage:
    """A message as the upstream published it (the bridge's stamp removed).

    ``prefix`` is the subscribed prefix it was numbered under, ``seq`` its
    number there, ``source`` the numbering bridge process, ``session`` that
    bridge's connection to the upstream. ``last_value``: the last message
    of its topic as the bridge kept it (a stream with ``last_value``),
    given as the subscription began, not a new publish; ``seq`` is then the
    number of the last message published under the prefix.
    """

    stream: str
    prefix: bytes
    seq: int
    frames: List[bytes] = field(repr=False)
    source: int
    session: int
    last_value: bool = False


@dataclass(frozen=True)
class Gap:
    """Messages under ``prefix`` that this subscriber never got: ``missed``
    is how many, or ``None`` when the numbers cannot say (the bridge lost
    its upstream, or a move to a bridge that lacked the last message)."""

    stream: str
    prefix: bytes
    missed: Optional[int]


@dataclass(frozen=True)
class Moved:
    """The feed for ``prefix`` moved from one bridge's copies to the
    other's (a failover); nothing was lost unless a ``Gap`` follows."""

    stream: str
    prefix: bytes
    from_source: int
    to_source: int


Delivery = Union[StreamMessage, Gap, Moved]
