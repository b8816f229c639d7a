"""The Python client with CURVE on (docs/SECURITY.md): keys as keywords
and from the bridges' config file; a key the bridge does not know gets
nothing through."""
from __future__ import annotations

import subprocess

import pytest
import zbridge
import zmq
from conftest import ZBRIDGE


def keygen(path) -> str:
    out = subprocess.run([ZBRIDGE, "keygen", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "clients").mkdir()
    public = keygen(tmp_path / "bridge.key")
    agent = keygen(tmp_path / "agent.key")
    keygen(tmp_path / "stranger.key")
    (tmp_path / "clients" / "agent.pub").write_text(agent + "\n")
    return tmp_path, public


def curve_bridge(lab, keys):
    path, _ = keys
    return lab.bridge(
        f"--pc2-addr={lab.service()}",
        f"--curve-secret-key-file={path / 'bridge.key'}",
        f"--curve-clients={path / 'clients'}",
    )


def test_an_allowed_key_given_as_keywords_is_served(lab, keys):
    bridge = curve_bridge(lab, keys)
    path, public = keys
    with zbridge.Client(
        endpoints=[bridge.frontend],
        heartbeat_endpoints=[],
        request_timeout=2.0,
        curve_server_key=public,
        curve_secret_key_file=str(path / "agent.key"),
    ) as c:
        assert c.request("pc2", b"sealed") == [b"sealed"]
        assert c.request_json({"target": "pc2", "n": 1}) == {"echo": {"target": "pc2", "n": 1}}


def test_from_config_takes_the_bridges_public_key_and_the_clients_pair(lab, keys, tmp_path):
    bridge = curve_bridge(lab, keys)
    path, _ = keys
    config = tmp_path / "zbridge.toml"
    config.write_text(
        f'curve_secret_key_file = "{path / "bridge.key"}"\n'
        "[client]\n"
        f'endpoints = ["{bridge.frontend}"]\n'
        "heartbeat_endpoints = []\n"
        "request_timeout = 2.0\n"
        f'curve_secret_key_file = "{path / "agent.key"}"\n'
    )
    with zbridge.Client.from_config(config) as c:
        assert c.request("pc2", b"from the file") == [b"from the file"]


def test_an_unknown_key_and_a_plain_pyzmq_socket_get_nothing(lab, keys):
    bridge = curve_bridge(lab, keys)
    path, public = keys
    with zbridge.Client(
        endpoints=[bridge.frontend],
        heartbeat_endpoints=[],
        request_timeout=0.5,
        max_reconnect_attempts=1,
        curve_server_key=public,
        curve_secret_key_file=str(path / "stranger.key"),
    ) as c:
        events = c.events()
        with pytest.raises(zbridge.AllBridgesDown) as refused:
            c.request("pc2", b"let me in")
        # It says why, and what to do.
        assert "refused our CURVE key" in str(refused.value), refused.value
        assert "curve_clients" in str(refused.value), refused.value
        downs = []
        while (event := events.get(timeout=0)) is not None:
            if isinstance(event, zbridge.EndpointDown):
                downs.append(event.reason)
        assert "handshake_failed" in downs, downs
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(bridge.frontend)
        sock.send_multipart([b"pc2", b"plain"])
        assert sock.poll(500) == 0
    finally:
        ctx.destroy(linger=0)
