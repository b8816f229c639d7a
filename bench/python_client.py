"""Calls/s of the zbridge Python package beside a raw pyzmq DEALER.

`zbridge bench python` starts a pair on loopback and runs this script with
its endpoints; it can also be run against any running pair:

    python bench/python_client.py --endpoints tcp://127.0.0.1:5600,tcp://127.0.0.1:5601

Three contenders keep the same number of requests in flight (--in-flight)
to target --target through the same bridge (the first endpoint), each for
--seconds per round, taking turns over --rounds rounds so that a slow
spell of the machine hits all of them alike:

- raw: one pyzmq DEALER, [target, payload] per request, each reply matched
  to its request by its payload (what an agent without the library writes);
- client: one zbridge.Client, Client.send / Call.result from one thread;
- asyncio: one zbridge.Client, --in-flight coroutines awaiting arequest.

Prints a line per round, then one JSON object: the median calls/s of each
and the medians of the per-round ratios to raw.
"""
import argparse
import asyncio
import collections
import json
import statistics
import time

import zmq

import zbridge

parser = argparse.ArgumentParser()
parser.add_argument("--endpoints", required=True, help="bridge frontends, comma-separated, primary first")
parser.add_argument("--heartbeats", default="", help="heartbeat endpoints, comma-separated")
parser.add_argument("--target", default="pc2")
parser.add_argument("--in-flight", type=int, default=64)
parser.add_argument("--seconds", type=float, default=2.0)
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--payload-bytes", type=int, default=100)
args = parser.parse_args()

endpoints = args.endpoints.split(",")
target = args.target
pad = b"x" * args.payload_bytes


def payload(n: int) -> bytes:
    return b"%d:" % n + pad


def raw(seconds: float) -> float:
    """Requests/s of one pyzmq DEALER with in-flight requests outstanding."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoints[0])
    outstanding = set()
    sent = done = 0
    target_frame = target.encode()
    start = time.perf_counter()
    end = start + seconds
    for _ in range(args.in_flight):
        p = payload(sent)
        sock.send_multipart([target_frame, p])
        outstanding.add(p)
        sent += 1
    while outstanding:
        reply = sock.recv_multipart()
        outstanding.remove(reply[-1])
        done += 1
        if time.perf_counter() < end:
            p = payload(sent)
            sock.send_multipart([target_frame, p])
            outstanding.add(p)
            sent += 1
    took = time.perf_counter() - start
    sock.close()
    return done / took


def client_sync(client: zbridge.Client, seconds: float) -> float:
    """Calls/s of Client.send / Call.result from one thread."""
    calls = collections.deque()
    sent = done = 0
    start = time.perf_counter()
    end = start + seconds
    for _ in range(args.in_flight):
        p = payload(sent)
        calls.append((p, client.send(target, p)))
        sent += 1
    while calls:
        p, call = calls.popleft()
        if call.result()[-1] != p:
            raise AssertionError("a call got another call's answer")
        done += 1
        if time.perf_counter() < end:
            p = payload(sent)
            calls.append((p, client.send(target, p)))
            sent += 1
    return done / (time.perf_counter() - start)


def client_async(client: zbridge.Client, seconds: float) -> float:
    """Calls/s of in-flight coroutines awaiting Client.arequest."""

    async def worker(w: int, end: float) -> int:
        n = 0
        while time.perf_counter() < end:
            p = payload(w * 10_000_000 + n)
            if (await client.arequest(target, p))[-1] != p:
                raise AssertionError("a call got another call's answer")
            n += 1
        return n

    async def main() -> float:
        start = time.perf_counter()
        counts = await asyncio.gather(*(worker(w, start + seconds) for w in range(args.in_flight)))
        return sum(counts) / (time.perf_counter() - start)

    return asyncio.run(main())


client = zbridge.Client(
    endpoints=endpoints,
    heartbeat_endpoints=[e for e in args.heartbeats.split(",") if e],
)
# Connected and warm before the first round.
client_sync(client, 0.2)
figures = collections.defaultdict(list)
for round_ in range(1, args.rounds + 1):
    r = raw(args.seconds)
    s = client_sync(client, args.seconds)
    a = client_async(client, args.seconds)
    for name, value in (("raw", r), ("client", s), ("asyncio", a), ("client_ratio", s / r), ("asyncio_ratio", a / r)):
        figures[name].append(value)
    print(
        f"round {round_}: raw pyzmq DEALER {r:.0f} requests/s, zbridge.Client {s:.0f} calls/s ({s / r:.2f}x), "
        f"asyncio {a:.0f} calls/s ({a / r:.2f}x)",
        flush=True,
    )
client.close()
summary = {name: round(statistics.median(values), 3) for name, values in figures.items()}
summary["in_flight"] = args.in_flight
print(
    f"{args.in_flight} in flight, medians of {args.rounds} rounds: zbridge.Client / raw pyzmq DEALER = "
    f"{summary['client_ratio']:.2f}x (goal >= 1.0x), asyncio / raw = {summary['asyncio_ratio']:.2f}x (goal >= 0.8x)"
)
print(json.dumps(summary))
