"""A ZmqNotifyBridge on a real NotificationHub, in its own process, for the cross-process tests.

    python tests/support/_bridge_proc.py --dsn DSN --channel a [--channel b ...] [--bind EP]
        [--sndhwm N] [--heartbeat S] [--curve-secret K --curve-public K] [--allow K ...]
        [--replay-size N] [--replay-bind EP] [--replay-rate N]

Prints one JSON line ``{"endpoint": ..., "source": ..., "replay": ...}`` once the bridge is
listening, then runs until its stdin is closed (clean stop, exit 0).  A bad
option or address exits 2 with the error on stderr.  Tests SIGKILL it to
simulate a crash.
"""

from __future__ import annotations

import argparse
import json
import sys

from gevent.socket import wait_read

from gdbpool import GDBPoolError, ZmqNotifyBridge, configure_logging

try:  # where the hub is exported once the listener work lands
    from gdbpool import NotificationHub  # type: ignore[attr-defined]
except ImportError:
    from gdbpool import NotificationHub


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--channel", action="append", required=True)
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--sndhwm", type=int, default=10_000)
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--curve-secret")
    parser.add_argument("--curve-public")
    parser.add_argument("--allow", action="append")
    parser.add_argument("--replay-size", type=int, default=10_000)
    parser.add_argument("--replay-bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--replay-rate", type=int, default=50_000)
    args = parser.parse_args()
    configure_logging(stream=sys.stderr, level="WARNING")  # stdout carries the ready line
    hub = NotificationHub(args.dsn)
    try:
        bridge = ZmqNotifyBridge(
            hub,
            args.channel,
            bind=args.bind,
            sndhwm=args.sndhwm,
            queue_size=args.queue_size,
            heartbeat_interval=args.heartbeat,
            curve_secret_key=args.curve_secret,
            curve_public_key=args.curve_public,
            allowed_client_keys=args.allow,
            replay_size=args.replay_size,
            replay_bind=args.replay_bind,
            replay_rate=args.replay_rate,
        )
    except GDBPoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        hub.close()
        return 2
    ready = {
        "endpoint": bridge.endpoint,
        "source": bridge.source_id,
        "replay": bridge.replay_endpoint,
    }
    print(json.dumps(ready), flush=True)
    fd = sys.stdin.fileno()
    while True:  # until the parent closes our stdin
        wait_read(fd)
        if not sys.stdin.buffer.read1(4096):
            break
    bridge.close()
    hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
