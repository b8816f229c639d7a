"""Arguments a careless or hostile caller passes: one rule for every
timeout, frames too large for the bridges, JSON that is not JSON, a closed
client; no call ever raises a panic."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Callable, List

import pytest
import zbridge
from conftest import free_port, tcp


def lone_client(bridge, **settings) -> zbridge.Client:
    settings.setdefault("request_timeout", 2.0)
    return zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[], **settings)


def seen(c: zbridge.Client) -> int:
    """Request bodies the tests/service.py behind `pc2` has received."""
    return json.loads(c.request("pc2", b"__seen__")[0])["total"]


def forever(v: Any) -> bool:
    """Whether a wait of `v` seconds would outlast the test."""
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and v > 5


REFUSED = [float("nan"), -1, -1e-300, float("-inf")]


def test_every_timeout_argument_refuses_nan_and_negatives_before_sending_and_takes_huge_ones(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    with lone_client(bridge) as c:
        sent = seen(c)
        for bad in REFUSED:
            for call in (
                lambda: c.request("pc2", b"x", timeout=bad),
                lambda: c.request_json({"target": "pc2"}, timeout=bad),
                lambda: asyncio.run(c.arequest("pc2", b"x", timeout=bad)),
                lambda: asyncio.run(c.arequest_json({"target": "pc2"}, timeout=bad)),
                lambda: c.events().get(bad),
            ):
                with pytest.raises(ValueError, match="not a number of seconds"):
                    call()
        call = c.send("pc2", b"kept")
        for bad in REFUSED:
            with pytest.raises(ValueError, match="not a number of seconds"):
                call.result(bad)
        assert seen(c) == sent + 1, "only the kept call reached the service"

        # Huge waits are no bound at all; 0 and tiny ones look and go.
        for huge in (1e19, 1e300, float("inf"), 10**30):
            assert c.request("pc2", b"h", timeout=huge) == [b"h"]
            assert asyncio.run(c.arequest("pc2", b"a", timeout=huge)) == [b"a"]
            assert call.result(huge) == [b"kept"]
        assert call.result(0) == call.result(1e-300) == [b"kept"]
        events = c.events()
        assert events.get(0) is None and events.get(1e-300) is None
        threading.Timer(0.3, c.close).start()
        with pytest.raises(StopIteration):
            events.get(1e19)


def test_a_frame_over_max_transport_bytes_is_refused_before_sending_and_disturbs_no_call(lab):
    flags = lab.config("max_message_bytes = 1000\nmax_transport_bytes = 4000\n")
    bridge = lab.bridge(flags, f"--pc2-addr={lab.service()}")
    with lone_client(bridge, max_transport_bytes=4000) as c:
        assert c.settings["max_transport_bytes"] == 4000
        sent = seen(c)
        events = c.events()
        start = time.monotonic()
        for call in (
            lambda: c.request("pc2", b"x" * 4001),
            lambda: c.request("pc2", b"small", b"x" * 4001),
            lambda: c.request_json({"target": "pc2", "text": "x" * 4000}),
            lambda: c.send("pc2", b"x" * 4001).result(),
            lambda: asyncio.run(c.arequest("pc2", b"x" * 4001)),
        ):
            with pytest.raises(zbridge.TooLarge) as e:
                call()
            assert (e.value.limit, isinstance(e.value, ValueError)) == (4000, True)
            assert e.value.size > 4000 and "max_transport_bytes (4000 bytes)" in str(e.value)
        took = time.monotonic() - start
        assert took < 1.0, f"refusals took {took:.2f} s"
        assert seen(c) == sent, "nothing refused reached the service"
        # Within the transport limit, the bridge's own limit answers.
        with pytest.raises(zbridge.BridgeError) as e:
            c.request("pc2", b"x" * 4000)
        assert e.value.code == "too_large"
        call = c.send("pc2", b"fine")
        assert call.result(5) == [b"fine"] and call.attempts == 1
        noticed = list(iter(lambda: events.get(0), None))
        assert noticed == [], "the client saw no bridge fail"

    # A client's default is the bridges' default: 16 x 1 MiB.
    with lone_client(bridge) as c:
        assert c.settings["max_transport_bytes"] == 16 << 20
        with pytest.raises(zbridge.TooLarge):
            c.request("pc2", bytes(20_000_000))


def test_json_with_nan_is_refused_before_sending(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    with lone_client(bridge) as c:
        sent = seen(c)
        for value in (float("nan"), float("inf"), [1, float("-inf")]):
            for call in (
                lambda: c.request_json({"target": "pc2", "v": value}),
                lambda: c.send_json({"target": "pc2", "v": value}),
                lambda: asyncio.run(c.arequest_json({"target": "pc2", "v": value})),
            ):
                with pytest.raises(ValueError, match="not JSON"):
                    call()
        assert seen(c) == sent


def test_a_closed_client_refuses_everything_with_closed(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    c = lone_client(bridge)
    c.close()
    c.close()
    for call in (
        lambda: c.request("pc2", b"x"),
        lambda: c.send("pc2", b"x"),
        lambda: asyncio.run(c.arequest("pc2", b"x")),
        lambda: c.events(),
        lambda: c.subscribe("dreams"),
        lambda: c.subscribe(None),
    ):
        with pytest.raises(zbridge.Closed) as e:
            call()
        assert str(e.value) == "the client is closed: create a new one for more calls, events or subscriptions"


def hostile_values() -> List[Any]:
    return [
        float("nan"),
        float("inf"),
        float("-inf"),
        -1,
        0,
        1e19,
        1e-300,
        10**30,
        10**400,
        -(10**30),
        "",
        "x" * 1000,
        "\udcff",
        b"",
        b"\xff",
        None,
        [],
        [""],
        {},
        object(),
        True,
    ]


def test_no_public_function_panics_on_hostile_arguments(lab):
    """Every outcome is a result or an `Exception`: never pyo3's
    PanicException (a BaseException that `except Exception` misses)."""
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    nowhere = tcp(free_port())
    quick = dict(heartbeat_endpoints=[], request_timeout=0.2, max_reconnect_attempts=1)
    c = lone_client(bridge, request_timeout=0.5, max_reconnect_attempts=1)
    dead = zbridge.Client(endpoints=[nowhere], **quick)
    call = c.send("pc2", b"x")
    events = c.events()
    sub = zbridge.Client(endpoints=[nowhere], pub_endpoints=[nowhere], **quick).subscribe("s")
    settings = [
        "endpoints",
        "heartbeat_endpoints",
        "pub_endpoints",
        "request_timeout",
        "max_reconnect_attempts",
        "reconnect_delay",
        "hold_down",
        "heartbeat_timeout",
        "breaker_failure_rate",
        "breaker_window",
        "breaker_min_calls",
        "breaker_open_wait",
        "breaker_half_open_probes",
        "curve_server_key",
        "curve_secret_key_file",
        "max_transport_bytes",
    ]
    functions: List[Callable[[Any], Any]] = [
        lambda v: c.request(v, b"x"),
        lambda v: c.request("pc2", v),
        lambda v: c.request("pc2", b"x", timeout=v),
        lambda v: dead.request("pc2", b"x", timeout=v),
        lambda v: c.request_json(v),
        lambda v: c.request_json({"target": "pc2", "v": v}),
        lambda v: c.request_json({"target": "pc2"}, timeout=v),
        lambda v: c.send(v, b"x").result(2),
        lambda v: c.send("pc2", v).result(2),
        lambda v: c.send_json(v).result(2),
        lambda v: asyncio.run(c.arequest(v, b"x")),
        lambda v: asyncio.run(c.arequest("pc2", v, timeout=2)),
        lambda v: asyncio.run(c.arequest("pc2", b"x", timeout=v)),
        lambda v: asyncio.run(c.arequest_json(v, timeout=2)),
        lambda v: asyncio.run(c.arequest_json({"target": "pc2"}, timeout=v)),
        lambda v: call.result(v),
        lambda v: events.get(0 if forever(v) else v),
        lambda v: sub.recv(0 if forever(v) else v),
        lambda v: c.subscribe(v).close(),
        lambda v: c.subscribe("s", v).close(),
        lambda v: zbridge.Client(v).close(),
        lambda v: zbridge.Client.from_config(v).close(),
        lambda v: zbridge.Client(auth_token=v, **quick).close(),
    ] + [lambda v, key=key: zbridge.Client(**{key: v}, **(quick if key not in quick else {})).close() for key in settings]
    outcomes = set()
    for f in functions:
        for v in hostile_values():
            try:
                f(v)
                outcomes.add("ok")
            except Exception as e:  # a BaseException (a panic) fails the test
                outcomes.add(type(e).__name__)
    assert {"ok", "ValueError", "TypeError", "ConfigError", "BridgeError"} <= outcomes, outcomes
    for closing in (c, dead):
        closing.close()
    sub.close()
