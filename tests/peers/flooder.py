"""An abusive subscriber: a pyzmq XSUB on a bridge's pub port that sends raw
subscription messages, `\\x01PREFIX` then `\\x00PREFIX`, over and over.

Connects to ENDPOINT and waits until the connection is up (a first
subscribe answered by anything, or --settle-ms), prints `started`, then
sends COUNT messages (subscribe and unsubscribe in turn) at --rate per
second, or stops after --seconds. What arrives meanwhile is read and
thrown away (counted). Prints one JSON line at the end:
{"event": "done", "sent": N, "seconds": S, "received": R}.
"""
import argparse
import json
import time

import zmq

parser = argparse.ArgumentParser()
parser.add_argument("endpoint")
parser.add_argument("prefix")
parser.add_argument("count", type=int)
parser.add_argument("--rate", type=float, default=5000.0)
parser.add_argument("--seconds", type=float, default=20.0)
args = parser.parse_args()

ctx = zmq.Context()
sock = ctx.socket(zmq.XSUB)
sock.linger = 0
sock.rcvhwm = 1000
monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
sock.connect(args.endpoint)
if not monitor.poll(10000, zmq.POLLIN):
    raise SystemExit("not connected")
print(json.dumps({"event": "started"}), flush=True)

prefix = args.prefix.encode()
received = 0
start = time.monotonic()
sent = 0
while sent < args.count and time.monotonic() - start < args.seconds:
    due = start + sent / args.rate
    left = due - time.monotonic()
    if left > 0:
        time.sleep(left)
    sock.send((b"\x01" if sent % 2 == 0 else b"\x00") + prefix)
    sent += 1
    while True:
        try:
            sock.recv_multipart(zmq.NOBLOCK)
            received += 1
        except zmq.Again:
            break
seconds = time.monotonic() - start
print(json.dumps({"event": "done", "sent": sent, "seconds": seconds, "received": received}),
      flush=True)
while True:
    time.sleep(1)
