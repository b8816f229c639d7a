"""A ROUTER service for the zbridge Python tests.

Binds 127.0.0.1 on a free port and prints `ready PORT`. Answers each
request with its frames unchanged; a request of one JSON object is
answered with one JSON frame, {"echo": the object}. It counts every
request body it receives, so that a test can ask (a request whose one
frame is `__seen__`) which bodies it saw more than once:
{"total": N, "repeated": {hex body: count}}. With --silent it never
answers (a backend that hangs).
"""
import argparse
import json

import zmq

parser = argparse.ArgumentParser()
parser.add_argument("--silent", action="store_true")
args = parser.parse_args()

ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
sock.rcvhwm = sock.sndhwm = 100000
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(f"ready {port}", flush=True)
seen = {}
while True:
    frames = sock.recv_multipart()
    split = frames.index(b"") + 1 if b"" in frames else 0
    envelope, body = frames[:split], frames[split:]
    if body == [b"__seen__"]:
        repeated = {k.hex(): n for k, n in seen.items() if n > 1}
        reply = [json.dumps({"total": sum(seen.values()), "repeated": repeated}).encode()]
    else:
        key = b"\x00".join(body)
        seen[key] = seen.get(key, 0) + 1
        if args.silent:
            continue
        reply = body
        if len(body) == 1 and body[0][:1] == b"{":
            reply = [json.dumps({"echo": json.loads(body[0])}).encode()]
    sock.send_multipart(envelope + reply)
