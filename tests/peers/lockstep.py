"""A plain pyzmq agent, as most agents that use a bridge are written: one
REQ socket, one request at a time, by default with no timeout at all.

    lockstep.py ENDPOINT TARGET SECONDS [--payload P] [--timeout-ms T] [--think S]
                [--server-key-file F --key-file K]

Sends multipart requests [TARGET, P, N] (N = 0, 1, ...) in lockstep until
SECONDS have passed, and prints one JSON line per reply:
{"reply": N, "own": true} when the last frame is N, "own": false otherwise
(another request's reply, or an error document). Prints {"done": COUNT}
at the end. Without --timeout-ms it never gives up: a request that the
bridges lose hangs it for ever, and the test that runs it (and kills it)
says so. With it, it is zguide's Lazy Pirate: no reply within T ms, close
the socket, open a new one, send the same request again. --think S: wait S
seconds after each reply before the next request (an agent that works on
what it got). With F and K it is a CURVE client: F is the bridge's key.pub,
K the agent's secret key file as `zbridge keygen` writes it (K.pub beside).
"""
import argparse
import json
import time

import zmq

parser = argparse.ArgumentParser()
parser.add_argument("endpoint")
parser.add_argument("target")
parser.add_argument("seconds", type=float)
parser.add_argument("--payload", default="x")
parser.add_argument("--timeout-ms", type=int, default=None)
parser.add_argument("--think", type=float, default=0.0)
parser.add_argument("--server-key-file")
parser.add_argument("--key-file")
args = parser.parse_args()


def read(path):
    with open(path) as f:
        return f.readline().strip().encode()

ctx = zmq.Context()


def connect():
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    if args.server_key_file:
        sock.curve_serverkey = read(args.server_key_file)
        sock.curve_publickey = read(args.key_file + ".pub")
        sock.curve_secretkey = read(args.key_file)
    sock.connect(args.endpoint)
    return sock


sock = connect()
print(json.dumps({"ready": True}), flush=True)
deadline = time.monotonic() + args.seconds
n = 0
while time.monotonic() < deadline:
    request = [args.target.encode(), args.payload.encode(), str(n).encode()]
    sock.send_multipart(request)
    while args.timeout_ms is not None and not sock.poll(args.timeout_ms):
        sock.close()
        sock = connect()
        sock.send_multipart(request)
    reply = sock.recv_multipart()
    print(json.dumps({"reply": n, "own": reply[-1] == str(n).encode()}), flush=True)
    n += 1
    if args.think:
        time.sleep(args.think)
print(json.dumps({"done": n}), flush=True)
