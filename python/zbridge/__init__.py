"""zbridge: a client for a redundant pair of zbridge bridges.

The engine is the Rust ``zbridge-client`` crate, the same one the bridge's
own tools use: one I/O thread per client fails over between the bridges,
resends what a dead bridge left unanswered (with the same request id, so
each call has exactly one result), probes a failed bridge and switches
back to it, and fails fast through circuit breakers. This package converts
Python values and errors; it decides nothing itself.

    import zbridge

    with zbridge.Client.from_config("zbridge.toml") as c:
        frames = c.request("pc2", b"payload")            # multipart path
        reply = c.request_json({"target": "pc2", "text": "hi"})   # JSON path

Calls wait without the GIL; one client may be shared by threads, and by
any number of coroutines (``await c.arequest(...)``) without a thread per
call.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import weakref
from typing import Any, AsyncIterator, Deque, Iterator, List, Optional, Sequence, Tuple, Union

from . import _zbridge
from ._types import (
    AllBridgesDown,
    BadReply,
    BreakerChanged,
    BridgeError,
    CircuitOpen,
    Closed,
    ConfigError,
    Connected,
    Delivery,
    EndpointDown,
    EndpointUp,
    Error,
    Event,
    FailedOver,
    Gap,
    Moved,
    OtherProcess,
    StreamMessage,
    SwitchedBack,
    Timeout,
    TooLarge,
)

__version__: str = _zbridge.__version__

__all__ = [
    "AllBridgesDown",
    "BadReply",
    "BreakerChanged",
    "BridgeError",
    "Call",
    "CircuitOpen",
    "Client",
    "Closed",
    "ConfigError",
    "Connected",
    "Delivery",
    "EndpointDown",
    "EndpointUp",
    "Error",
    "Event",
    "Events",
    "FailedOver",
    "Gap",
    "Moved",
    "OtherProcess",
    "StreamMessage",
    "Subscription",
    "SwitchedBack",
    "Timeout",
    "TooLarge",
]

Frame = Union[bytes, bytearray, memoryview, str]
"""A request frame; a str is sent as UTF-8."""

Call = _zbridge.Call
"""A call in flight (``Client.send``): ``result(timeout=None)``, ``done()``,
and once answered ``attempts``, ``endpoint``, ``elapsed``."""

Events = _zbridge.Events
"""The client's events (``Client.events()``): iterate, or ``get(timeout)``."""

# Shown as zbridge.X, where users find them.
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) and _obj.__module__ == "zbridge._types":
        _obj.__module__ = __name__


class Client:
    """A client of a bridge pair.

    ``Client(endpoints=[...], heartbeat_endpoints=[...], auth_token=None,
    request_timeout=..., ...)`` takes the ``[client]`` keys of a bridge
    config file as keyword arguments (seconds as numbers); keys left out
    get the same defaults as in a file: the local pair on ports 5600/5601,
    heartbeats 5610/5611, pub ports 5630/5631, ``request_timeout`` 6 s (the
    bridge's 5 s + 1), and so on (docs/CLIENT.md). ``auth_token`` (or the
    environment's ``ZBRIDGE_AUTH_TOKEN``) checks heartbeat signatures.
    With CURVE on the bridges, ``curve_server_key`` is their public key (the
    content of their ``key.pub``, Z85) and ``curve_secret_key_file`` this
    client's own pair as ``zbridge keygen`` writes it (default: a new pair,
    which bridges with ``curve_clients`` refuse); docs/SECURITY.md.

    ``Client.from_config(path)`` reads the bridges' own config file: their
    endpoints, heartbeat ports, token and ``[client]`` section.

    ``max_transport_bytes`` is the largest frame the bridges accept (their
    key of that name; 16 MiB by default): a larger one raises ``TooLarge``
    before anything is sent.

    The client starts its I/O thread at once and connects in the
    background; ``close()`` (or leaving a ``with`` block) stops it, and
    calls still waiting raise ``Closed``. A client dropped without
    ``close()`` is freed all the same. It belongs to the process that
    created it: after ``os.fork()`` the child gets ``OtherProcess`` from
    it and creates its own.

    Every ``timeout`` argument is seconds: 0 looks without waiting,
    ``None`` (or a value too large for a clock) sets no bound, NaN and
    negative numbers raise ``ValueError`` before anything is sent.
    """

    def __init__(
        self,
        endpoints: Optional[Sequence[str]] = None,
        heartbeat_endpoints: Optional[Sequence[str]] = None,
        auth_token: Optional[str] = None,
        *,
        pub_endpoints: Optional[Sequence[str]] = None,
        request_timeout: Optional[float] = None,
        max_reconnect_attempts: Optional[int] = None,
        reconnect_delay: Optional[float] = None,
        hold_down: Optional[float] = None,
        heartbeat_timeout: Optional[float] = None,
        breaker_failure_rate: Optional[float] = None,
        breaker_window: Optional[int] = None,
        breaker_min_calls: Optional[int] = None,
        breaker_open_wait: Optional[float] = None,
        breaker_half_open_probes: Optional[int] = None,
        curve_server_key: Optional[str] = None,
        curve_secret_key_file: Optional[str] = None,
        max_transport_bytes: Optional[int] = None,
    ) -> None:
        settings = {
            key: value
            for key, value in (
                ("endpoints", endpoints),
                ("heartbeat_endpoints", heartbeat_endpoints),
                ("pub_endpoints", pub_endpoints),
                ("request_timeout", request_timeout),
                ("max_reconnect_attempts", max_reconnect_attempts),
                ("reconnect_delay", reconnect_delay),
                ("hold_down", hold_down),
                ("heartbeat_timeout", heartbeat_timeout),
                ("breaker_failure_rate", breaker_failure_rate),
                ("breaker_window", breaker_window),
                ("breaker_min_calls", breaker_min_calls),
                ("breaker_open_wait", breaker_open_wait),
                ("breaker_half_open_probes", breaker_half_open_probes),
                ("curve_server_key", curve_server_key),
                ("curve_secret_key_file", curve_secret_key_file),
                ("max_transport_bytes", max_transport_bytes),
            )
            if value is not None
        }
        self._start(_zbridge.Core(settings, auth_token))

    @classmethod
    def from_config(cls, path: Union[str, "os.PathLike[str]"]) -> "Client":
        """A client for the pair described by a bridge config file."""
        client = cls.__new__(cls)
        client._start(_zbridge.Core.from_file(os.fspath(path)))
        return client

    def _start(self, core: Any) -> None:
        self._core = core
        # One asyncio completion hook per event loop that awaits calls, and
        # the read end of its doorbell. The loop's watch holds the doorbell
        # and only a weak reference to the driver: dropping the client
        # frees the driver, the core, its I/O thread and its sockets.
        self._drivers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Tuple[Any, socket.socket]]" = (
            weakref.WeakKeyDictionary()
        )

    @property
    def settings(self) -> dict:
        """The effective settings (endpoints, timeouts, breaker keys; the
        token itself left out)."""
        return self._core.settings

    @property
    def closed(self) -> bool:
        return self._core.closed

    # -- blocking calls -------------------------------------------------

    def request(self, target: str, *frames: Frame, timeout: Optional[float] = None) -> List[bytes]:
        """Send ``frames`` to ``target`` on the multipart path and return the
        target's reply frames, unchanged.

        Waits without the GIL. ``timeout`` bounds this wait in seconds
        (``None``: the client's own deadlines end the call); past it,
        ``Timeout`` is raised. Raises ``BridgeError`` (with ``code``),
        ``Timeout``/``AllBridgesDown``, ``CircuitOpen`` or ``Closed``.
        """
        return self._core.request(target, frames, timeout)

    def request_json(self, obj: Any, timeout: Optional[float] = None) -> Any:
        """Send a JSON object that names its target (``{"target": "pc2",
        ...}``) on the JSON path: the target receives it unchanged. The
        reply, one frame of JSON, comes back parsed. ``obj`` may also be
        JSON text already (``bytes`` or ``str``). Errors as ``request``;
        ``BadReply`` if the reply is not one frame of JSON."""
        return _parse(self._core.request(None, (_encode(obj),), timeout))

    def send(self, target: str, *frames: Frame) -> Call:
        """Send a call and return at once: ``call.result(timeout=None)``
        waits for it. One thread can keep many calls in flight this way."""
        return self._core.send(target, frames)

    def send_json(self, obj: Any) -> Call:
        """``send`` on the JSON path; ``call.result()`` gives the reply frames."""
        return self._core.send(None, (_encode(obj),))

    # -- asyncio --------------------------------------------------------

    async def arequest(self, target: str, *frames: Frame, timeout: Optional[float] = None) -> List[bytes]:
        """``request`` for asyncio: any number of coroutines may await calls
        on one client at once; no thread is used per call (the client's
        I/O thread wakes the event loop when results come)."""
        return await self._await(target, frames, timeout)

    async def arequest_json(self, obj: Any, timeout: Optional[float] = None) -> Any:
        """``request_json`` for asyncio."""
        return _parse(await self._await(None, (_encode(obj),), timeout))

    def _await(self, target: Optional[str], frames: tuple, timeout: Optional[float]) -> "asyncio.Future[List[bytes]]":
        loop = asyncio.get_running_loop()
        hook = self._drivers.get(loop)
        if hook is None:
            driver, fd = self._core.driver()
            bell = socket.socket(fileno=fd)
            bell.setblocking(False)
            loop.add_reader(bell, _ring, loop, bell, weakref.ref(driver))
            hook = self._drivers[loop] = (driver, bell)
        future = loop.create_future()
        # The timeout is checked (NaN, negative: ValueError) before the
        # call is sent; `wait` is None when it sets no bound.
        wait = hook[0].submit(future, target, frames, timeout)
        if wait is not None and not future.done():
            handle = loop.call_later(wait, _expire, future, timeout)
            future.add_done_callback(lambda _: handle.cancel())
        return future

    # -- events and streams ---------------------------------------------

    def events(self) -> Events:
        """The client's events from now on: ``FailedOver``,
        ``SwitchedBack``, ``BreakerChanged``, ``EndpointDown``,
        ``EndpointUp``, ``Connected``. Iterate (blocks; ends when the client
        closes) or ``get(timeout)`` (``None`` when none came)."""
        return self._core.events()

    def subscribe(self, stream: Optional[str] = None, *prefixes: Union[bytes, str]) -> "Subscription":
        """Subscribe to ``stream`` (``None``: every stream) under
        ``prefixes`` (none: everything) on both bridges' pub ports. The
        feed survives a failover and reports what it lost (``Gap``)."""
        encoded = [p.encode() if isinstance(p, str) else bytes(p) for p in prefixes]
        return Subscription(self._core.subscribe(stream, encoded))

    # -- lifetime -------------------------------------------------------

    def close(self) -> None:
        """Stop the client's I/O thread and close its sockets; calls still
        waiting raise ``Closed``. Every thread and descriptor of the client
        is released by the time it returns (a doorbell watched by an event
        loop running in another thread: on that loop's next turn).
        Idempotent."""
        self._core.close()
        hooks = list(self._drivers.items())
        self._drivers.clear()
        for loop, (driver, bell) in hooks:
            _release(loop, driver, bell)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<zbridge.Client {state} {self.settings['endpoints']}>"


class Subscription:
    """A stream subscription (``Client.subscribe``): iterate it, or ``async
    for`` it, to get ``StreamMessage``, ``Gap`` and ``Moved`` in order.
    Iteration ends when it is closed."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._ready: Deque[Delivery] = collections.deque()

    def recv(self, timeout: Optional[float] = None) -> Optional[Delivery]:
        """The next delivery within ``timeout`` seconds (``None``: wait for
        one); ``None`` if none came or the subscription is closed."""
        if not self._ready:
            batch = self._native.recv(timeout)
            if batch:
                self._ready.extend(batch)
        return self._ready.popleft() if self._ready else None

    def __iter__(self) -> Iterator[Delivery]:
        return self

    def __next__(self) -> Delivery:
        while not self._ready:
            batch = self._native.recv(None)
            if batch is None:
                raise StopIteration
            self._ready.extend(batch)
        return self._ready.popleft()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        # The Rust subscriber reads on the caller's thread: a worker
        # thread waits, a batch at a time, in short slices so that a
        # cancelled iteration frees it soon.
        while not self._ready:
            batch = await asyncio.to_thread(self._native.recv, 0.2)
            if batch is None:
                raise StopAsyncIteration
            self._ready.extend(batch)
        return self._ready.popleft()

    def close(self) -> None:
        """Close the sockets; iteration ends."""
        self._native.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(obj: Any) -> Union[bytes, str]:
    if isinstance(obj, (bytes, str)):
        return obj
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        raise ValueError(
            f"cannot send this object as JSON: {e} (NaN and infinities are not JSON; "
            "the bridges would answer invalid_json): nothing was sent"
        ) from None


def _parse(frames: List[bytes]) -> Any:
    if len(frames) != 1:
        raise BadReply(f"a JSON reply is one frame; this one has {len(frames)}")
    try:
        return json.loads(frames[0])
    except ValueError as e:
        raise BadReply(f"the reply is not JSON: {e}") from None


def _ring(loop: asyncio.AbstractEventLoop, bell: socket.socket, driver: "weakref.ref[Any]") -> None:
    """A doorbell rang: empty it, then complete the calls whose results
    came. At end-of-file its driver is gone: stop watching, close it."""
    if bell.fileno() < 0:
        return
    gone = False
    while True:
        try:
            if not bell.recv(256):
                gone = True
                break
        except BlockingIOError:
            break
    hook = driver()
    if hook is not None:
        hook.drain()
    if gone:
        _unwatch(loop, bell)


def _unwatch(loop: asyncio.AbstractEventLoop, bell: socket.socket) -> None:
    if bell.fileno() >= 0:
        loop.remove_reader(bell)
        bell.close()


def _release(loop: asyncio.AbstractEventLoop, driver: Any, bell: socket.socket) -> None:
    """After its client closed: complete the calls of ``driver`` (all have
    their result, ``Closed`` at the latest), stop ``loop`` watching ``bell``
    and close it. From any thread: a loop running elsewhere does it on its
    own thread."""
    if loop.is_closed():
        bell.close()
    elif loop.is_running() and _running_loop() is not loop:
        loop.call_soon_threadsafe(_finish, loop, driver, bell)
    else:
        _finish(loop, driver, bell)


def _finish(loop: asyncio.AbstractEventLoop, driver: Any, bell: socket.socket) -> None:
    try:
        driver.drain()
    finally:
        _unwatch(loop, bell)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _expire(future: "asyncio.Future[Any]", timeout: float) -> None:
    if not future.done():
        future.set_exception(Timeout(f"no result within the call's timeout of {timeout:.3f} s"))
