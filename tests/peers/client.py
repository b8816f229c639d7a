"""A pyzmq client, as the existing Python agents are written.

    client.py req|req-correlate|dealer ENDPOINT REQUESTS_JSON

REQUESTS_JSON is a list of requests, each a list of frames given as hex.
A REQ client sends them one by one (req-correlate: with ZMQ_REQ_CORRELATE
and ZMQ_REQ_RELAXED, so libzmq puts a request id before the delimiter and
drops a reply that does not carry it); a DEALER client (no delimiter frame)
sends them all at once, so they are in flight together. Prints one JSON line:
{"replies": [[hex frame, ...], ...]} in the order the replies arrived.
Gives up after 10 s without a reply (exit 1).
"""
import json
import sys

import zmq

kind, endpoint, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER if kind == "dealer" else zmq.REQ)
if kind == "req-correlate":
    sock.setsockopt(zmq.REQ_CORRELATE, 1)
    sock.setsockopt(zmq.REQ_RELAXED, 1)
sock.linger = 0
sock.rcvtimeo = 10000
sock.connect(endpoint)
replies = []
try:
    if kind != "dealer":
        for frames in requests:
            sock.send_multipart([bytes.fromhex(f) for f in frames])
            replies.append([f.hex() for f in sock.recv_multipart()])
    else:
        for frames in requests:
            sock.send_multipart([bytes.fromhex(f) for f in frames])
        for _ in requests:
            replies.append([f.hex() for f in sock.recv_multipart()])
except zmq.Again:
    print(json.dumps({"replies": replies, "error": "timeout"}), flush=True)
    sys.exit(1)
print(json.dumps({"replies": replies}), flush=True)
