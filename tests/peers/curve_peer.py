"""pyzmq peers with CURVE, as an agent or a service would set it up
(docs/SECURITY.md): `curve_serverkey` is the content of the bridge's
key.pub, `curve_publickey`/`curve_secretkey` the peer's own pair.

  request  --endpoint E [--server-key-file F] [--key-file K] [--timeout S] TARGET PAYLOAD
           a DEALER sends [TARGET, PAYLOAD]; prints one JSON line:
           {"reply": [frames...]} or {"timeout": true}
  subscribe --endpoint E [--server-key-file F] [--key-file K] [--seconds S]
            [--topic T]
           a SUB to T (default everything); prints `ready`, then one JSON
           line per message {"frames": n, "topic": first frame,
           "last_value": flagged as a last value by its stamp} until S
           seconds pass; each connection that closes (a refused handshake,
           say) is a line {"event": "disconnected"}
  serve    --port P [--host H] [--key-file K] [--tag T]
           a REP service, a CURVE server with K when given; prints `ready PORT`
           and echoes [T] + frames
  flood    --endpoint E --server-key-file F --count N [--seconds S]
           N DEALERs, alternately without CURVE and with a fresh (unknown)
           pair, each sending one request; prints `flooded N` once all are
           connected, then holds them for S seconds
  forge    --port P [--key-file K] --node N --epoch E
           a PUB (a CURVE server with K when given) that publishes unsigned
           heartbeats claiming a running active every 20 ms; prints `ready`

K is a secret key file as `zbridge keygen` writes it (K.pub beside it);
without K a requesting or subscribing peer uses a fresh pair
(zmq.curve_keypair()), and F absent means no CURVE at all.
"""
import argparse
import json
import os
import sys
import time

import zmq


def read(path):
    with open(path) as f:
        return f.readline().strip().encode()


def client_keys(sock, args):
    if not args.server_key_file:
        return
    sock.curve_serverkey = read(args.server_key_file)
    if args.key_file:
        sock.curve_publickey = read(args.key_file + ".pub")
        sock.curve_secretkey = read(args.key_file)
    else:
        public, secret = zmq.curve_keypair()
        sock.curve_publickey = public
        sock.curve_secretkey = secret


def server_keys(sock, args):
    if args.key_file:
        sock.curve_server = True
        sock.curve_secretkey = read(args.key_file)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["request", "subscribe", "serve", "flood", "forge"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--endpoint")
    parser.add_argument("--server-key-file")
    parser.add_argument("--key-file")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tag", default="curve")
    parser.add_argument("--node", default="secondary")
    parser.add_argument("--epoch", type=int, default=99)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--topic", default="")
    args = parser.parse_intermixed_args()
    ctx = zmq.Context()

    if args.mode == "request":
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        client_keys(sock, args)
        sock.connect(args.endpoint)
        target, payload = args.rest
        sock.send_multipart([target.encode(), payload.encode()])
        if sock.poll(int(args.timeout * 1000)):
            print(json.dumps({"reply": [f.decode(errors="replace") for f in sock.recv_multipart()]}), flush=True)
        else:
            print(json.dumps({"timeout": True}), flush=True)
        return

    if args.mode == "subscribe":
        sock = ctx.socket(zmq.SUB)
        sock.linger = 0
        client_keys(sock, args)
        sock.setsockopt(zmq.SUBSCRIBE, args.topic.encode())
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(args.endpoint)
        print("ready", flush=True)
        deadline = time.monotonic() + args.seconds
        # The stamp's last entry on a last value: number 0, length 5, "\0last".
        flag = b"\0" * 8 + b"\0\x05\0last"
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while time.monotonic() < deadline:
            ready = dict(poller.poll(50))
            if monitor in ready:
                monitor.recv_multipart()
                print(json.dumps({"event": "disconnected"}), flush=True)
            if sock in ready:
                frames = sock.recv_multipart()
                print(json.dumps({"frames": len(frames),
                                  "topic": frames[0].decode(errors="replace"),
                                  "last_value": frames[-1].endswith(flag)}), flush=True)
        return

    if args.mode == "serve":
        sock = ctx.socket(zmq.REP)
        sock.linger = 0
        server_keys(sock, args)
        if args.port:
            sock.bind(f"tcp://{args.host}:{args.port}")
            port = args.port
        else:
            port = sock.bind_to_random_port(f"tcp://{args.host}")
        print(f"ready {port}", flush=True)
        while True:
            frames = sock.recv_multipart()
            sock.send_multipart([args.tag.encode()] + frames)

    if args.mode == "flood":
        ctx.max_sockets = args.count + 16
        server = read(args.server_key_file)
        held = []
        for i in range(args.count):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            if i % 2:
                public, secret = zmq.curve_keypair()
                sock.curve_serverkey = server
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(args.endpoint)
            sock.send_multipart([b"pc2", b"flood"], zmq.NOBLOCK)
            held.append(sock)
        print(f"flooded {args.count}", flush=True)
        # Held while the test watches the bridge (it kills this process).
        time.sleep(args.seconds)
        for sock in held:
            sock.close()
        return

    if args.mode == "forge":
        sock = ctx.socket(zmq.PUB)
        sock.linger = 0
        server_keys(sock, args)
        sock.bind(f"tcp://127.0.0.1:{args.port}")
        print("ready", flush=True)
        seq = 0
        boot = "forger%d" % os.getpid()
        while True:
            seq += 1
            beat = {
                "type": "heartbeat", "timestamp": time.time(), "instance": "active",
                "port": 1, "uptime": 100, "load": 0.0, "node": args.node,
                "boot": boot, "seq": seq, "epoch": args.epoch, "state": "running",
            }
            sock.send(json.dumps(beat).encode())
            time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
