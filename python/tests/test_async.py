"""asyncio: many coroutines awaiting calls on one client, without a thread
per call."""
from __future__ import annotations

import asyncio
import os

import pytest
import zbridge


def threads() -> int:
    """Threads of this process, Rust ones included."""
    return len(os.listdir("/proc/self/task"))


def test_1000_concurrent_calls_from_one_loop_each_get_their_own_answer(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")

    async def main():
        with zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[]) as c:
            assert await c.arequest("pc2", b"warm") == [b"warm"]
            before = threads()
            calls = [asyncio.ensure_future(c.arequest("pc2", b"call %d" % n)) for n in range(1000)]
            # Every call is in flight before the first result is read.
            await asyncio.sleep(0)
            during = threads()
            replies = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert replies == [[b"call %d" % n] for n in range(1000)]
            assert during <= before, f"{during - before} threads started for 1000 calls"
            echoed = await c.arequest_json({"target": "pc2", "n": 1})
            assert echoed == {"echo": {"target": "pc2", "n": 1}}

    asyncio.run(main())


def test_async_errors_and_deadlines_raise_the_same_exceptions(lab):
    silent = lab.service("--silent")
    flags = lab.config(f'[targets.silent]\nendpoint = "{silent}"\nrequest_timeout = 5\n')
    bridge = lab.bridge(flags, f"--pc2-addr={lab.service()}")

    async def main():
        c = zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[], request_timeout=6.0)
        with pytest.raises(zbridge.BridgeError) as e:
            await c.arequest("nowhere", b"x")
        assert e.value.code == "unknown_target"
        with pytest.raises(zbridge.BridgeError) as e:
            await c.arequest_json({"no": "target"})
        assert e.value.code == "missing_target"
        with pytest.raises(zbridge.Timeout):
            await c.arequest("silent", b"x", timeout=0.1)
        # A call in flight when the client closes ends with Closed.
        waiting = asyncio.ensure_future(c.arequest("silent", b"y"))
        await asyncio.sleep(0)  # the task sends its call
        c.close()
        with pytest.raises(zbridge.Closed):
            await asyncio.wait_for(waiting, 5)

    asyncio.run(main())


def test_one_client_serves_two_event_loops_one_after_the_other(lab):
    bridge = lab.bridge(f"--pc2-addr={lab.service()}")
    with zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[]) as c:
        for run in range(2):
            assert asyncio.run(c.arequest("pc2", b"run %d" % run)) == [b"run %d" % run]
