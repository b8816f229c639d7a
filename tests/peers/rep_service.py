"""A pyzmq REP service, as the existing Python agents are written.

Binds --host (default 127.0.0.1; port 0: any free port), prints `ready PORT`, then answers
each request with a tag frame followed by the request's frames unchanged.
A request whose first frame is `sleep:SECONDS` is answered after that delay,
so tests can make a slow backend.
"""
import argparse
import sys
import time

import zmq

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--tag", default="py")
parser.add_argument("--host", default="127.0.0.1")
args = parser.parse_args()

ctx = zmq.Context()
sock = ctx.socket(zmq.REP)
sock.linger = 0
if args.port:
    sock.bind(f"tcp://{args.host}:{args.port}")
    port = args.port
else:
    port = sock.bind_to_random_port(f"tcp://{args.host}")
print(f"ready {port}", flush=True)
while True:
    frames = sock.recv_multipart()
    if frames and frames[0].startswith(b"sleep:"):
        time.sleep(float(frames[0][6:]))
    sock.send_multipart([args.tag.encode()] + frames)
