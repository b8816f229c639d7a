"""Harness of the Python tests: real `zbridge run` processes and services on
127.0.0.1, ports picked free, every process killed (by pid) when its test
ends, pass or fail. Waiting is for an event with a deadline.

The bridge binary is $ZBRIDGE_BIN (scripts/test sets it), by default
../target/release/zbridge from this package's directory.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import zmq

HERE = Path(__file__).resolve().parent
ZBRIDGE = os.environ.get("ZBRIDGE_BIN") or str(HERE.parent.parent / "target" / "release" / "zbridge")
PUBLISHER = HERE.parent.parent / "tests" / "peers" / "publisher.py"

# Heartbeats of the test pairs: every 100 ms, silence after 300 ms.
INTERVAL = 0.1
TIMEOUT = 0.3

_given: set = set()


def free_port() -> int:
    """A port nobody listens on now, not handed out before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Whether `condition` holds within `timeout` seconds (checked every 5 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


class Process:
    """A child whose stdout lines are kept (read by a thread) and whose
    stderr goes to a log file."""

    def __init__(self, argv: List[str], ready: Callable[[str], bool], timeout: float = 10.0):
        self.log = tempfile.NamedTemporaryFile(prefix="zbridge-test-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines: List[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for_line(ready, timeout)
        if line is None:
            self.kill()
            raise RuntimeError(f"{argv[:3]} not ready within {timeout} s:\n{self.log_text()}")
        self.ready_line = line

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pred: Callable[[str], bool], timeout: float, start: int = 0) -> Optional[str]:
        """The first line from `start` on that `pred` accepts, within `timeout`."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if pred(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and seen == len(self.lines):
                    return None
                self._changed.wait(min(left, 0.1))

    def wait_for_event(self, pred: Callable[[dict], bool], timeout: float) -> Optional[dict]:
        """The first JSON event line that `pred` accepts, within `timeout`."""

        def matches(line: str) -> bool:
            try:
                return pred(json.loads(line))
            except ValueError:
                return False

        line = self.wait_for_line(matches, timeout)
        return None if line is None else json.loads(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]


class Bridge(Process):
    """A `zbridge run` process, ready: its frontend is bound."""

    def __init__(self, flags: List[str]):
        super().__init__([ZBRIDGE, "run", *flags], _is_ready)
        self.ready = json.loads(self.ready_line)
        self.frontend: str = self.ready["frontend"]


def _is_ready(line: str) -> bool:
    try:
        return json.loads(line).get("event") == "ready"
    except ValueError:
        return False


def ask(endpoint: str, frames: List[bytes], timeout: float = 2.0) -> Optional[List[bytes]]:
    """One request on a fresh DEALER; the reply, or None after `timeout`."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000)):
            return None
        return sock.recv_multipart()
    finally:
        sock.close()


def status(endpoint: str) -> dict:
    reply = ask(endpoint, [b'{"action":"status"}'])
    return json.loads(reply[-1]) if reply else {}


class Lab:
    """What one test starts; everything is killed when the test ends."""

    def __init__(self) -> None:
        self.processes: List[Process] = []
        self.files: List[str] = []

    def keep(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def service(self, *flags: str) -> str:
        """A tests/service.py service; its endpoint."""
        p = self.keep(Process([sys.executable, str(HERE / "service.py"), *flags], _port_line))
        return tcp(int(p.ready_line.split()[1]))

    def publisher(self, *flags: str) -> str:
        """The repository's pyzmq publisher (tests/peers/publisher.py)."""
        p = self.keep(Process([sys.executable, str(PUBLISHER), *flags], _port_line))
        return tcp(int(p.ready_line.split()[1]))

    def config(self, text: str) -> str:
        """A config file for this test; its --config flag."""
        f = tempfile.NamedTemporaryFile("w", prefix="zbridge-test-", suffix=".toml", delete=False)
        f.write(text)
        f.close()
        self.files.append(f.name)
        return f"--config={f.name}"

    def bridge(self, *flags: str, port: int = 0) -> Bridge:
        """A lone bridge, active at once on `port` (0: any), that hears no
        peer; no targets unless a flag names them."""
        return self.keep(
            Bridge(
                [
                    "--mode=active",
                    f"--primary-port={port}",
                    "--primary-heartbeat-port=0",
                    "--primary-monitor-port=0",
                    f"--secondary-heartbeat-port={free_port()}",
                    "--heartbeat-interval=0.05",
                    "--heartbeat-timeout=0.2",
                    "--main-pc-addr=",
                    "--pc2-addr=",
                    *flags,
                ]
            )
        )

    def close(self) -> None:
        for p in self.processes:
            try:
                p.kill()
            finally:
                os.unlink(p.log.name)
        for name in self.files:
            os.unlink(name)


def _port_line(line: str) -> bool:
    return line.startswith("ready ")


class Pair:
    """Two bridges on one host on free ports, target `pc2` = `service`;
    started one by one with `start`."""

    def __init__(self, lab: Lab, service: str, *extra: str):
        self.lab = lab
        self.service = service
        self.ports = [free_port() for _ in range(4)]
        self.flags = [
            f"--primary-port={self.ports[0]}",
            f"--secondary-port={self.ports[1]}",
            f"--primary-heartbeat-port={self.ports[2]}",
            f"--secondary-heartbeat-port={self.ports[3]}",
            f"--primary-monitor-port={free_port()}",
            f"--secondary-monitor-port={free_port()}",
            f"--heartbeat-interval={INTERVAL}",
            f"--heartbeat-timeout={TIMEOUT}",
            "--main-pc-addr=",
            f"--pc2-addr={service}",
            *extra,
        ]

    @property
    def endpoints(self) -> List[str]:
        return [tcp(p) for p in self.ports[:2]]

    @property
    def heartbeat_endpoints(self) -> List[str]:
        return [tcp(p) for p in self.ports[2:]]

    def start(self, mode: str) -> Bridge:
        return self.lab.keep(Bridge([f"--mode={mode}", *self.flags]))

    def start_both(self):
        """The primary (active), then the secondary (passive), each hearing
        the other."""
        primary = self.start("active")
        assert primary.ready["role"] == "active"
        secondary = self.start("passive")
        assert secondary.ready["role"] == "passive"
        for endpoint in self.endpoints:
            assert wait_until(lambda: status(endpoint).get("peer", {}).get("alive"), 5), endpoint
        return primary, secondary

    def client_settings(self) -> dict:
        """Client keywords for this pair: an attempt gets 1 s, heartbeat
        silence counts after the pair's 300 ms, failed bridges are probed
        every 100 ms and used again after 800 ms of answers."""
        return dict(
            endpoints=self.endpoints,
            heartbeat_endpoints=self.heartbeat_endpoints,
            request_timeout=1.0,
            heartbeat_timeout=TIMEOUT,
            reconnect_delay=0.1,
            hold_down=0.8,
        )


@pytest.fixture
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def pair(lab):
    """A pair relaying `pc2` to a counting echo service (not started)."""
    return Pair(lab, lab.service())
