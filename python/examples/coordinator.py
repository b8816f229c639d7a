"""A coordinator agent on the Main PC: it sends JSON tasks to PC2's service
through a zbridge pair and keeps going while bridges die and come back.

    python coordinator.py /etc/zbridge/zbridge.toml [--rounds N]
"""
import argparse
import logging
import threading
import time

import zbridge

log = logging.getLogger("coordinator")

# Codes that say the request itself is wrong: retrying cannot help.
REFUSED = {"invalid_json", "missing_target", "unknown_target", "too_large", "bad_frames"}


def watch(client: zbridge.Client) -> None:
    """Log failovers, switch-backs and breaker changes as they happen."""
    for event in client.events():  # ends when the client is closed
        if isinstance(event, (zbridge.FailedOver, zbridge.SwitchedBack)):
            log.warning("%s: %s -> %s", type(event).__name__, event.from_endpoint, event.to_endpoint)
        elif isinstance(event, zbridge.BreakerChanged):
            log.warning("breaker of %s is %s", event.endpoint or "all bridges", event.state)


def coordinate(client: zbridge.Client, rounds: int) -> None:
    for step in range(rounds):
        task = {"target": "pc2", "action": "generate", "prompt": f"step {step}"}
        try:
            reply = client.request_json(task, timeout=30)
        except zbridge.BridgeError as e:
            if e.code in REFUSED:
                raise  # a bug in this agent: fix the request
            # timeout, backend_unavailable, circuit_open, rate_limited:
            # PC2's service is slow, down or busy; the bridges are fine.
            log.warning("pc2 did not answer step %d (%s): %s", step, e.code, e.message)
            time.sleep(1.0)
            continue
        except zbridge.CircuitOpen as e:
            # The bridges have been failing: the client fails fast for a while.
            log.warning("bridges unavailable; waiting %.1f s", e.retry_after)
            time.sleep(e.retry_after)
            continue
        except zbridge.Timeout as e:  # AllBridgesDown is a Timeout too
            log.warning("no bridge answered step %d: %s", step, e)
            continue
        except zbridge.Closed:
            return
        print(f"step {step}: {reply}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", help="the bridges' config file")
    parser.add_argument("--rounds", type=int, default=1_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with zbridge.Client.from_config(args.config) as client:
        threading.Thread(target=watch, args=(client,), daemon=True).start()
        coordinate(client, args.rounds)


if __name__ == "__main__":
    main()
