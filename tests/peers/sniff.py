"""A capture on one interface with a raw socket (AF_PACKET), as tcpdump
would take it: prints `ready`, records every frame until SIGTERM, then
prints one JSON line {"frames": n, "bytes": n, "found": bool}: whether
--needle appeared in any frame. Run inside a network namespace as root.
"""
import argparse
import json
import select
import signal
import socket

parser = argparse.ArgumentParser()
parser.add_argument("--iface", default="eth0")
parser.add_argument("--needle", required=True)
args = parser.parse_args()

ETH_P_ALL = 0x0003
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
sock.bind((args.iface, 0))
needle = args.needle.encode()
stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
frames = total = 0
found = False
while True:
    try:
        ready, _, _ = select.select([sock], [], [], 0.05)
    except InterruptedError:
        ready = []
    if ready:
        frame = sock.recv(65535)
        frames += 1
        total += len(frame)
        found = found or needle in frame
    elif stopping:
        break
print(json.dumps({"frames": frames, "bytes": total, "found": found}), flush=True)
