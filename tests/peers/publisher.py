"""A pyzmq PUB service, like PC2's DreamWorld agent on 5598.

Binds --host:--port (port 0: any free port) and prints `ready PORT`. Then
publishes --count messages at --rate per second, cycling over --topics: message
i is the two frames [topic, str(i)], plus a third of --pad bytes if given. Prints `done` after the last one and stays
up until killed. With --xpub it is an XPUB instead, and prints each
subscription it receives as `sub HEX` or `unsub HEX` (the prefix in hex);
with --wait-subscriber it starts publishing only after the first one
(--wait-subscribers N: after N subscriptions, e.g. both bridges of a pair,
each counted even when to the same prefix).
--distinct makes every message's topic its own: topic then str(i).
--burst N sends the first N messages as fast as it can (then prints `burst`)
and the rest at --rate.
--state N first sends N messages on topics state.0000 to state.N-1 (frames
[topic, str(i)] plus the pad), as fast as it can, and prints `state`; then
the --count messages as above.
"""
import argparse
import time

import zmq

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--topics", default="a.,b.,c.")
parser.add_argument("--rate", type=float, default=1000.0)
parser.add_argument("--count", type=int, default=100000)
parser.add_argument("--pad", type=int, default=0)
parser.add_argument("--xpub", action="store_true")
parser.add_argument("--wait-subscriber", action="store_true")
parser.add_argument("--wait-subscribers", type=int, default=0)
parser.add_argument("--distinct", action="store_true")
parser.add_argument("--burst", type=int, default=0)
parser.add_argument("--state", type=int, default=0)
args = parser.parse_args()

ctx = zmq.Context()
if args.wait_subscriber:
    args.wait_subscribers = max(args.wait_subscribers, 1)
args.xpub = args.xpub or args.wait_subscribers > 0
sock = ctx.socket(zmq.XPUB if args.xpub else zmq.PUB)
sock.linger = 0
sock.sndhwm = 100000
if args.wait_subscribers > 1:
    # Count each subscriber's subscription, not only a prefix's first.
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
if args.port:
    sock.bind(f"tcp://{args.host}:{args.port}")
    port = args.port
else:
    port = sock.bind_to_random_port(f"tcp://{args.host}")
print(f"ready {port}", flush=True)
topics = [t.encode() for t in args.topics.split(",")]
pad = [b"x" * args.pad] if args.pad else []


def read_subscriptions(timeout_ms):
    """Print what arrived within timeout_ms; how many subscriptions did."""
    if not args.xpub:
        time.sleep(timeout_ms / 1000)
        return 0
    subscribed = 0
    if sock.poll(timeout_ms, zmq.POLLIN):
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return subscribed
            kind = "sub" if msg[:1] == b"\x01" else "unsub"
            subscribed += kind == "sub"
            print(f"{kind} {msg[1:].hex()}", flush=True)
    return subscribed


def topic(i):
    t = topics[i % len(topics)]
    return t + str(i).encode() if args.distinct else t


waited = 0
while waited < args.wait_subscribers:
    waited += read_subscriptions(1000)
for i in range(args.state):
    sock.send_multipart([b"state.%04d" % i, str(i).encode()] + pad)
if args.state:
    print("state", flush=True)
for i in range(args.burst):
    sock.send_multipart([topic(i), str(i).encode()] + pad)
if args.burst:
    print("burst", flush=True)
start = time.monotonic()
for i in range(args.burst, args.count):
    due = start + (i - args.burst) / args.rate
    while True:
        left = due - time.monotonic()
        if left <= 0:
            break
        read_subscriptions(left * 1000)
    sock.send_multipart([topic(i), str(i).encode()] + pad)
print("done", flush=True)
while True:
    read_subscriptions(1000)
