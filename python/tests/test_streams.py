"""Streams from Python: a subscriber that follows a failover."""
from __future__ import annotations

import asyncio
import signal
import time
from typing import Callable, List

import zbridge
from conftest import TIMEOUT, Pair, free_port, status, tcp, wait_until


class Feed:
    """What a subscription delivered, in order."""

    def __init__(self) -> None:
        self.counters: List[int] = []
        self.sources: List[int] = []
        self.gaps: List[zbridge.Gap] = []
        self.moves = 0

    def take(self, d: zbridge.Delivery) -> None:
        if isinstance(d, zbridge.StreamMessage):
            # The publisher's counter is its second frame.
            self.counters.append(int(d.frames[1]))
            self.sources.append(d.source)
        elif isinstance(d, zbridge.Gap):
            self.gaps.append(d)
        else:
            self.moves += 1

    def run(self, sub: zbridge.Subscription, done: Callable[["Feed"], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            assert time.monotonic() < deadline, f"not done within {timeout} s: {len(self.counters)} messages"
            d = sub.recv(timeout=0.1)
            if d is not None:
                self.take(d)

    def assert_each_once_in_order(self) -> None:
        first = self.counters[0]
        expected = list(range(first, first + len(self.counters)))
        if self.counters != expected:
            missing = sorted(set(expected) - set(self.counters))
            raise AssertionError(f"not each once in order: {len(missing)} missing, e.g. {missing[:5]}")


def dream(bridge) -> dict:
    return status(bridge.frontend).get("streams", {}).get("dream", {})


def test_a_subscriber_across_kill_9_of_the_active_misses_nothing(lab):
    upstream = lab.publisher("--topics=a.", "--rate=1000", "--count=60000")
    pub_ports = [free_port(), free_port()]
    pair = Pair(
        lab,
        lab.service(),
        lab.config(f'[streams.dream]\nendpoint = "{upstream}"\n'),
        f"--primary-pub-port={pub_ports[0]}",
        f"--secondary-pub-port={pub_ports[1]}",
    )
    primary = pair.start("active")
    client = zbridge.Client(
        endpoints=pair.endpoints,
        heartbeat_endpoints=[],
        pub_endpoints=[tcp(p) for p in pub_ports],
        heartbeat_timeout=TIMEOUT,
    )
    with client, client.subscribe("dream", "a.") as sub:
        feed = Feed()
        # First on the active alone, so that the kill must move it.
        feed.run(sub, lambda f: f.counters)
        secondary = pair.start("passive")
        assert wait_until(lambda: dream(secondary).get("subscriptions") == 1, 5), dream(secondary)
        survivor = int(dream(secondary)["source"], 16)
        then = len(feed.counters)
        feed.run(sub, lambda f: len(f.counters) >= then + 500)
        primary.signal(signal.SIGKILL)
        killed_at = feed.counters[-1]
        # Two seconds of publishing after the kill.
        feed.run(sub, lambda f: f.counters[-1] >= killed_at + 2000)
    feed.assert_each_once_in_order()
    assert feed.gaps == [], feed.gaps
    assert set(feed.sources[-100:]) == {survivor}, "it resumed on the surviving bridge"
    print(f"kill -9 with a Python subscriber: {len(feed.counters)} delivered in order, none missed, {feed.moves} move(s)")


def test_async_iteration_delivers_the_stream_in_order(lab):
    upstream = lab.publisher("--topics=a.,b.", "--rate=2000", "--count=60000")
    pub_port = free_port()
    bridge = lab.bridge(
        lab.config(f'[streams.dream]\nendpoint = "{upstream}"\n'),
        f"--primary-pub-port={pub_port}",
        f"--secondary-pub-port={free_port()}",
    )
    assert wait_until(lambda: dream(bridge).get("up"), 5)
    client = zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[], pub_endpoints=[tcp(pub_port)])

    async def first(n: int) -> List[zbridge.Delivery]:
        got = []
        with client.subscribe("dream", b"b.") as sub:
            async for d in sub:
                got.append(d)
                if len(got) == n:
                    return got
        raise AssertionError("the subscription ended")

    with client:
        got = asyncio.run(asyncio.wait_for(first(300), 10))
    assert all(isinstance(d, zbridge.StreamMessage) and d.frames[0] == b"b." for d in got), got[:3]
    seqs = [d.seq for d in got]
    assert seqs == list(range(seqs[0], seqs[0] + 300)), "numbered under b. one by one, in order"


def test_a_late_subscriber_starts_with_the_last_values_flagged_then_goes_on_live(lab):
    # The bridge asks for everything ("") for its cache; the publisher
    # starts then, and stays up after its 30 messages.
    upstream = lab.publisher("--topics=state.a,state.b,event.", "--rate=1000", "--count=30", "--wait-subscriber")
    pub_port = free_port()
    bridge = lab.bridge(
        lab.config(f'[streams.dream]\nendpoint = "{upstream}"\nlast_value = true\n'),
        f"--primary-pub-port={pub_port}",
        f"--secondary-pub-port={free_port()}",
    )
    assert wait_until(lambda: dream(bridge).get("last_values", {}).get("topics") == 3, 10), dream(bridge)
    client = zbridge.Client(endpoints=[bridge.frontend], heartbeat_endpoints=[], pub_endpoints=[tcp(pub_port)])
    with client, client.subscribe("dream", "state.") as sub:
        got = [sub.recv(timeout=5), sub.recv(timeout=5)]
        # Nothing more: the publisher has stopped and the rest is event.
        assert sub.recv(timeout=0.2) is None
    # Message i has topic i % 3: the last state.a is 27, state.b 28.
    assert [(d.frames[0], int(d.frames[1]), d.last_value) for d in got] == [
        (b"state.a", 27, True),
        (b"state.b", 28, True),
    ], got
