"""Calls through real bridges: both paths, every error a caller can get,
deadlines, threads, closing."""
from __future__ import annotations

import array
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zbridge
from conftest import free_port, tcp


def lone_client(bridge, **settings) -> zbridge.Client:
    """A client of one bridge, with no heartbeat watch."""
    settings.setdefault("request_timeout", 2.0)
    return zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[], **settings)


def test_a_multipart_and_a_json_call_get_their_answers(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    with lone_client(bridge) as c:
        assert c.request("pc2", b"one", bytearray(b"two"), "three") == [b"one", b"two", b"three"]
        # Any buffer of bytes (the abi3 wheel reads it through a memoryview);
        # a buffer of wider items is refused, not sent as its raw bytes.
        assert c.request("pc2", memoryview(b"four"), array.array("B", b"five")) == [b"four", b"five"]
        with pytest.raises(TypeError, match="a frame is bytes"):
            c.request("pc2", array.array("i", [6]))
        assert c.request_json({"target": "pc2", "text": "hi"}) == {
            "echo": {"target": "pc2", "text": "hi"}
        }
        call = c.send("pc2", b"sent")
        assert call.result(timeout=5) == [b"sent"]
        assert (call.attempts, call.endpoint) == (1, bridge.frontend)
        assert call.done()
        # A bridge action is a JSON request without a target.
        assert c.request_json({"action": "ping"})["action"] == "pong"


def test_from_config_reads_the_bridges_file(lab, tmp_path):
    service = lab.service()
    port = free_port()
    bridge = lab.bridge(f"--pc2-addr={service}", port=port)
    path = tmp_path / "zbridge.toml"
    path.write_text(
        f"primary_port = {port}\nsecondary_port = {free_port()}\nrequest_timeout = 2.0\n"
        f"primary_heartbeat_port = {free_port()}\nsecondary_heartbeat_port = {free_port()}\n"
        'auth_token = "s3cret"\n[client]\nhold_down = 0.5\n'
    )
    with zbridge.Client.from_config(path) as c:
        s = c.settings
        assert s["endpoints"][0] == bridge.frontend
        assert s["request_timeout"] == 3.0, "the bridge's request_timeout + 1 s"
        assert s["hold_down"] == 0.5
        assert s["auth_token_set"] and "s3cret" not in repr(s)
        assert c.request("pc2", b"from the file") == [b"from the file"]


def test_bad_settings_name_their_key():
    for kwargs, key in [
        (dict(request_timeout=0), "request_timeout"),
        (dict(endpoints=["localhost:5600"]), "endpoints"),
        (dict(breaker_failure_rate=1.5), "breaker_failure_rate"),
    ]:
        with pytest.raises(zbridge.ConfigError) as e:
            zbridge.Client(**kwargs)
        assert e.value.key == key, e.value
    with pytest.raises(zbridge.ConfigError):
        zbridge.Client.from_config("/nonexistent/zbridge.toml")


def test_every_error_code_that_reaches_a_caller_is_a_bridge_error_with_its_code(lab):
    service, silent = lab.service(), lab.service("--silent")
    flags = lab.config(
        "max_message_bytes = 1000\nmax_frames = 4\nbreaker_failure_threshold = 1\n"
        f'[targets.silent]\nendpoint = "{silent}"\nrequest_timeout = 0.3\n'
        f'[targets.gone]\nendpoint = "{tcp(free_port())}"\nrequest_timeout = 0.3\n'
    )
    bridge = lab.bridge(flags, f"--pc2-addr={service}")
    limited = lab.bridge(f"--pc2-addr={service}", "--rate-limit-per-client=1", "--rate-limit-per-client-burst=1")
    cases = [
        ("invalid_json", lambda c: c.request_json(b"{nope")),
        ("missing_target", lambda c: c.request_json({"text": "hi"})),
        ("unknown_target", lambda c: c.request("nowhere", b"x")),
        ("too_large", lambda c: c.request("pc2", b"x" * 1001)),
        ("bad_frames", lambda c: c.request("pc2", b"1", b"2", b"3", b"4")),
        ("timeout", lambda c: c.request("silent", b"x")),
        ("backend_unavailable", lambda c: c.request("gone", b"x")),
        # One failure opened the target's breaker (threshold 1).
        ("circuit_open", lambda c: c.request("gone", b"x")),
    ]
    with lone_client(bridge) as c:
        for code, call in cases:
            with pytest.raises(zbridge.BridgeError) as e:
                call(c)
            assert (e.value.code, isinstance(e.value, zbridge.Error)) == (code, True), e.value
            assert e.value.message and code in str(e.value)
        # Answers, not failures: the client stayed on its bridge.
        assert c.request("pc2", b"still fine") == [b"still fine"]
    with lone_client(limited) as c:
        codes = []
        for _ in range(3):
            try:
                c.request("pc2", b"x")
                codes.append("ok")
            except zbridge.BridgeError as e:
                codes.append(e.code)
        assert codes[0] == "ok" and "rate_limited" in codes[1:], codes


def test_a_call_past_its_deadline_raises_timeout_and_the_client_goes_on(lab):
    silent = lab.service("--silent")
    flags = lab.config(f'[targets.silent]\nendpoint = "{silent}"\nrequest_timeout = 5\n')
    bridge = lab.bridge(flags, f"--pc2-addr={lab.service()}")
    with lone_client(bridge, request_timeout=6.0) as c:
        start = time.monotonic()
        with pytest.raises(zbridge.Timeout) as e:
            c.request("silent", b"x", timeout=0.2)
        took = time.monotonic() - start
        assert 0.2 <= took < 0.7, took
        assert e.value.attempts is None, "the caller's deadline, not the client's"
        call = c.send("silent", b"y")
        with pytest.raises(zbridge.Timeout):
            call.result(timeout=0.05)
        assert not call.done()
        assert c.request("pc2", b"next") == [b"next"]


def test_eight_threads_share_one_client_each_call_its_own_answer_promptly(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    failures = []
    with lone_client(bridge) as c:

        def work(t: int) -> None:
            for n in range(200):
                payload = f"thread {t} call {n}".encode()
                call = c.send("pc2", payload)
                if call.result(timeout=10) != [payload] or call.attempts != 1 or call.elapsed > 0.5:
                    failures.append((t, n, call.attempts, call.elapsed))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_a_waiting_call_does_not_hold_the_gil(lab):
    silent = lab.service("--silent")
    flags = lab.config(f'[targets.silent]\nendpoint = "{silent}"\nrequest_timeout = 5\n')
    bridge = lab.bridge(flags, f"--pc2-addr={lab.service()}")
    with lone_client(bridge, request_timeout=6.0) as c:
        waiting = threading.Thread(target=lambda: pytest.raises(zbridge.Timeout, c.request, "silent", b"x", timeout=2))
        waiting.start()
        start = time.monotonic()
        for n in range(100):
            assert c.request("pc2", b"%d" % n) == [b"%d" % n]
        took = time.monotonic() - start
        assert waiting.is_alive(), "the other thread still waits"
        assert took < 1.0, f"100 calls took {took:.2f} s beside a waiting call"
        waiting.join()


def test_closing_the_client_ends_waiting_calls_with_closed(lab):
    silent = lab.service("--silent")
    flags = lab.config(f'[targets.silent]\nendpoint = "{silent}"\nrequest_timeout = 5\n')
    bridge = lab.bridge(flags)
    with lone_client(bridge, request_timeout=6.0) as c:
        call = c.send("silent", b"x")
    assert c.closed
    with pytest.raises(zbridge.Closed):
        call.result(timeout=5)
    with pytest.raises(zbridge.Closed):
        c.request("silent", b"after")


def test_the_coordinator_example_runs_against_a_bridge(lab, tmp_path):
    port = free_port()
    lab.bridge(f"--pc2-addr={lab.service()}", port=port)
    config = tmp_path / "zbridge.toml"
    config.write_text(
        f"primary_port = {port}\nsecondary_port = {free_port()}\n"
        f"primary_heartbeat_port = {free_port()}\nsecondary_heartbeat_port = {free_port()}\n"
    )
    example = Path(__file__).resolve().parent.parent / "examples" / "coordinator.py"
    out = subprocess.run(
        [sys.executable, str(example), str(config), "--rounds=5"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"step {n}: {{'echo': {{'target': 'pc2', 'action': 'generate', 'prompt': 'step {n}'}}}}" for n in range(5)
    ]
