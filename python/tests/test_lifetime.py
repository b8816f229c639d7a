"""What a client holds (threads, descriptors, connections) is given back
when it is dropped or closed, awaited or not; a client does not survive a
fork, and says so."""
from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from typing import Callable, Dict, Tuple

import zbridge


def usage() -> Dict[str, int]:
    """This process's threads (Rust ones included), open descriptors, and
    established TCP connections."""
    fds = os.listdir("/proc/self/fd")
    sockets = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed since
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    established = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                # st 01: ESTABLISHED; field 9: the socket's inode.
                if fields[3] == "01" and fields[9] in sockets:
                    established += 1
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(fds),
        "tcp": established,
    }


def more(now: Dict[str, int], before: Dict[str, int]) -> Dict[str, int]:
    return {k: now[k] - before[k] for k in now}


async def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition` holds within `timeout` seconds, the loop turning."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


N = 10


def test_awaited_clients_dropped_or_closed_give_back_every_thread_descriptor_and_connection(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")

    def client() -> zbridge.Client:
        return zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[])

    async def main() -> Tuple[Dict[str, int], Dict[str, int]]:
        # Warm-up: what the first use loads for good (modules, the types).
        warm = client()
        assert await warm.arequest("pc2", b"warm") == [b"warm"]
        warm.close()
        del warm
        gc.collect()
        before = usage()

        clients = [client() for _ in range(N)]
        for n, c in enumerate(clients):
            assert await c.arequest("pc2", b"%d" % n) == [b"%d" % n]
        assert await eventually(lambda: usage()["tcp"] - before["tcp"] >= N, 5)
        held = more(usage(), before)
        # Dropped, not closed: all of it goes (the doorbells on the loop's
        # next turns).
        del clients, c
        gc.collect()
        assert await eventually(lambda: usage() == before, 5), more(usage(), before)

        # Closed: all of it at once, before the loop turns again.
        clients = [client() for _ in range(N)]
        for n, c in enumerate(clients):
            assert await c.arequest("pc2", b"%d" % n) == [b"%d" % n]
        for c in clients:
            c.close()
        closed = more(usage(), before)
        assert closed["threads"] == closed["fds"] == 0, closed
        assert await eventually(lambda: usage() == before, 5), more(usage(), before)
        return held, before

    held, before = asyncio.run(main())
    print(f"{N} awaited clients held {held} over {before}")
    # Each held its I/O thread and libzmq's two, a connection to the bridge.
    assert held["threads"] == 3 * N and held["tcp"] >= N, held


def test_a_client_dropped_after_its_event_loop_closed_gives_everything_back(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    c = zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[])
    assert asyncio.run(c.arequest("pc2", b"warm")) == [b"warm"]
    c.close()
    gc.collect()
    before = usage()
    c = zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[])
    assert asyncio.run(c.arequest("pc2", b"once")) == [b"once"]
    del c
    gc.collect()
    # The I/O thread is joined as the client goes; libzmq's connection ends
    # with it (the bridge's side closes after).
    assert usage()["threads"] == before["threads"]
    assert usage()["fds"] == before["fds"], more(usage(), before)


FORK = r"""
import asyncio, os, sys, zbridge

endpoint = sys.argv[1]
c = zbridge.Client(endpoints=[endpoint], heartbeat_endpoints=[], request_timeout=2.0)
assert c.request("pc2", b"parent") == [b"parent"]
sub = c.subscribe("dreams")
pid = os.fork()
if pid == 0:
    refused = 0
    for attempt in (
        lambda: c.request("pc2", b"child"),
        lambda: c.request_json({"target": "pc2"}),
        lambda: c.send("pc2", b"child").result(),
        lambda: asyncio.run(c.arequest("pc2", b"child")),
        lambda: c.events(),
        lambda: c.subscribe("dreams"),
        lambda: sub.recv(0),
    ):
        try:
            attempt()
        except zbridge.OtherProcess as e:
            assert "another process" in str(e) and e.pid == os.getppid(), e
            refused += 1
    fresh = zbridge.Client(endpoints=[endpoint], heartbeat_endpoints=[], request_timeout=2.0)
    assert fresh.request("pc2", b"child") == [b"child"]
    assert asyncio.run(fresh.arequest("pc2", b"child async")) == [b"child async"]
    print(f"child refused {refused}", flush=True)
    # The inherited client and subscription are dropped at exit, the fresh
    # client too: without a panic, and without waiting for the parent's
    # libzmq threads.
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert c.request("pc2", b"parent again") == [b"parent again"]
assert sub.recv(0) is None
sub.close()
c.close()
print("parent done", flush=True)
"""


def test_a_client_refuses_calls_after_a_fork_and_a_new_one_in_the_child_works(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    out = subprocess.run(
        [sys.executable, "-c", FORK, bridge.frontend], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["child refused 7", "parent done"], out
    assert "anic" not in out.stderr, out.stderr


def test_a_client_closed_in_a_forked_child_closes_without_a_panic(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    script = (
        "import os, sys, zbridge\n"
        "c = zbridge.Client(endpoints=[sys.argv[1]], heartbeat_endpoints=[])\n"
        "assert c.request('pc2', b'x') == [b'x']\n"
        "if os.fork() == 0:\n"
        "    c.close()\n"
        "    assert c.closed\n"
        "    sys.exit(0)\n"
        "_, status = os.wait()\n"
        "assert os.waitstatus_to_exitcode(status) == 0\n"
        "assert c.request('pc2', b'y') == [b'y']\n"
    )
    out = subprocess.run([sys.executable, "-c", script, bridge.frontend], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "anic" not in out.stderr, out.stderr
