"""A pyzmq SUB client on a bridge's pub port, as an existing agent would be.

Connects to ENDPOINT, subscribes to TOPIC, and receives COUNT messages (or
stops after --seconds). Prints one JSON document: each message's frames
(UTF-8) without the bridge's stamp, the stamp decoded (docs/PROTOCOL.md),
and when it came (`at_ms`, since the connect). With --each it also prints
each message as it comes, as `message {...}`.
"""
import argparse
import json
import time

import zmq


def parse_stamp(b):
    """The bridge's stamp, the last frame: version 1, u64 source, u32
    session, u8 name length, name, then per matching prefix: u64 seq, u16
    length, prefix. The prefix "\\0last" numbered 0 is no prefix: it flags
    a last value from the bridge's cache."""
    assert b[0] == 1, "not a zbridge stamp"
    source = int.from_bytes(b[1:9], "big")
    session = int.from_bytes(b[9:13], "big")
    n = b[13]
    stream = b[14:14 + n].decode()
    i, seqs, last_value = 14 + n, {}, False
    while i < len(b):
        seq = int.from_bytes(b[i:i + 8], "big")
        m = int.from_bytes(b[i + 8:i + 10], "big")
        prefix = b[i + 10:i + 10 + m]
        if seq == 0 and prefix == b"\0last":
            last_value = True
        else:
            seqs[prefix.decode()] = seq
        i += 10 + m
    return {"source": source, "session": session, "stream": stream, "seqs": seqs,
            "last_value": last_value}


parser = argparse.ArgumentParser()
parser.add_argument("endpoint")
parser.add_argument("topic")
parser.add_argument("count", type=int)
parser.add_argument("--seconds", type=float, default=20.0)
parser.add_argument("--each", action="store_true")
args = parser.parse_args()

ctx = zmq.Context()
sock = ctx.socket(zmq.SUB)
sock.linger = 0
sock.subscribe(args.topic.encode())
connected = time.monotonic()
sock.connect(args.endpoint)
print(json.dumps({"event": "subscribed"}), flush=True)
messages = []
deadline = time.monotonic() + args.seconds
while len(messages) < args.count:
    left = deadline - time.monotonic()
    if left <= 0 or not sock.poll(int(left * 1000), zmq.POLLIN):
        break
    frames = sock.recv_multipart()
    messages.append({
        "frames": [f.decode(errors="replace") for f in frames[:-1]],
        "stamp": parse_stamp(frames[-1]),
        "at_ms": (time.monotonic() - connected) * 1000,
    })
    if args.each:
        print("message " + json.dumps(messages[-1]), flush=True)
print(json.dumps({"messages": messages}), flush=True)
